"""Per-feature definition checksums: what a model card pins, so that editing one feature's SQL invalidates
the models that use that feature, and adding a feature invalidates none.

A feature's checksum covers its declaration (name, data_type) and the SQL that computes it: its expression
in the model's final select, every CTE that expression reaches (transitively), the base of the final select
(which decides the rows), and the macros any of that SQL calls. It is found with sqlglot on the model's
Jinja-stripped source. A model this cannot analyse falls back to the whole model's checksum for every
feature: conservative (any edit then invalidates every model), never silently stale.
"""

import hashlib
import json
import re
from collections.abc import Mapping

import sqlglot
from sqlglot import exp

__all__ = ["feature_checksums"]

_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_CONFIG = re.compile(r"\{\{\s*config\(.*?\)\s*\}\}\s*\n", re.S)
_REF = re.compile(r"\{\{\s*ref\(\s*'(\w+)'\s*\)\s*\}\}")
_SOURCE = re.compile(r"\{\{\s*source\(\s*'(\w+)'\s*,\s*'(\w+)'\s*\)\s*\}\}")
_QUERY_MACRO = re.compile(r"\(\s*\{\{\s*(\w+)\(\s*\)\s*\}\}\s*\)")
_EXPRESSION_MACRO = re.compile(r"\{\{\s*(\w+)\((.*?)\)\s*\}\}", re.S)
_MACRO_PREFIX = "macro__"


def _strip_jinja(raw_code: str) -> str:
    """Refs and sources become table names; macros become tables or functions named macro__<name>."""
    sql = _CONFIG.sub("", _COMMENT.sub("", raw_code), count=1)
    sql = _REF.sub(r"\1", sql)
    sql = _SOURCE.sub(r"\1__\2", sql)
    sql = _QUERY_MACRO.sub(rf"(select * from {_MACRO_PREFIX}\1)", sql)
    sql = _EXPRESSION_MACRO.sub(lambda m: f"{_MACRO_PREFIX}{m.group(1)}({m.group(2).replace(chr(39), '')})", sql)
    if "{{" in sql or "{%" in sql:
        raise ValueError("Jinja left after stripping")
    return sql


def _names_used(node: exp.Expression) -> set[str]:
    """Table/CTE names and macro names an expression refers to."""
    names = {table.name for table in node.find_all(exp.Table)}
    names |= {column.table for column in node.find_all(exp.Column) if column.table}
    names |= {call.name.lower() for call in node.find_all(exp.Anonymous)}
    return names


def _analysed(raw_code: str, feature_names: list[str]) -> dict[str, list[str]]:
    """For each feature, the SQL fragments its values depend on (raises when the model has another shape)."""
    tree = sqlglot.parse_one(_strip_jinja(raw_code), read="duckdb")
    ctes = {cte.alias: cte.this for cte in tree.find_all(exp.CTE)}
    final = tree
    while isinstance(final, exp.Select) and final.args.get("from_") is not None:
        source = final.args["from_"].this
        if not (isinstance(source, exp.Table) and source.name in ctes and final.is_star):
            break
        final = ctes[source.name]  # `select * from final` style: the real final select is that CTE
    if not isinstance(final, exp.Select) or final.args.get("from_") is None:
        raise ValueError("no final select")
    expressions = {projection.alias_or_name: projection for projection in final.expressions}
    base = final.args["from_"]

    def closure(start: set[str]) -> list[str]:
        seen, todo = set(), list(start)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in ctes:
                todo.extend(_names_used(ctes[name]))
        return sorted(seen)

    fragments = {}
    for name in feature_names:
        if name not in expressions:
            raise ValueError(f"{name} is not a column of the final select")
        used = _names_used(expressions[name]) | _names_used(base)
        parts = [expressions[name].sql(), base.sql()]
        # The join that brings a referenced CTE into the final select decides which of its rows match.
        for join in final.args.get("joins") or []:
            if join.this.alias_or_name in used:
                parts.append(join.sql())
                used |= _names_used(join)
        for dependency in closure(used):
            parts.append(f"{dependency}: {ctes[dependency].sql()}" if dependency in ctes else dependency)
        fragments[name] = parts
    return fragments


def feature_checksums(manifest: Mapping, node: Mapping, feature_types: Mapping[str, str]) -> dict[str, str]:
    """sha256 per feature of a dbt model node; feature_types maps each feature name to its data_type.

    Upstream models and macros enter by their own checksum or source, so editing a staging model or a
    macro changes the checksums of exactly the features that read it.
    """
    names = list(feature_types)
    try:
        fragments = _analysed(node["raw_code"], names)
    except (sqlglot.errors.SqlglotError, ValueError, KeyError):
        fragments = {name: [node["checksum"]["checksum"]] for name in names}
    references = {
        other["name"]: other["checksum"]["checksum"] for other in manifest["nodes"].values() if "checksum" in other
    }
    references |= {
        f"{_MACRO_PREFIX}{macro['name']}": macro["macro_sql"]
        for macro in manifest["macros"].values()
        if macro.get("package_name") == node.get("package_name")
    }
    checksums = {}
    for name in names:
        parts = [references.get(part.lower(), part) for part in fragments[name]]
        payload = json.dumps([name, feature_types[name], parts])
        checksums[name] = hashlib.sha256(payload.encode()).hexdigest()
    return checksums

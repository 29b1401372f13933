"""Online values of features for a caller's entities, typed by the registry: one round trip per view, as predict
reads them. Imports no Dagster, no dbt, no warehouse."""

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.feature_refs import snapshot_time_column
from feature_assets.registry import FeatureView, Registry, ViewRead
from feature_assets.serving.codec import parse_entity_id
from feature_assets.serving.reads import MISSING, FeatureReader

__all__ = ["MISSING_COLUMN", "online_features"]

# The result's column saying why a row's features are null (null when every view was found).
MISSING_COLUMN = "missing"


def online_features(
    reader_of: Callable[[str], FeatureReader],
    registry: Registry,
    reads: Sequence[ViewRead],
    entities: Mapping[str, Sequence[Any]],
    names: Sequence[Sequence[str]],
) -> pd.DataFrame:
    """The entities' columns (each view's key among them, as given) with the features of `reads`, named by `names`
    (feature_refs.output_names). One frame is built, at the end: for one entity, frames cost more than the read."""
    rows = len(next(iter(entities.values()))) if entities else 0
    keys: dict[str, list[Any]] = {}
    for read in reads:
        view = registry.view(read.derived_from[0]) if read.derived_from else read.view
        if view.entity_key not in keys:
            keys[view.entity_key] = _parsed_ids(entities[view.entity_key], view)
    # Per view read, the fields one read asks for: the requested features, and those other views' keys come from.
    fields: dict[str, list[str]] = {read.view.name: [f.name for f in read.features] for read in reads}
    derivations = {read.view.name: read.derived_from for read in reads if read.derived_from is not None}
    for source_view, source_feature in derivations.values():
        wanted = fields.setdefault(source_view, [])
        if source_feature not in wanted:
            wanted.append(source_feature)
    reasons: list[list[str]] | None = None
    read_columns: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = dict(entities)
    for view_name in [name for name in fields if name not in derivations] + list(derivations):
        view = registry.view(view_name)
        if view_name in derivations:
            source, feature = derivations[view_name]
            ids = [None if _null(value) else value for value in read_columns[source][feature]]
            result.setdefault(view.entity_key, ids)
            unknown = f"{view.entity_key} is derived from {source}.{feature}, which is null"
        else:
            ids = keys[view.entity_key]
            unknown = f"no {view.entity_key}"
        # A null key is read as the empty id, which no entity has: the row comes back missing.
        columns = reader_of(view_name).online_columns(["" if i is None else i for i in ids], fields[view_name])
        read_columns[view_name] = columns
        missing = np.flatnonzero(columns[MISSING])
        if len(missing):
            reasons = reasons or [[] for _ in range(rows)]
            for row in missing:
                reasons[row].append(f"{view.name}: {unknown}" if ids[row] is None else _expired(view, ids[row]))
    for read, output in zip(reads, names):
        columns = read_columns[read.view.name]
        result[snapshot_time_column(read)] = columns[read.view.timestamp]
        for declared, column in zip(read.features, output):
            result[column] = columns[declared.name]
    why = np.full(rows, pd.NA, dtype=object)
    if reasons is not None:
        why[:] = ["; ".join(row) if row else pd.NA for row in reasons]
    result[MISSING_COLUMN] = pd.arrays.StringArray(why)
    return pd.DataFrame(result, copy=False)


def _parsed_ids(values: Sequence[Any], view: FeatureView) -> list[Any]:
    """The ids as the view's key takes them (strict: parse_entity_id), None for a null. Plain ints, the common
    case, are checked by their extremes: an int key's only other rule is its range."""
    ids = list(values)
    if ids and view.key_data_type not in ("varchar", "text") and all(type(value) is int for value in ids):
        parse_entity_id(min(ids), view.key_data_type, view.entity_key)
        parse_entity_id(max(ids), view.key_data_type, view.entity_key)
        return ids
    return [None if _null(value) else parse_entity_id(value, view.key_data_type, view.entity_key) for value in ids]


def _null(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _expired(view: FeatureView, entity_id: Any) -> str:
    ttl = view.online_ttl / timedelta(hours=1)
    return (
        f"{view.name}: {view.entity_key} {entity_id} has no snapshot within its {ttl:g} h TTL "
        "(never synced, or expired)"
    )

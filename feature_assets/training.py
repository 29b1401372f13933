"""Point-in-time training sets, computed in the warehouse (never by loading the history into pandas).

Point-in-time rule, per view: a label at time t gets the view's snapshot with the greatest timestamp < t (the
snapshot stamped t is not available yet at t) that is not older than that view's online TTL (timestamp >= t - TTL,
the staleness rule that expires online keys). With none, that view's features are null and its snapshot column
is null. The label table carries each view's entity key. One output row per label row, duplicates included,
numbered by label_row in a deterministic order.
"""

from typing import Any

from feature_assets.registry import LABEL_ROW, FeatureSet, snapshot_column
from feature_assets.resources.warehouse import Warehouse
from feature_assets.settings import validate_identifier

__all__ = ["point_in_time_sql", "build_table", "LABEL_ROW"]


def point_in_time_sql(kind: str, feature_set: FeatureSet) -> tuple[str, list[Any]]:
    """The training set of a feature set over its label table.

    DuckDB: one ASOF join per view. PostgreSQL: per view, labels and snapshots merged on one timeline per entity,
    a running max carries the latest snapshot time forward (a label sorts before a snapshot at the same time, so a
    snapshot stamped t is not seen at t), then one equi-join fetches that snapshot's features.
    """
    labels = feature_set.labels
    keys = [validate_identifier(key, "entity key") for key in labels.entity_keys]
    time, target = validate_identifier(labels.label_time, "label time"), validate_identifier(labels.target, "target")
    for name in feature_set.feature_names:
        validate_identifier(name, "feature")
    label_columns = [*keys, time, target]
    ordered = f"""
        labels as (
            select {', '.join(label_columns)},
                row_number() over (order by {time}, {', '.join(keys)}, {target}) as {LABEL_ROW}
            from {validate_identifier(labels.name, 'label table')}
        )"""
    if kind == "duckdb":
        return _duckdb(feature_set, ordered, label_columns)
    return _postgres(feature_set, ordered, label_columns)


def _duckdb(feature_set: FeatureSet, ordered: str, label_columns: list[str]) -> tuple[str, list[Any]]:
    time = feature_set.labels.label_time
    steps, params, previous, selected = [ordered], [], "labels", [LABEL_ROW, *label_columns]
    for position, read in enumerate(feature_set.reads):
        view, step = read.view, f"matched_{position}"
        candidate = f"candidate_{position}"
        features = ", ".join(f"snapshot.{f.name}" for f in read.features)
        steps.append(f"""
        {step} as (
            select {previous}.*, snapshot.{view.timestamp} as {candidate}, {features}
            from {previous}
            asof left join {view.name} as snapshot
                on {previous}.{read.key} = snapshot.{view.entity_key} and {previous}.{time} > snapshot.{view.timestamp}
        )""")
        fresh = f"{candidate} >= {time} - ?"
        selected.append(f"case when {fresh} then {candidate} end as {snapshot_column(view)}")
        selected += [f"case when {fresh} then {f.name} end as {f.name}" for f in read.features]
        params += [view.online_ttl] * (1 + len(read.features))
        previous = step
    sql = f"with {','.join(steps)}\n select {', '.join(selected)} from {previous}"
    return sql, params


def _postgres(feature_set: FeatureSet, ordered: str, label_columns: list[str]) -> tuple[str, list[Any]]:
    time = feature_set.labels.label_time
    steps, params, joins, selected = [ordered], [], [], [f"matched_0.{c}" for c in (LABEL_ROW, *label_columns)]
    # The first view's timeline carries the label columns, so its matched rows are the base of the result.
    carried_labels = ", ".join(c for c in label_columns if c != time)
    for position, read in enumerate(feature_set.reads):
        view, timeline, carried, matched = read.view, f"timeline_{position}", f"carried_{position}", f"matched_{position}"
        extra = f", {carried_labels}" if position == 0 else ""
        nulls = ", null" * (len(label_columns) - 1) if position == 0 else ""
        steps.append(f"""
        {timeline} as (
            select {read.key} as entity, {time} as at, 0 as is_snapshot, {LABEL_ROW}{extra} from labels
            union all
            select {view.entity_key}, {view.timestamp}, 1, null{nulls} from {view.name}
        ),
        {carried} as (
            select *,
                max(case when is_snapshot = 1 then at end) over (
                    partition by entity order by at, is_snapshot rows between unbounded preceding and current row
                ) as candidate_at
            from {timeline}
        ),
        {matched} as (
            select {LABEL_ROW}, at as {time}{extra}, case when candidate_at >= at - ? then candidate_at end as snapshot_at
            from {carried}
            where is_snapshot = 0
        )""")
        params.append(view.online_ttl)
        alias = f"snapshot_{position}"
        if position:
            joins.append(f"left join {matched} on {matched}.{LABEL_ROW} = matched_0.{LABEL_ROW}")
        joins.append(
            f"left join {view.name} as {alias} on {alias}.{view.entity_key} = matched_0.{read.key} "
            f"and {alias}.{view.timestamp} = {matched}.snapshot_at"
        )
        selected.append(f"{matched}.snapshot_at as {snapshot_column(view)}")
        selected += [f"{alias}.{f.name}" for f in read.features]
    sql = f"with {','.join(steps)}\n select {', '.join(selected)} from matched_0\n" + "\n".join(joins)
    return sql, params


def build_table(warehouse: Warehouse, con: Any, table: str, sql: str, params: list[Any]) -> int:
    """Replaces `table` with the query's rows in one transaction; returns the row count."""
    validate_identifier(table, "table")
    warehouse.execute(con, f"drop table if exists {table}")
    warehouse.execute(con, f"create table {table} as {sql}", params)
    return int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])

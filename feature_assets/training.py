"""Point-in-time training sets, computed in the warehouse (never by loading the history into pandas).

Point-in-time rule, per view: a label at time t gets the view's snapshot with the greatest timestamp < t (the
snapshot stamped t is not available yet at t) that is not older than that view's online TTL (timestamp >= t - TTL,
the staleness rule that expires online keys). With none, that view's features are null and its snapshot column
is null. The label table carries each view's entity key. One output row per label row, duplicates included,
numbered by label_row in a deterministic order.
"""

from typing import Any

from feature_assets.errors import WarehouseError
from feature_assets.registry import LABEL_ROW, FeatureSet, snapshot_column
from feature_assets.resources.warehouse import Warehouse
from feature_assets.settings import validate_identifier

__all__ = ["point_in_time_sql", "build_table", "LABEL_ROW"]


def point_in_time_sql(kind: str, feature_set: FeatureSet) -> tuple[str, list[Any]]:
    """The training set of a feature set over its label table.

    DuckDB: one ASOF join per view. PostgreSQL: per view, labels and snapshots merged on one timeline per entity,
    a running max over the rows strictly earlier in time carries the latest snapshot time forward (a frame ending
    1 microsecond before the row, PostgreSQL's resolution: a snapshot stamped t is not seen at t), then one
    equi-join fetches that snapshot's features.
    """
    labels = feature_set.labels
    keys = [validate_identifier(key, "entity key") for key in labels.entity_keys]
    time, target = validate_identifier(labels.label_time, "label time"), validate_identifier(labels.target, "target")
    for name in feature_set.feature_names:
        validate_identifier(name, "feature")
    label_columns = [*keys, time, target]
    # Numbered in the first view's (key, time) order, the order its join walks: on PostgreSQL one sort then serves
    # both the numbering and that view's timeline.
    first_key = feature_set.reads[0].key
    order = [first_key, time, *(key for key in keys if key != first_key), target]
    ordered = f"""
        labels as (
            select {', '.join(label_columns)},
                row_number() over (order by {', '.join(order)}) as {LABEL_ROW}
            from {validate_identifier(labels.name, 'label table')}
        )"""
    if kind == "duckdb":
        return _duckdb(feature_set, ordered, label_columns)
    if kind == "spark":
        # Refused rather than run untested: a training row joined to the wrong snapshot is silently wrong.
        raise WarehouseError("point-in-time training sets are not built on the Spark warehouse yet (use DuckDB or PostgreSQL)")
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
    # Each view's timeline is fed by the previous view's matched rows, which carry everything found so far: no join
    # of per-view results on label_row (a hash join of two 1M-row sides). Each view's features are joined right
    # after its running max, while the rows come in that view's (key, time) order, so index lookups stay local.
    steps, params, previous, carried = [ordered], [], "labels", [LABEL_ROW, *label_columns]
    for position, read in enumerate(feature_set.reads):
        view, snapshot = read.view, f"snapshot_{position}"
        timeline, running, matched = f"timeline_{position}", f"running_{position}", f"matched_{position}"
        passed = [column for column in carried if column != time]
        restored = [f"pit_at as {time}" if column == time else column for column in carried]
        steps.append(f"""
        {timeline} as (
            select {read.key} as pit_entity, {time} as pit_at, 0 as pit_is_snapshot, {', '.join(passed)} from {previous}
            union all
            select {view.entity_key}, {view.timestamp}, 1{', null' * len(passed)} from {view.name}
        ),
        {running} as (
            select *,
                max(case when pit_is_snapshot = 1 then pit_at end) over (
                    partition by pit_entity order by pit_at range between unbounded preceding and interval '1 microsecond' preceding
                ) as pit_candidate_at
            from {timeline}
        ),
        {matched} as (
            select label.*, {', '.join(f"{snapshot}.{f.name}" for f in read.features)}
            from (
                select {', '.join(restored)},
                    case when pit_candidate_at >= pit_at - ? then pit_candidate_at end as {snapshot_column(view)}
                from {running}
                where pit_is_snapshot = 0
            ) as label
            left join {view.name} as {snapshot}
                on {snapshot}.{view.entity_key} = label.{read.key} and {snapshot}.{view.timestamp} = label.{snapshot_column(view)}
        )""")
        params.append(view.online_ttl)
        carried += [snapshot_column(view), *(f.name for f in read.features)]
        previous = matched
    sql = f"with {','.join(steps)}\n select {', '.join(carried)} from {previous}"
    return sql, params


def build_table(warehouse: Warehouse, con: Any, table: str, sql: str, params: list[Any]) -> int:
    """Replaces `table` with the query's rows in one transaction; returns the row count."""
    validate_identifier(table, "table")
    warehouse.execute(con, f"drop table if exists {table}")
    warehouse.execute(con, f"create table {table} as {sql}", params)
    return int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])

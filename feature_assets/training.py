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

__all__ = ["LABEL_ROW", "build_table", "point_in_time_sql", "require_view_indexes"]


def point_in_time_sql(kind: str, feature_set: FeatureSet) -> tuple[str, list[Any]]:
    """The training set of a feature set over its label table.

    DuckDB: one ASOF join per view. PostgreSQL: per view, a LATERAL probe of the view's (entity key, timestamp)
    index for the newest snapshot strictly before the label time and within the TTL, features included. Spark:
    per view, a running window over labels and snapshots on one timeline per entity.
    """
    labels = feature_set.labels
    keys = [validate_identifier(key, "entity key") for key in labels.entity_keys]
    time, target = validate_identifier(labels.label_time, "label time"), validate_identifier(labels.target, "target")
    for name in feature_set.feature_names:
        validate_identifier(name, "feature")
    label_columns = [*keys, time, target]
    # Numbered in the first view's (key, time) order, the order its join walks: on PostgreSQL one sort then serves
    # both the numbering and that view's probes, which walk its index and its rows in order. (That sort spills at the
    # default work_mem; given the memory, PostgreSQL's single in-memory sort took 0.4 s more CPU at 1M labels.)
    # Nulls last on every engine: Spark puts them first by default.
    first_key = feature_set.reads[0].key
    order = [first_key, time, *(key for key in keys if key != first_key), target]
    ordered = f"""
        labels as (
            select {", ".join(label_columns)},
                row_number() over (order by {", ".join(f"{column} nulls last" for column in order)}) as {LABEL_ROW}
            from {validate_identifier(labels.name, "label table")}
        )"""
    if kind == "duckdb":
        return _duckdb(feature_set, ordered, label_columns)
    if kind == "spark":
        return _spark(feature_set, ordered, label_columns)
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
    # Per label row and view, one LATERAL probe of the view's (entity key, timestamp) index (the dbt build creates
    # it; require_view_indexes refuses a view without one, where each probe would scan the whole view): walked
    # backward from the label time, its first entry within the TTL is the snapshot. At 1M labels over 2.7M snapshots
    # this takes about 40% less CPU than merging labels and snapshots on one timeline per view (a window over 3.7M
    # rows, then a probe anyway for the features), and a view with another key needs no re-sort of the labels.
    time, first_key = feature_set.labels.label_time, feature_set.reads[0].key
    selected, probes, params = [f"labels.{column}" for column in [LABEL_ROW, *label_columns]], [], []
    for position, read in enumerate(feature_set.reads):
        view, found = read.view, f"found_{position}"
        # The planner caches probes in a Memoize node, keyed by (key, label time). Where the labels are sorted by
        # the view's key (the first view's), that pays little even when the pairs repeat (the probes walk the index in
        # order) and costs a quarter of the build when they do not (0.85 s of CPU at 1M labels): label_row, unique,
        # in the probe's output makes the cache key unique, so the planner leaves the cache out. Other views keep it:
        # a country view's (key, label time) pairs repeat over most labels, and the cache spares their probes.
        uncached = f"labels.{LABEL_ROW} as uncached_{LABEL_ROW}, " if read.key == first_key else ""
        features = ", ".join(f"snapshot.{f.name}" for f in read.features)
        probes.append(f"""
        left join lateral (
            select {uncached}snapshot.{view.timestamp}, {features}
            from {view.name} as snapshot
            where snapshot.{view.entity_key} = labels.{read.key}
                and snapshot.{view.timestamp} < labels.{time} and snapshot.{view.timestamp} >= labels.{time} - ?
            order by snapshot.{view.timestamp} desc
            limit 1
        ) as {found} on true""")
        params.append(view.online_ttl)
        selected += [
            f"{found}.{view.timestamp} as {snapshot_column(view)}",
            *(f"{found}.{f.name}" for f in read.features),
        ]
    return f"with {ordered}\n select {', '.join(selected)}\n from labels{''.join(probes)}", params


def _spark(feature_set: FeatureSet, ordered: str, label_columns: list[str]) -> tuple[str, list[Any]]:
    # Spark has no ASOF join, and a range join bounded by the TTL grows with the snapshots per TTL. Per view, the
    # labels and the snapshots go on one timeline per entity (a shuffle by entity key, then a sort within each),
    # ordered by time with a label before a snapshot of the same time (a snapshot stamped t is not available at t).
    # A running last(..., ignore nulls) hands each label row the entity's newest snapshot so far, as one struct of
    # its timestamp and features: the struct is never null, so a feature that is null in that snapshot stays null
    # (last() over the features themselves would reach back to an older value). Older than the TTL, it is dropped.
    time = feature_set.labels.label_time
    steps, params, joins = [ordered], [], []
    selected = [f"labels.{column}" for column in [LABEL_ROW, *label_columns]]
    for position, read in enumerate(feature_set.reads):
        view, found = read.view, f"found_{position}"
        fields = ", ".join(f"'{name}', {name}" for name in [view.timestamp, *(f.name for f in read.features)])
        steps.append(f"""
        timeline_{position} as (
            select {read.key} as entity, {time} as at_time, 0 as side, {LABEL_ROW}, null as snapshot
            from labels
            where {read.key} is not null
            union all
            select {view.entity_key}, {view.timestamp}, 1, null, named_struct({fields})
            from {view.name}
        ),
        {found} as (
            select {LABEL_ROW}, case when snapshot.{view.timestamp} >= at_time - ? then snapshot end as snapshot
            from (
                select {LABEL_ROW}, at_time, side, last(snapshot, true) over (
                    partition by entity order by at_time, side rows between unbounded preceding and current row
                ) as snapshot
                from timeline_{position}
            )
            where side = 0
        )""")
        params.append(view.online_ttl)
        joins.append(f"\n left join {found} on {found}.{LABEL_ROW} = labels.{LABEL_ROW}")
        selected += [
            f"{found}.snapshot.{view.timestamp} as {snapshot_column(view)}",
            *(f"{found}.snapshot.{f.name}" for f in read.features),
        ]
    return f"with {','.join(steps)}\n select {', '.join(selected)}\n from labels{''.join(joins)}", params


def require_view_indexes(warehouse: Warehouse, con: Any, feature_set: FeatureSet) -> None:
    """On PostgreSQL, refuses a feature set whose view has no index led by its (entity key, timestamp): the join
    probes it once per label row, and without it each probe scans the whole view (hours at a million labels).
    The dbt build creates it (feature_view_index); a view that does not exist is left to the build's own error."""
    if warehouse.kind != "postgres":
        return
    for view in feature_set.views:
        found = warehouse.fetch(
            con,
            """
            select to_regclass(?) is null as missing, exists (
                select from pg_index as i
                join pg_attribute as key_column on key_column.attrelid = i.indrelid and key_column.attnum = i.indkey[0]
                join pg_attribute as time_column on time_column.attrelid = i.indrelid and time_column.attnum = i.indkey[1]
                where i.indrelid = to_regclass(?) and i.indisvalid and i.indpred is null
                    and key_column.attname = ? and time_column.attname = ?
            ) as indexed""",
            (view.name, view.name, view.entity_key, view.timestamp),
        ).iloc[0]
        if not found["missing"] and not found["indexed"]:
            raise WarehouseError(
                f"{view.name} has no index on ({view.entity_key}, {view.timestamp}), which the point-in-time join "
                f"probes once per label row; the dbt build of {view.name} creates it (rebuild the view, or create it)"
            )


def build_table(warehouse: Warehouse, con: Any, table: str, sql: str, params: list[Any]) -> int:
    """Replaces `table` with the query's rows, keeping the previous table when the query fails; returns the row count.

    DuckDB and PostgreSQL drop and create in one transaction. Spark has no transactions (and its session catalog's
    Parquet tables no `create or replace`), so the rows are built under a name of their own first and swapped in
    only once they are whole."""
    validate_identifier(table, "table")
    building = f"{table}__building" if warehouse.kind == "spark" else table
    warehouse.execute(con, f"drop table if exists {building}")
    warehouse.execute(con, f"create table {building} as {sql}", params)
    if building != table:
        warehouse.execute(con, f"drop table if exists {table}")
        warehouse.execute(con, f"alter table {building} rename to {table}")
    return int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])

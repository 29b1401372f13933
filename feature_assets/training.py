"""Point-in-time training sets, computed in the warehouse (never by loading the history into pandas).

Point-in-time rule, per view: a label at time t gets the view's snapshot with the greatest timestamp < t (the
snapshot stamped t is not available yet at t) that is not older than that view's online TTL (timestamp >= t - TTL,
the staleness rule that expires online keys). Pushed rows (push.py) count from when they were both computed and
loaded, a snapshot winning a tie. With none, that view's features are null and its snapshot column
is null. The label table carries each view's entity key. One output row per label row, duplicates included,
numbered by label_row in a deterministic order.

The join itself is each warehouse's own SQL (Warehouse.point_in_time_join in feature_assets/warehouses).
"""

from collections.abc import Collection
from typing import Any

import pandas as pd

from feature_assets.registry import LABEL_ROW, FeatureSet
from feature_assets.request_time import compute, import_function, input_arrays
from feature_assets.settings import validate_identifier
from feature_assets.warehouses.base import Warehouse

__all__ = ["LABEL_ROW", "build_table", "point_in_time_sql", "require_view_indexes", "with_request_features"]


def point_in_time_sql(
    warehouse: Warehouse, feature_set: FeatureSet, pushed: Collection[str] = ()
) -> tuple[str, list[Any]]:
    """The training set of a feature set over its label table, in the warehouse's dialect; the views named in
    `pushed` (push.pushed_views) have pushed rows, read with their snapshots.

    DuckDB: one ASOF join per view. PostgreSQL: per view, a LATERAL probe of the view's (entity key, timestamp)
    index for the newest snapshot strictly before the label time and within the TTL, features included. Spark:
    per view, a running window over labels and snapshots on one timeline per entity.
    """
    labels = feature_set.labels
    keys = [validate_identifier(key, "entity key") for key in labels.entity_keys]
    time, target = validate_identifier(labels.label_time, "label time"), validate_identifier(labels.target, "target")
    for name in feature_set.feature_names:
        validate_identifier(name, "feature")
    request = [validate_identifier(field.name, "request field") for field in feature_set.request]
    label_columns = [*keys, time, target, *request]
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
    return warehouse.point_in_time_join(feature_set.reads, labels.label_time, ordered, label_columns, pushed)


def require_view_indexes(warehouse: Warehouse, con: Any, feature_set: FeatureSet) -> None:
    """Refuses a feature set whose views lack an index the join probes (PostgreSQL: each view's (entity key,
    timestamp) index, which the dbt build creates)."""
    warehouse.check_join_indexes(con, feature_set.views)


def build_table(warehouse: Warehouse, con: Any, table: str, sql: str, params: list[Any]) -> int:
    """Replaces `table` with the query's rows, keeping the previous table when the query fails; returns the row count.

    DuckDB and PostgreSQL drop and create in one transaction; Spark builds under a name of its own and swaps the
    table in once whole (Warehouse.replace_table)."""
    warehouse.replace_table(con, table, sql, params)
    return int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])


def with_request_features(feature_set: FeatureSet, frame: pd.DataFrame) -> pd.DataFrame:
    """The training rows with a column per request-time feature of the model, computed from the rows' request fields
    and stored features by the function serving calls (request_time.compute), so the two cannot differ."""
    if not feature_set.request_features:
        return frame
    dtypes = {f.name: f.dtype for f in feature_set.features} | {f.name: f.dtype for f in feature_set.request}
    inputs = input_arrays({name: frame[name] for name in dtypes}, dtypes)
    functions = [import_function(f.function, f"model {feature_set.model}") for f in feature_set.request_features]
    computed = compute(feature_set.request_features, functions, inputs, len(frame))
    return frame.assign(**computed)

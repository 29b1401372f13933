"""Point-in-time features for a caller's own rows ("these entities, each as of its own time"), joined in the warehouse
by the training sets' SQL (Warehouse.point_in_time_join), with the training sets' rule: per view, the latest snapshot
strictly before the row's time and within the view's TTL, else nulls.

The rows' keys and times go to the warehouse once (Warehouse.stage_frame), the join runs there, one fetch comes back;
the caller's other columns never leave pandas. Times are UTC: naive times are taken as UTC, zoned ones converted.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd

from feature_assets.errors import DataError, FeatureStoreError, shown
from feature_assets.feature_refs import PANDAS_DTYPES, output_names, snapshot_time_column
from feature_assets.push import pushed_views
from feature_assets.registry import LABEL_ROW, Registry, ViewRead, snapshot_column
from feature_assets.settings import validate_identifier
from feature_assets.warehouses.base import Warehouse

__all__ = ["historical_features"]

_INTEGER_KEYS = ("smallint", "integer", "int", "bigint")
_STAGED, _KEYED = "entity_rows__staged", "entity_rows__keyed"


def historical_features(
    warehouse: Warehouse,
    registry: Registry,
    reads: Sequence[ViewRead],
    entities: pd.DataFrame,
    timestamp: str,
    full_feature_names: bool = False,
) -> pd.DataFrame:
    """The entity rows, in their order and with all their columns, plus each read's features and its
    `<view>__computed_at`. `reads` come from feature_refs (keys settled by with_keys_from)."""
    if not isinstance(entities, pd.DataFrame):
        raise FeatureStoreError(f"the entity rows must be a pandas DataFrame, not {type(entities).__name__}")
    names = output_names(reads, full_feature_names)
    added = [column for read, columns in zip(reads, names) for column in (*columns, snapshot_time_column(read))]
    clashing = [column for column in added if column in entities.columns]
    if clashing:
        advice = "" if full_feature_names else "; pass full_feature_names=True for view__feature names"
        raise FeatureStoreError(f"the entity rows already have the columns {', '.join(clashing)}{advice}")
    times = _utc_times(entities, timestamp)
    keys = _key_columns(registry, reads)
    staged = pd.DataFrame({key: _key_values(entities, key, key_type) for key, key_type in keys.items()})
    staged[timestamp] = times
    staged[LABEL_ROW] = np.arange(len(entities), dtype=np.int64)
    # In the first key's (key, time) order, as training sets number their labels: PostgreSQL's probes then walk
    # that view's index in order. label_row keeps the caller's order.
    staged = staged.sort_values([next(iter(keys)), timestamp], kind="stable", na_position="last")
    result = entities.copy()
    if entities.empty:
        joined = pd.DataFrame({LABEL_ROW: pd.Series([], dtype=np.int64)})
    else:
        joined = _join(warehouse, registry, reads, staged, keys, timestamp)
    positions = np.argsort(joined[LABEL_ROW].to_numpy(), kind="stable")
    for read, columns in zip(reads, names):
        snapshots = joined[snapshot_column(read.view)] if len(joined) else pd.Series([], dtype="datetime64[us]")
        result[snapshot_time_column(read)] = pd.to_datetime(snapshots.iloc[positions]).astype("datetime64[us]").array
        for feature, column in zip(read.features, columns):
            values = joined[feature.name] if len(joined) else pd.Series([], dtype=object)
            result[column] = values.iloc[positions].astype(PANDAS_DTYPES[feature.dtype]).array
    return result


def _join(
    warehouse: Warehouse,
    registry: Registry,
    reads: Sequence[ViewRead],
    staged: pd.DataFrame,
    keys: dict[str, str],
    timestamp: str,
) -> pd.DataFrame:
    """Stages the rows, derives the keys that come from another view's feature (that view's snapshot as of the row's
    time, as serving reads it online), then joins every read; one fetch."""
    given = list(keys)
    types = {**{key: _sql_key_type(key_type) for key, key_type in keys.items()}, timestamp: "timestamp"}
    derived = {read.key: read.derived_from for read in reads if read.derived_from is not None}
    with warehouse.connect() as con:
        views = [read.view for read in reads] + [registry.view(view) for view, _ in derived.values()]
        pushed = pushed_views(warehouse, con, views)
        warehouse.stage_frame(con, _STAGED, staged, {**types, LABEL_ROW: "bigint"})
        source, columns = _STAGED, [*given, timestamp]
        if derived:
            sources = sorted(set(derived.values()))
            source_reads = [
                ViewRead(registry.view(view), (registry.view(view).feature(name),)) for view, name in sources
            ]
            sql, params = warehouse.point_in_time_join(
                source_reads, timestamp, _labels(source, columns), columns, pushed
            )
            warehouse.stage_query(con, _KEYED, sql, params)
            source = _KEYED
            columns = [*columns, *(f"{name} as {key}" for key, (_, name) in derived.items())]
        sql, params = warehouse.point_in_time_join(
            reads, timestamp, _labels(source, columns), [*given, timestamp, *derived], pushed
        )
        return warehouse.fetch(con, sql, params)


def _labels(source: str, columns: Sequence[str]) -> str:
    return f"""
        labels as (
            select {LABEL_ROW}, {", ".join(columns)}
            from {source}
        )"""


def _key_columns(registry: Registry, reads: Sequence[ViewRead]) -> dict[str, str]:
    """The caller's key columns the join needs, each with the key's declared SQL type: the views' own keys, and the
    keys of the views derived keys come from."""
    keys: dict[str, str] = {}
    for read in reads:
        view = registry.view(read.derived_from[0]) if read.derived_from else read.view
        keys.setdefault(validate_identifier(view.entity_key, "entity key"), view.key_data_type)
    return keys


def _sql_key_type(key_type: str) -> str:
    return "bigint" if key_type in _INTEGER_KEYS else "varchar"


def _key_values(entities: pd.DataFrame, key: str, key_type: str) -> pd.Series:
    """A key column as the warehouse takes it, refused by name when its values are not of the key's type."""
    column = entities[key]
    if key_type in _INTEGER_KEYS:
        if pd.api.types.is_integer_dtype(column.dtype):
            return column.astype("Int64").reset_index(drop=True)
        kind = pd.api.types.infer_dtype(column, skipna=True)
        if kind not in ("integer", "empty"):
            raise DataError(
                f"column {key} holds {kind} values ({column.dtype}); the key {key} is {key_type}: pass ints"
            )
        return column.astype("Int64").reset_index(drop=True)
    kind = pd.api.types.infer_dtype(column, skipna=True)
    if kind not in ("string", "empty"):
        raise DataError(f"column {key} holds {kind} values ({column.dtype}); the key {key} is {key_type}: pass strings")
    return column.astype("string").reset_index(drop=True)


def _utc_times(entities: pd.DataFrame, timestamp: str) -> pd.Series:
    """The rows' times as naive UTC microseconds; refuses a missing column, another dtype, or nulls."""
    validate_identifier(timestamp, "timestamp column")
    if timestamp not in entities.columns:
        raise FeatureStoreError(
            f"the entity rows have no timestamp column {shown(timestamp)} "
            f"(columns: {', '.join(map(str, entities.columns))})"
        )
    times = entities[timestamp]
    if not pd.api.types.is_datetime64_any_dtype(times.dtype):
        raise DataError(
            f"column {timestamp} holds {times.dtype}, not times: convert it with pd.to_datetime (naive times are UTC)"
        )
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    nulls = np.flatnonzero(times.isna().to_numpy())
    if len(nulls):
        raise DataError(
            f"column {timestamp} has {len(nulls)} null times (first at row {nulls[0]}): every row needs one"
        )
    return times.astype("datetime64[us]").reset_index(drop=True)

"""Fresh feature values pushed between syncs: checked against the view's contract, appended to the view's pushed
history in the warehouse, then written to the online store where newer than what it holds.

A pushed row is a whole snapshot of one entity at its computed_at: the entity key, computed_at and every feature of
the view (null where a feature has no value). A push cannot carry some features only: the online store replaces an
entity whole, and a partial row would have to be merged with whatever the store held, which the history could not
reproduce (the value it was merged with may have expired, or never been synced). Push the row the sync would write.

Order: the warehouse first (`<view>_pushed`, one row per entity key and computed_at, with the time it was loaded),
then the online store. A push that fails part way leaves rows in the warehouse that serving may not have yet; its
retry writes nothing twice (the warehouse keeps the first row of a key and computed_at, the online store keeps what
it holds of the same computed_at) and completes the online writes. No online value is ever without its row.

The rule, offline and online alike: an entity's value at time t is its row with the greatest computed_at among the
dbt snapshots computed before t and the pushed rows computed and loaded before t, within the view's TTL; a dbt
snapshot wins over a pushed row of the same computed_at. Online writes follow it (a late or replayed push never
replaces a newer value, and the sync never replaces a newer pushed value); the point-in-time join, the sync, the
parity and leakage checks read the pushed rows with the snapshots.
"""

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.as_of import utc_now
from feature_assets.errors import DataError, FeatureStoreError, InvalidEntity, InvalidRow, shown
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import (
    TIMESTAMP,
    EncodedBatch,
    EncodedColumn,
    encode_entity_id,
    parse_entity_id,
    view_schema,
)
from feature_assets.serving.online_store import OnlineStore
from feature_assets.warehouses.base import Warehouse

__all__ = [
    "LOADED_AT",
    "PushResult",
    "compact_pushed",
    "push_rows",
    "pushed_column_types",
    "pushed_table",
    "pushed_views",
    "row_columns",
    "typed_rows",
]

# The column of the pushed history that says when a row reached the warehouse (naive UTC).
LOADED_AT = "loaded_at"
_INT64 = 2**63


def pushed_table(view: FeatureView) -> str:
    """The warehouse table beside the view's dbt snapshots that holds its pushed rows."""
    return f"{view.name}_pushed"


def pushed_column_types(view: FeatureView) -> dict[str, str]:
    """The pushed history's columns and their SQL types: the key, computed_at, the features, loaded_at."""
    key_type = "bigint" if view.key_data_type in ("smallint", "integer", "int", "bigint") else "text"
    return {
        view.entity_key: key_type,
        view.timestamp: "timestamp",
        **{f.name: f.data_type for f in view.features},
        LOADED_AT: "timestamp",
    }


def compact_pushed(warehouse: Warehouse, con: Any, view: FeatureView) -> int:
    """Merges the view's pushed rows into fewer files where the warehouse keeps a file per push (Spark); how many
    pushes it merged."""
    return warehouse.compact_inserted(con, pushed_table(view), (view.entity_key, view.timestamp))


def pushed_views(warehouse: Warehouse, con: Any, views: Collection[FeatureView]) -> frozenset[str]:
    """The names of the views that have pushed rows (a pushed table) in the warehouse."""
    return frozenset(view.name for view in views if warehouse.table_exists(con, pushed_table(view)))


@dataclass(frozen=True)
class PushResult:
    rows: int  # rows accepted (and in the warehouse)
    written: int  # rows the online store took; the others found a value of the same or a later computed_at there

    def to_json(self, view: FeatureView) -> dict[str, Any]:
        return {"view": view.name, "rows": self.rows, "written": self.written, "kept": self.rows - self.written}


def _int(value: Any) -> bool:
    return type(value) is int and -_INT64 <= value < _INT64


def _float(value: Any) -> bool:
    return (type(value) is float and math.isfinite(value)) or _int(value)


def _bool(value: Any) -> bool:
    return type(value) is bool


def _string(value: Any) -> bool:
    return type(value) is str and "\x00" not in value


_CHECKS = {"int64": _int, "float64": _float, "bool": _bool, "string": _string}
_MEANING = {
    "int64": "an integer within int64",
    "float64": "a finite number",
    "bool": "true or false",
    "string": "text without NUL bytes",
}


def _null(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT


def _moment(value: Any, now: datetime) -> datetime:
    """computed_at as naive UTC: ISO 8601 text or a datetime; naive is UTC, zoned is converted."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRow(f"{shown(value)} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise InvalidRow(f"{shown(value)} is not a time (ISO 8601 text)")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    moment = value.to_pydatetime(warn=False) if isinstance(value, pd.Timestamp) else value
    if moment > now:
        raise InvalidRow(f"{moment.isoformat()} is after the current time ({now.isoformat()} UTC): a value is pushed "
                         "once computed")  # fmt: skip
    return moment


def row_columns(view: FeatureView, rows: Sequence[Any]) -> dict[str, list[Any]]:
    """Rows (dicts, as JSON gives them) as columns; an unknown name, or a row lacking a column another has, is
    refused by name and position."""
    if not all(isinstance(row, Mapping) for row in rows):
        raise InvalidRow("rows must be objects (dicts), one per entity")
    names = list(dict.fromkeys(name for row in rows for name in row))
    _check_names(view, names)
    for index, row in enumerate(rows):
        if len(row) != len(names):
            absent = next(name for name in names if name not in row)
            raise InvalidRow(
                f"row {index} has no {absent}; every row carries the entity key, computed_at and every feature"
            )
    return {name: [row[name] for row in rows] for name in names}


def _check_names(view: FeatureView, names: Collection[str]) -> None:
    expected = {view.entity_key, view.timestamp, *view.feature_names}
    unknown = [name for name in names if name not in expected]
    if unknown:
        raise InvalidRow(f"{view.name} has no feature {shown(unknown[0])}; its features: "
                         f"{', '.join(view.feature_names)}")  # fmt: skip


def typed_rows(view: FeatureView, columns: Mapping[str, Sequence[Any]], rows: int) -> dict[str, list[Any]]:
    """Checks columns of Python values (as JSON gives them, or a frame's .tolist()) against the view's contract: the
    entity key of its declared type, computed_at, and every feature of its dtype or null. The first problem is
    refused by row and name (InvalidRow, InvalidEntity), before anything is written. Returns the columns as Python
    values: None for null, floats as float, computed_at a naive UTC datetime."""
    _check_names(view, columns)
    expected = [view.entity_key, view.timestamp, *view.feature_names]
    absent = [name for name in expected if name not in columns]
    if absent:
        what = "feature" if absent[0] in view.feature_names else "column"
        raise InvalidRow(f"the rows have no {what} {absent[0]}; a push carries the entity key, {view.timestamp} and "
                         f"every feature of {view.name} (null where it has no value)")  # fmt: skip
    if rows == 0:
        raise InvalidRow("no rows to push")
    now = utc_now()
    typed: dict[str, list[Any]] = {}
    keys = []
    for index, value in enumerate(columns[view.entity_key]):
        try:
            keys.append(parse_entity_id(None if _null(value) else value, view.key_data_type, view.entity_key))
        except InvalidEntity as error:
            raise InvalidEntity(f"row {index}: {error}") from None
    typed[view.entity_key] = keys
    moments = []
    for index, value in enumerate(columns[view.timestamp]):
        if _null(value):
            raise InvalidRow(f"row {index}: no {view.timestamp}; every pushed row says when it was computed")
        try:
            moments.append(_moment(value, now))
        except InvalidRow as error:
            raise InvalidRow(f"row {index}: {view.timestamp} {error}") from None
    typed[view.timestamp] = moments
    for feature in view.features:
        check, values = _CHECKS[feature.dtype], columns[feature.name]
        values = [None if _null(value) else value for value in values]
        for index, value in enumerate(values):
            if value is not None and not check(value):
                raise InvalidRow(f"row {index}: {view.name}.{feature.name} is {shown(value)}, not "
                                 f"{_MEANING[feature.dtype]} ({feature.dtype})")  # fmt: skip
        if feature.dtype == "float64":
            values = [None if value is None else float(value) for value in values]
        typed[feature.name] = values
    return typed


# Each dtype's stored text, exactly as codec.encode_batch writes it (repr for floats, ISO 8601 for times).
_TEXT: dict[str, Callable[[Any], bytes]] = {
    "int64": b"%d".__mod__,
    "float64": b"%r".__mod__,
    "bool": lambda value: b"true" if value else b"false",
    "string": str.encode,
    TIMESTAMP: lambda value: value.isoformat().encode(),
}
_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def encoded(view: FeatureView, rows: dict[str, list[Any]]) -> EncodedBatch:
    """Checked rows in the stores' form, as encode_batch would give them from a frame: without pandas, which costs
    more than the rest of a one-row push."""
    count = len(rows[view.entity_key])
    columns = {}
    for field, dtype in view_schema(view):
        encode, values = _TEXT[dtype], rows[field]
        present = [value for value in values if value is not None]
        if len(present) == count:
            codes = np.arange(count)
        else:
            codes = np.cumsum([value is not None for value in values]) - 1
            codes[[value is None for value in values]] = -1
        columns[field] = EncodedColumn(codes, list(map(encode, present)))
    ttl = view.online_ttl // _MS
    expires = np.array([(moment - _EPOCH) // _MS + ttl for moment in rows[view.timestamp]], dtype=np.int64)
    return EncodedBatch(list(map(encode_entity_id, rows[view.entity_key])), columns, expires)


def push_rows(warehouse: Warehouse, store: OnlineStore, view: FeatureView, rows: dict[str, list[Any]]) -> PushResult:
    """Appends the rows to the view's pushed history (a key and computed_at already there is skipped), then writes
    each entity online where the store holds nothing newer, and not past the view's TTL."""
    count = len(rows[view.entity_key])
    values = {**rows, LOADED_AT: [utc_now()] * count}
    table, column_types = pushed_table(view), pushed_column_types(view)
    try:
        with warehouse.pooled() as con:
            warehouse.insert_new_rows(con, table, values, column_types, (view.entity_key, view.timestamp))
    except FeatureStoreError:
        raise
    except Exception:
        _refuse_another_definition(warehouse, view, table, list(column_types))
        raise
    with store.writer(view, push=True) as writer:
        writer.write(encoded(view, rows))
    return PushResult(count, writer.rows_written)


def _refuse_another_definition(warehouse: Warehouse, view: FeatureView, table: str, expected: list[str]) -> None:
    """After a failed insert: names the cause when the pushed table holds another definition's columns (the view
    changed since its first push), which the warehouse's own error would not say."""
    with warehouse.connect() as con:
        if not warehouse.table_exists(con, table):
            return
        held = [str(name).lower() for name in warehouse.fetch(con, f"select * from {table} limit 0").columns]
    if held != expected:
        raise DataError(
            f"the warehouse's {table} holds pushed rows of another definition of {view.name} (columns "
            f"{', '.join(held)}; the view's now: {', '.join(expected)}): drop {table} (on Spark, the view and "
            f"{table}_appends under it) to push the new definition"
        ) from None

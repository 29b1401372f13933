"""The text form of feature values in the online stores, written columnarly and read back exactly.

One form for both stores, so one decoder serves both and `redis-cli` shows plain values:

    int64      decimal                        42
    float64    repr: the shortest text that   0.1, 1e-300, -0.0, inf
               parses back to the same double
    bool       true / false
    string     UTF-8
    timestamp  ISO 8601                       2026-03-31T00:00:00

Null is an explicit marker, not an absent field: in Redis a single NUL byte (NULL_MARKER), in SQLite
SQL NULL. With every field always present, one HSET replaces a whole entity at once, with no DEL in
between that a reader could observe. A NaN float is stored as null: the nullable pandas dtypes that
reads return (and DuckDB's pandas bridge) cannot tell the two apart. A string containing a NUL byte is
refused (PostgreSQL cannot store one either).
"""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.errors import DataError, InvalidEntity, shown
from feature_assets.registry import FeatureView

__all__ = [
    "MAX_TEXT_KEY",
    "NULL_MARKER",
    "PANDAS_DTYPES",
    "TIMESTAMP",
    "EncodedBatch",
    "EncodedColumn",
    "cast_error",
    "decoder",
    "encode_batch",
    "encode_entity_id",
    "parse_entity_id",
    "view_schema",
]

NULL_MARKER = b"\x00"
# The dtype of the snapshot's computed_at field, which is stored next to the features.
TIMESTAMP = "timestamp"

PANDAS_DTYPES = {
    "int64": "Int64",
    "float64": "Float64",
    "bool": "boolean",
    "string": "string",
    TIMESTAMP: "datetime64[us]",
}


@dataclass(frozen=True)
class EncodedColumn:
    """One column as distinct encoded values plus, per row, the index of its value (-1 = null)."""

    codes: np.ndarray
    values: list[bytes]


@dataclass(frozen=True)
class EncodedBatch:
    """Rows ready for any store: entity ids as text, the columns (computed_at first) encoded, and when each row's
    snapshot expires (computed_at + the view's TTL, in milliseconds since the epoch)."""

    entity_ids: list[bytes]
    columns: dict[str, EncodedColumn]
    expires_at_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.entity_ids)

    def unexpired(self) -> np.ndarray:
        """Per row, whether its snapshot is still within the TTL: one past it is not written to any store."""
        return self.expires_at_ms > time.time() * 1000


def view_schema(view: FeatureView) -> tuple[tuple[str, str], ...]:
    """The stored fields and their dtypes, in storage order."""
    return ((view.timestamp, TIMESTAMP), *((f.name, f.dtype) for f in view.features))


def encode_entity_id(entity_id: object) -> bytes:
    """An id as it appears in keys: ints in decimal, strings as UTF-8 (on every read, so the common types go first)."""
    # Exact types (type() is, not isinstance): a bool is an int, but no id.
    if type(entity_id) is int:
        return b"%d" % entity_id
    if type(entity_id) is str:
        return entity_id.encode()
    if type(entity_id) is bytes:
        return entity_id
    if isinstance(entity_id, (int, np.integer)) and not isinstance(entity_id, (bool, np.bool_)):
        return b"%d" % int(entity_id)
    raise DataError(f"entity id {entity_id!r} ({type(entity_id).__name__}) is not an int or a string")


# Each integer key type's bound (ids lie in [-bound, bound)), as the registry names them; other keys are text.
_INTEGER_KEYS = {"smallint": 2**15, "integer": 2**31, "int": 2**31, "bigint": 2**63}
# ASCII only: str.isdigit() and int() also take '١٢٣' and '１２３' (123), and isdigit() takes '²', which int() refuses.
_DIGITS = re.compile(r"-?[0-9]+")
MAX_TEXT_KEY = 256


def parse_entity_id(value: object, key_type: str | None, key: str) -> int | str:
    """An entity id as its key's declared type (the registry's data_type) takes it, or an InvalidEntity naming it.

    Integer keys take ints, or text of ASCII digits with an optional leading '-', within the type's range; text
    keys take printable text (no control characters, nor undecodable bytes) of 1 to MAX_TEXT_KEY characters. A
    key_type of None (a model card from before key types were recorded) takes an int as a bigint, text as text.
    """
    if isinstance(value, str) and not value.strip():
        raise InvalidEntity(f"{key} cannot be empty")
    if key_type is None:
        key_type = "text" if isinstance(value, str) else "bigint"
    if key_type in _INTEGER_KEYS:
        bound = _INTEGER_KEYS[key_type]
        out_of_range = f"is outside the range of a {key_type} ({-bound} to {bound - 1})"
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            if len(value) > 20:  # out of range anyway, and int() refuses more than 4,300 digits
                raise InvalidEntity(f"{key} {shown(value)} {out_of_range}")
            value = int(value)
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise InvalidEntity(
                f"{key} {shown(value)} is not a {key_type}: an id of ASCII digits, optionally after a '-'"
            )
        if not -bound <= value < bound:
            raise InvalidEntity(f"{key} {shown(int(value))} {out_of_range}")
        return int(value)
    if not isinstance(value, str):
        raise InvalidEntity(f"{key} {shown(value)} is not text ({key_type})")
    if len(value) > MAX_TEXT_KEY:
        raise InvalidEntity(f"{key} {shown(value)} is longer than {MAX_TEXT_KEY} characters")
    if not value.isprintable():
        raise InvalidEntity(f"{key} {shown(value)} holds control characters or undecodable bytes")
    return value


_ACCEPTS: dict[str, Callable[[object], bool]] = {
    "int64": pd.api.types.is_integer_dtype,
    "float64": lambda d: pd.api.types.is_float_dtype(d) or pd.api.types.is_integer_dtype(d),
    "bool": pd.api.types.is_bool_dtype,
    "string": pd.api.types.is_string_dtype,
    TIMESTAMP: pd.api.types.is_datetime64_dtype,
}


def _strings(values: list[str]) -> list[bytes]:
    for value in values:
        if "\x00" in value:
            raise DataError(f"string value {value!r} contains a NUL byte, which the online stores reserve for null")
    return [value.encode() for value in values]


# A column's distinct values (Python ints, bools, strs or pandas Timestamps, by dtype) to their stored text.
_ENCODERS: dict[str, Callable[[list[Any]], list[bytes]]] = {
    "int64": lambda values: list(map(b"%d".__mod__, values)),
    "bool": lambda values: [b"true" if value else b"false" for value in values],
    "string": _strings,
    TIMESTAMP: lambda values: [value.isoformat().encode() for value in values],
}


def _encode_column(column: pd.Series, dtype: str, field: str) -> EncodedColumn:
    if not _ACCEPTS[dtype](column.dtype):
        raise DataError(f"column {field} has dtype {column.dtype}, but the registry declares {dtype}")
    if dtype == "float64":
        # Not factorized: hashing equates -0.0 with 0.0, and floats rarely repeat anyway.
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        present = ~np.isnan(values)
        codes = np.where(present, np.cumsum(present) - 1, -1)
        return EncodedColumn(codes, list(map(b"%r".__mod__, values[present].tolist())))
    # Feature columns repeat a lot (plans, countries, counts, one computed_at): encode each distinct value once.
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    return EncodedColumn(codes, _ENCODERS[dtype](list(uniques)))


def encode_batch(view: FeatureView, frame: pd.DataFrame) -> EncodedBatch:
    """Encodes a frame holding the entity key, the timestamp and every feature of the view, column by column."""
    ids = frame[view.entity_key]
    if ids.isna().any():
        raise DataError(f"{view.name}: {int(ids.isna().sum())} rows have no {view.entity_key}")
    if pd.api.types.is_integer_dtype(ids.dtype):
        entity_ids = list(map(b"%d".__mod__, ids.tolist()))
    else:
        entity_ids = [str(value).encode() for value in ids.tolist()]
    columns = {}
    for field, dtype in view_schema(view):
        if field not in frame.columns:
            raise DataError(f"{view.name}: the warehouse rows have no column {field!r}")
        columns[field] = _encode_column(frame[field], dtype, field)
    computed_at = frame[view.timestamp]
    if computed_at.isna().any():
        raise DataError(f"{view.name}: {int(computed_at.isna().sum())} rows have no {view.timestamp}")
    expires_at_ms = computed_at.to_numpy(dtype="datetime64[ms]").astype(np.int64) + int(
        view.online_ttl.total_seconds() * 1000
    )
    return EncodedBatch(entity_ids, columns, expires_at_ms)


_BOOLS = {b"true": True, b"false": False, "true": True, "false": False}


def _bool(value: bytes | str) -> bool:
    return _BOOLS[value]


def _string(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _timestamp(value: bytes | str) -> datetime:
    return datetime.fromisoformat(_string(value))


_DECODERS: dict[str, Callable[[bytes | str], object]] = {
    "int64": int,
    "float64": float,
    "bool": _bool,
    "string": _string,
    TIMESTAMP: _timestamp,
}


def decoder(dtype: str) -> Callable[[bytes | str], object]:
    """The function that turns one stored value (bytes from Redis, str from SQLite) back into a Python value."""
    return _DECODERS[dtype]


def cast_error(key: str, field: str, value: bytes | str, dtype: str) -> DataError:
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    return DataError(f"online value at {key}, field {field!r}: {text!r} is not a valid {dtype}")

"""Typed reads of the online store: what a model server calls on every request.

Values come back with the registry's dtypes: ints stay ints (nullable Int64 in frames), floats are the
exact doubles that were synced, nulls stay null, strings stay strings. An entity that is not in the store
(never synced, or its snapshot older than the view's TTL) comes back flagged `_missing`, never as zeros.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.as_of import utc_now
from feature_assets.errors import DataError
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import TIMESTAMP, cast_error, decoder, view_schema
from feature_assets.serving.online_store import OnlineStore, SyncRecord
from feature_assets.serving.served_log import ServedLog

__all__ = ["MISSING", "FeatureReader"]

MISSING = "_missing"
# How often a long-lived reader looks for a new sync record (one small read).
RECHECK_SECONDS = 1.0

_CAST_ERRORS = (ValueError, KeyError, TypeError, UnicodeDecodeError)


@dataclass(frozen=True)
class _Plan:
    """The stored fields one request reads, with their decoders; built once per feature selection."""

    fields: tuple[str, ...]
    dtypes: tuple[str, ...]
    decoders: tuple[Callable[[Any], Any], ...]
    empty: dict[str, Any]


class FeatureReader:
    """Reads one feature view from an online store.

    Refuses to start if the store's last sync wrote any of the view's fields with another dtype, or not at
    all: decoding would be wrong. The view may be a slice of the synced one (a model's features): fields it
    does not read are ignored. A sync after a schema change rewrites everything. A long-lived reader looks at
    the sync record again at most once per RECHECK_SECONDS and refuses by name as a new one would.

    With a served_log, every entity found is offered to it (model None), with the features the read returned.
    """

    def __init__(self, store: OnlineStore, view: FeatureView, served_log: ServedLog | None = None):
        self.store = store
        self.view = view
        self.served_log = served_log
        self._check(store.last_sync(view))
        self._plans: dict[tuple[str, ...] | None, _Plan] = {None: self._plan(view.feature_names)}

    def _check(self, record: SyncRecord | None) -> None:
        if record is not None:
            stored = dict(record.schema)
            differing = {name: dtype for name, dtype in view_schema(self.view) if stored.get(name) != dtype}
            if differing:
                raise DataError(
                    f"{self.store.describe()} holds {self.view.name} with schema {stored}, but the reader expects "
                    f"{differing}; run the sync (it rewrites every entity after a schema change)"
                )
        self.synced_version = None if record is None else record.version
        self._checked_at = time.monotonic()

    def _recheck(self) -> None:
        if time.monotonic() - self._checked_at >= RECHECK_SECONDS:
            self._check(self.store.last_sync(self.view))

    def _plan(self, names: Sequence[str]) -> _Plan:
        dtypes = (TIMESTAMP, *(self.view.feature(name).dtype for name in names))  # unknown name -> RegistryError
        fields = (self.view.timestamp, *names)
        return _Plan(fields, dtypes, tuple(map(decoder, dtypes)), {field: None for field in fields})

    def _plan_for(self, features: Iterable[str] | None) -> _Plan:
        if features is None:
            return self._plans[None]
        selection = (features,) if isinstance(features, str) else tuple(features)
        plan = self._plans.get(selection)
        if plan is None:
            plan = self._plans[selection] = self._plan(selection)
        return plan

    def get_entity(self, entity_id: Any, features: Iterable[str] | None = None) -> dict[str, Any]:
        """One entity's features as a dict of Python values; the fast path (one round trip, no pandas)."""
        self._recheck()
        plan = self._plans[None] if features is None else self._plan_for(features)
        result = self.decode_row(entity_id, self.store.read_row(self.view, entity_id, plan.fields), features)
        if self.served_log is not None and not result[MISSING]:
            logged = {field: result[field] for field in plan.fields[1:]}
            self.served_log.log(self.view.name, self.view.entity_key, entity_id, logged)
        return result

    def fields(self, features: Iterable[str] | None = None) -> tuple[str, ...]:
        """The stored fields a read of these features asks the store for (the timestamp first)."""
        return self._plan_for(features).fields

    def decode_row(
        self, entity_id: Any, values: Sequence[Any] | None, features: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """What the store's read_row returned for fields(features), typed: the entity key, the timestamp, the
        features and `_missing`."""
        plan = self._plans[None] if features is None else self._plan_for(features)
        result = {self.view.entity_key: entity_id}
        if values is None:
            result.update(plan.empty)
            result[MISSING] = True
            return result
        for field, decode, value in zip(plan.fields, plan.decoders, values):
            if value is None:
                result[field] = None
                continue
            try:
                result[field] = decode(value)
            except _CAST_ERRORS:
                dtype = plan.dtypes[plan.fields.index(field)]
                raise cast_error(self.store.key_of(self.view, entity_id), field, value, dtype) from None
        if result[self.view.timestamp] <= utc_now() - self.view.online_ttl:  # the store's clock may lag
            result.update(plan.empty)
            result[MISSING] = True
            return result
        result[MISSING] = False
        return result

    def get_online_features(self, entity_ids: Iterable[Any], features: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per requested id (in order): the entity key, computed_at, the features and `_missing`."""
        return pd.DataFrame(self.online_columns(entity_ids, features), copy=False)

    def online_columns(self, entity_ids: Iterable[Any], features: Iterable[str] | None = None) -> dict[str, Any]:
        """get_online_features' columns, by name, before they become a frame (for a caller building a frame of
        its own from several reads)."""
        self._recheck()
        ids = list(entity_ids)
        plan = self._plan_for(features)
        columns = self.store.read_columns(self.view, ids, plan.fields)
        data: dict[str, Any] = {self.view.entity_key: ids}
        for field, dtype, decode, column in zip(plan.fields, plan.dtypes, plan.decoders, columns):
            data[field] = self._decode_column(field, dtype, decode, column, ids)
        # The timestamp is null exactly where the entity is missing (the stores' contract).
        stale = data[self.view.timestamp] <= np.datetime64(utc_now() - self.view.online_ttl, "us")
        if stale.any():  # the store's clock may lag: a snapshot past its TTL is not served
            for field in plan.fields:
                data[field] = data[field].copy()
                data[field][stale] = None if field != self.view.timestamp else np.datetime64("NaT")
        data[MISSING] = np.isnat(data[self.view.timestamp])
        if self.served_log is not None:
            logged = {field: data[field] for field in plan.fields[1:]}
            self.served_log.log_batch(self.view.name, self.view.entity_key, ids, logged, rows=~data[MISSING])
        return data

    def _decode_column(
        self, field: str, dtype: str, decode: Callable[[Any], Any], column: Sequence[Any], ids: list[Any]
    ) -> Any:
        # Feature values repeat (plans, countries, counts, one computed_at): decode each distinct value once, give
        # each row the index of its value (one dict lookup, in C), then let numpy gather values and the null mask.
        present = set(column)
        present.discard(None)
        distinct = list(present)
        try:
            decoded = list(map(decode, distinct))
        except _CAST_ERRORS:
            for entity_id, value in zip(ids, column):
                try:
                    if value is not None:
                        decode(value)
                except _CAST_ERRORS:
                    raise cast_error(self.store.key_of(self.view, entity_id), field, value, dtype) from None
            raise
        if dtype == TIMESTAMP:  # numpy converts datetime objects one by one, slowly; integers are cheap
            decoded = [(moment - _EPOCH) // _MICROSECOND for moment in decoded]
        null = len(distinct)
        index = dict(zip(distinct, range(null)))
        index[None] = null
        codes = np.fromiter(map(index.__getitem__, column), dtype=np.intp, count=len(column))
        decoded.append(_FILL[dtype])
        values: np.ndarray = np.array(decoded, dtype=_NUMPY[dtype])[codes]
        return _ARRAYS[dtype](values, codes == null)


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_FILL = {"int64": 0, "float64": 0.0, "bool": False, "string": pd.NA, TIMESTAMP: np.iinfo(np.int64).min}
_NUMPY = {"int64": np.int64, "float64": np.float64, "bool": bool, "string": object, TIMESTAMP: np.int64}
_ARRAYS: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
    "int64": pd.arrays.IntegerArray,
    "float64": pd.arrays.FloatingArray,
    "bool": pd.arrays.BooleanArray,
    "string": lambda values, mask: pd.arrays.StringArray(values),
    TIMESTAMP: lambda values, mask: values.view("datetime64[us]"),  # the fill is NaT
}

"""Served-feature logging: the exact feature vectors that predictions and online reads handed out, sampled.

The skew report compares these with the training distribution. Logging must never fail or slow a request,
so the caller only appends to a bounded in-memory queue (a full queue drops the vector and counts it); a
daemon thread encodes and writes the queue in batches, catches every write error, counts it and carries on.

Where the vectors go (each bounded, oldest dropped first; one module each):
    RedisServedLog    a stream per view, featurestore:served:<view>, XADD with MAXLEN ~ max_length (Redis trims
                      whole stream nodes, so the length may exceed the bound by up to one node, 100 entries);
                      fields: <entity key> (JSON), features (a JSON object), model, version (absent for plain
                      online reads), served_at (ISO 8601, UTC). A client of its own with short timeouts: a log
                      outage never touches the online store.
    SqliteServedLog   the table served_vectors in a given SQLite file (the embedded default), the same fields as
                      columns, trimmed to max_length rows per view after every batch.

`read(view)` returns one row per served vector (the entity key, one column per feature with its value, model,
version, served_at), oldest first.
"""

import json
import math
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, NamedTuple, final

import numpy as np
import pandas as pd

from feature_assets.errors import ConfigError, FeatureStoreError

__all__ = ["GIL_CHUNK", "Record", "ServedLog", "ServedLogError", "ServedLogStats", "records_frame"]


class ServedLogError(FeatureStoreError):
    """The served-feature log could not be read (writes never raise: they are counted)."""


@dataclass(frozen=True)
class ServedLogStats:
    """Vectors written, dropped because the queue was full, lost to failed writes, and waiting in the queue."""

    logged: int
    dropped_full_queue: int
    failed_writes: int
    queued: int
    last_error: str | None


@final  # so `type(item) is _Vector` tells mypy the other items are _Batch
class _Vector(NamedTuple):
    """One served vector as a caller enqueued it: nothing is encoded on the caller's thread."""

    view: str
    entity_key: str
    entity_id: Any
    features: dict[str, Any]
    model: str | None
    version: str | None
    served_at: float  # time.time()


class _Batch(NamedTuple):
    """The vectors of one batch call: the caller's columns and the mask of rows to log (None: every row)."""

    view: str
    entity_key: str
    entity_ids: Sequence[Any]
    columns: Mapping[str, Sequence[Any]]
    selected: np.ndarray | None
    model: str | None
    version: str | None
    served_at: float


class Record(NamedTuple):
    """One vector encoded for storage."""

    view: str
    entity_key: str
    entity_id: str  # JSON
    features: str  # JSON object
    model: str | None
    version: str | None
    served_at: str  # ISO 8601, UTC


def _json_default(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


_dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode


def _served_at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _decoded_column(values: list[Any]) -> Any:
    """A feature column from JSON values with the dtype the registry would give it (nullable, so nulls stay null)."""
    kinds = {type(value) for value in values}
    kinds.discard(type(None))
    if kinds and kinds <= {bool}:
        return pd.array(values, dtype="boolean")
    if kinds and kinds <= {int}:
        return pd.array(values, dtype="Int64")
    if kinds and kinds <= {int, float}:
        return pd.array([None if v is None else float(v) for v in values], dtype="Float64")
    if kinds and kinds <= {str}:
        return pd.array(values, dtype="string")
    return pd.array(values, dtype=object)


def records_frame(records: Sequence[tuple[str, str, str, str | None, str | None, str]]) -> pd.DataFrame:
    """(entity key, entity id JSON, features JSON, model, version, served_at ISO) rows -> the frame `read` returns."""
    if not records:
        return pd.DataFrame({"model": pd.array([], dtype="string"), "version": pd.array([], dtype="string"),
                             "served_at": pd.to_datetime(pd.Series([], dtype=str), utc=True)})  # fmt: skip
    keys, ids, features, models, versions, served = zip(*records)
    documents = list(map(json.loads, features))
    names = list(dict.fromkeys(name for document in documents for name in document))
    data: dict[str, Any] = {}
    for key in dict.fromkeys(keys):  # one entity key per view; several would each get a column
        data[key] = _decoded_column([json.loads(i) if k == key else None for k, i in zip(keys, ids)])
    for name in names:
        data[name] = _decoded_column([document.get(name) for document in documents])
    data["model"] = pd.array(models, dtype="string")
    data["version"] = pd.array(versions, dtype="string")
    data["served_at"] = pd.to_datetime(pd.Series(served, dtype=str), utc=True, format="ISO8601")
    return pd.DataFrame(data)


class ServedLog(ABC):
    """Records served feature vectors off the request path.

    sample_rate (0..1) is the share of vectors kept; a seed makes the choice reproducible (tests). max_length
    bounds what is stored per view; queue_size bounds the vectors waiting in memory. The writer wakes every
    flush_interval seconds (or on flush/close) and writes at most batch_size vectors per round trip; after a
    failed write it waits retry_interval before the next. The counters are exact (a failed batch counts whole).
    """

    def __init__(
        self,
        *,
        sample_rate: float = 1.0,
        seed: int | None = None,
        max_length: int = 100_000,
        queue_size: int = 10_000,
        batch_size: int = 1_000,
        flush_interval: float = 0.1,
        retry_interval: float = 1.0,
    ):
        if not 0.0 <= sample_rate <= 1.0 or math.isnan(sample_rate):
            raise ConfigError(f"the served-log sample rate must be between 0 and 1, not {sample_rate}")
        if max_length < 1 or queue_size < 1 or batch_size < 1:
            raise ConfigError("the served log's max_length, queue_size and batch_size must be positive")
        self.sample_rate = sample_rate
        self.max_length = max_length
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self._random = random.Random(seed).random if seed is not None else random.random
        self._rows_rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._items: deque[_Vector | _Batch] = deque()
        self._queued = 0  # vectors in _items
        self._writing = 0  # vectors taken by the writer and not yet written or failed
        self._logged = self._dropped = self._failed = 0
        self._last_error: str | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"served-log-{type(self).__name__}", daemon=True)
        self._thread.start()

    # --- the caller's side: a random() compare, a lock, an append ---------------------------------------------

    def log(
        self,
        view: str,
        entity_key: str,
        entity_id: Any,
        features: Mapping[str, Any],
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        """Enqueues one served vector (if sampled). Never raises, never blocks on I/O."""
        if self.sample_rate < 1.0 and self._random() >= self.sample_rate:
            return
        vector = _Vector(view, entity_key, entity_id, dict(features), model, version, time.time())
        with self._lock:
            if self._queued >= self.queue_size or self._closed:
                self._dropped += 1
                return
            self._items.append(vector)
            self._queued += 1

    def log_batch(
        self,
        view: str,
        entity_key: str,
        entity_ids: Sequence[Any],
        columns: Mapping[str, Sequence[Any]],
        model: str | None = None,
        version: str | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        """Enqueues the sampled rows of a batch: one list or array per feature, aligned with entity_ids; `rows`, a
        boolean mask, restricts the log to those rows (the entities found). Sequences are kept, not copied: a
        caller must not change them afterwards. Converting them to values happens on the writer thread."""
        selected = rows
        if self.sample_rate < 1.0:
            sampled = self._rows_rng.random(len(entity_ids)) < self.sample_rate
            selected = sampled if selected is None else sampled & selected
        count = len(entity_ids) if selected is None else int(np.count_nonzero(selected))
        if count == 0:
            return
        batch = _Batch(view, entity_key, entity_ids, columns, selected, model, version, time.time())
        with self._lock:
            if self._queued + count > self.queue_size or self._closed:
                self._dropped += count
                return
            self._items.append(batch)
            self._queued += count

    # --- counters, flush, close --------------------------------------------------------------------------------

    def stats(self) -> ServedLogStats:
        with self._lock:
            return ServedLogStats(
                self._logged, self._dropped, self._failed, self._queued + self._writing, self._last_error
            )

    @property
    def logged(self) -> int:
        return self._logged

    @property
    def dropped_full_queue(self) -> int:
        return self._dropped

    @property
    def failed_writes(self) -> int:
        return self._failed

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until every vector enqueued before the call is written or counted as failed; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._queued == 0 and self._writing == 0:
                    return True
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.002)

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued (for at most `timeout` seconds), stops the writer and releases the connection."""
        if self._closed:
            return
        self.flush(timeout)
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        self._close_backend()

    def __enter__(self) -> "ServedLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the writer thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            with self._lock:
                if self._closed and not self._items:
                    return
            # One batch per wake-up unless a full batch waits. Every write reacquires the GIL after its I/O, which
            # preempts a request thread (Python forces the switch after 5 ms); writing whatever trickled in
            # meanwhile, again and again, kept the writer contending all the time (+11% on predict p50, measured).
            while self._drain_once() and self._queued >= self.batch_size:
                pass

    def _drain_once(self) -> bool:
        """Writes up to batch_size vectors; False when the queue is empty."""
        taken: list[_Vector | _Batch] = []
        with self._lock:
            while self._items and self._writing < self.batch_size:
                item = self._items.popleft()
                size = 1 if type(item) is _Vector else _batch_size(item)
                taken.append(item)
                self._writing += size
                self._queued -= size
            count = self._writing
        if not taken:
            return False
        try:
            records = _encode(taken)
            self._write(records)
        except Exception as error:  # a log outage must never reach a caller: count it, back off, carry on
            with self._lock:
                self._failed += count
                self._writing = 0
                self._last_error = f"{type(error).__name__}: {error}"
            self._wake.wait(self.retry_interval)  # a flush or close cuts the back-off short
            return True
        with self._lock:
            self._logged += count
            self._writing = 0
        return True

    @abstractmethod
    def _write(self, records: list[Record]) -> None:
        """Stores one batch (in order) and trims each touched view to max_length; raises on any failure."""

    @abstractmethod
    def _close_backend(self) -> None:
        """Releases the backend's connections."""

    # --- the report's side -------------------------------------------------------------------------------------

    @abstractmethod
    def read(self, view: str, limit: int | None = None) -> pd.DataFrame:
        """The latest `limit` (default: all stored) served vectors of a view, oldest first, one row per vector."""

    @abstractmethod
    def describe(self) -> str:
        """Where the log is, without secrets."""


def _batch_size(batch: _Batch) -> int:
    return len(batch.entity_ids) if batch.selected is None else int(np.count_nonzero(batch.selected))


def _values(column: Sequence[Any], index: np.ndarray | None) -> list[Any]:
    if index is None:
        if type(column) is list:
            return column
        values: list[Any] = np.asarray(column, dtype=object).tolist()
        return values
    values = np.asarray(column, dtype=object)[index].tolist()
    return values


GIL_CHUNK = 16  # vectors encoded between two releases of the GIL


def _encode(items: list[_Vector | _Batch]) -> list[Record]:
    """Encodes on the writer thread, yielding the GIL every GIL_CHUNK vectors: a request thread waiting for it
    would otherwise wait for the whole batch (Python only forces a switch after 5 ms)."""
    records: list[Record] = []
    for item in items:
        if len(records) % GIL_CHUNK == 0:
            time.sleep(0)
        if type(item) is _Vector:
            records.append(
                Record(
                    item.view,
                    item.entity_key,
                    _dumps(item.entity_id),
                    _dumps(item.features),
                    item.model,
                    item.version,
                    _served_at(item.served_at),
                )
            )
            continue
        index = None if item.selected is None else np.flatnonzero(item.selected)
        names = list(item.columns)
        columns = [_values(item.columns[name], index) for name in names]
        served_at = _served_at(item.served_at)
        for entity_id, values in zip(_values(item.entity_ids, index), zip(*columns)):
            if len(records) % GIL_CHUNK == 0:
                time.sleep(0)
            records.append(
                Record(
                    item.view,
                    item.entity_key,
                    _dumps(entity_id),
                    _dumps(dict(zip(names, values))),
                    item.model,
                    item.version,
                    served_at,
                )
            )
    return records

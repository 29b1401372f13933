"""Copies each entity's latest snapshot from the warehouse to the online store, and checks the copy.

The store holds, per entity, its latest snapshot computed within the view's TTL (the rule training applies):
older ones are neither written nor served, and snapshots dated after the current time are ignored.

The sync reads in bounded batches (Warehouse.read_batches: DuckDB chunks, a PostgreSQL server-side cursor, Spark
partitions of a staged table read through Arrow), encodes each batch column by column and streams it to the store,
so memory does not grow with the table. It is incremental: only entities whose latest snapshot is newer than the
watermark of the last completed sync are written. The watermark is recorded only after the last batch is stored:
a sync that dies midway records nothing, and the next run rewrites everything after the old watermark.

A full sync rewrites every entity and deletes those the warehouse no longer has a snapshot for (a deleted
user, once its history is rebuilt). It happens on request, when the store holds no completed sync (first
run, or the record expired with the TTL), after a failed parity check asked for one, when the view's definition
version changed, or when dbt rebuilt an as-of time the store already covered (a backfill after raw data
was corrected): every dbt build of a feature view logs its as-of times in BUILD_LOG.
"""

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from feature_assets.as_of import utc_now
from feature_assets.errors import DataError
from feature_assets.push import compact_pushed, pushed_table
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import PANDAS_DTYPES, TIMESTAMP, encode_batch, encode_entity_id, view_schema
from feature_assets.serving.online_store import OnlineStore, SyncRecord
from feature_assets.serving.reads import MISSING, FeatureReader
from feature_assets.warehouses.base import Warehouse

__all__ = [
    "BUILD_LOG",
    "ParityResult",
    "SyncResult",
    "check_online_parity",
    "iter_latest_snapshots",
    "sync_online_store",
]

DEFAULT_BATCH_ROWS = 20_000
# Written by the dbt macro log_feature_build: one row per view, as-of time and build.
BUILD_LOG = "featurestore_builds"


@dataclass(frozen=True)
class SyncResult:
    mode: str  # "full" or "incremental"
    reason: str
    rows_written: int
    seconds: float
    watermark: datetime | None
    entities_in_store: int
    entities_deleted: int = 0
    pushes_merged: int = 0  # pushes whose files were merged before reading (Spark: a file per push)

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


def _within(view: FeatureView, after: bool, until: bool) -> str:
    """The view's rows with timestamps in (after, until], either bound left out when not given."""
    bounds = [f"{view.timestamp} > ?"] * after + [f"{view.timestamp} <= ?"] * until
    return f"{view.name} where {' and '.join(bounds)}" if bounds else view.name


def _latest_sql(view: FeatureView, after: bool, until: bool, sample: bool, pushed: bool) -> str:
    columns = ", ".join([view.entity_key, view.timestamp, *view.feature_names])
    history = _within(view, after, until)
    if pushed:
        # Pushed rows (push.py) are served from when they are loaded, so `until` (the newest snapshot synced) does not
        # bound them; a snapshot wins a tie.
        later = f" where {view.timestamp} > ?" if after else ""
        history = (
            f"(select {columns}, 0 as pushed from {history} "
            f"union all select {columns}, 1 as pushed from {pushed_table(view)}{later}) as history"
        )
    # Portable SQL (DuckDB and PostgreSQL): no QUALIFY, no DISTINCT ON.
    sql = (
        f"select {columns} from ("
        f"select {columns}, "
        f"row_number() over (partition by {view.entity_key} order by {view.timestamp} desc"
        f"{', pushed' if pushed else ''}) as recency "
        f"from {history}"
        f") as ranked where recency = 1"
    )
    return sql + " order by random() limit ?" if sample else sql


def iter_latest_snapshots(
    warehouse: Warehouse,
    con: Any,
    view: FeatureView,
    *,
    after: datetime | None = None,
    until: datetime | None = None,
    sample: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pd.DataFrame]:
    """Each entity's latest snapshot in (after, until], or pushed row after `after`, for the entities that have one
    there, in frames of about batch_rows rows, typed as the registry declares."""
    pushed = warehouse.table_exists(con, pushed_table(view))
    sql = _latest_sql(view, after is not None, until is not None, sample is not None, pushed)
    params = [value for value in (after, until, after if pushed else None, sample) if value is not None]
    dtypes = {view.timestamp: PANDAS_DTYPES[TIMESTAMP], **{f.name: PANDAS_DTYPES[f.dtype] for f in view.features}}

    def count_entities() -> int:
        within = _within(view, after is not None, until is not None)
        counting = f"select count(distinct {view.entity_key}) as n from {within}"
        return int(warehouse.fetch(con, counting, params)["n"].iat[0])

    # The next batch is read in a thread while the caller works on the last: the warehouse waits on the network or
    # works in C with the GIL released. One read at a time, and the pool's exit (before the batches') waits for the
    # one under way, so the connection is never used by two threads at once, even when the caller stops early.
    with (
        warehouse.read_batches(
            con,
            sql,
            params,
            name=f"featurestore_sync_{view.name}_{random.getrandbits(32):08x}",
            columns=[view.entity_key, view.timestamp, *view.feature_names],
            dtypes=dtypes,
            batch_rows=batch_rows,
            count_rows=None if sample is not None else count_entities,
        ) as batches,
        ThreadPoolExecutor(1, thread_name_prefix="warehouse-read") as pool,
    ):
        pending = pool.submit(next, batches, None)
        while (frame := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield frame


def _newest_snapshot(warehouse: Warehouse, con: Any, view: FeatureView, now: datetime) -> datetime | None:
    """The newest as-of time up to now: a snapshot dated in the future is never synced nor a watermark."""
    if not warehouse.table_exists(con, view.name):
        raise DataError(f"the warehouse has no table {view.name} yet; materialize it before syncing")
    return _moment(warehouse, con, f"select max({view.timestamp}) from {view.name} where {view.timestamp} <= ?", [now])


def _newest_build(warehouse: Warehouse, con: Any, view: FeatureView) -> datetime | None:
    """When dbt last built an as-of time of the view (None before the first logged build)."""
    if not warehouse.table_exists(con, BUILD_LOG):
        return None
    return _moment(warehouse, con, f"select max(built_at) from {BUILD_LOG} where view_name = ?", [view.name])


def _rebuilt_since(warehouse: Warehouse, con: Any, view: FeatureView, record: SyncRecord) -> datetime | None:
    """The earliest as-of time the last sync covered (at or before its watermark) that dbt rebuilt after it."""
    if record.built_through is None or record.watermark is None or not warehouse.table_exists(con, BUILD_LOG):
        return None
    return _moment(
        warehouse,
        con,
        f"select min(computed_at) from {BUILD_LOG} where view_name = ? and built_at > ? and computed_at <= ?",
        [view.name, record.built_through, record.watermark],
    )


def _moment(warehouse: Warehouse, con: Any, sql: str, params: list) -> datetime | None:
    """The one time a query selects, or None when it selects null (an empty table)."""
    value = warehouse.fetch(con, sql, params).iat[0, 0]
    return None if pd.isna(value) else pd.Timestamp(value).to_pydatetime()


def _in_background(function: Callable, *args: Any) -> Future:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-sync")
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)
    return future


def sync_online_store(
    warehouse: Warehouse,
    store: OnlineStore,
    view: FeatureView,
    *,
    full_resync: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_batch: Callable[[int], None] | None = None,
) -> SyncResult:
    """Writes the latest snapshot of every changed entity; on_batch(rows so far) is called after each batch."""
    started = time.perf_counter()
    now = utc_now()
    previous = store.last_sync(view)
    schema = view_schema(view)
    rows = deleted = 0
    with warehouse.connect() as con:
        merged = compact_pushed(warehouse, con, view)
        newest = _newest_snapshot(warehouse, con, view, now)
        built = _newest_build(warehouse, con, view)
        rebuilt = None if previous is None else _rebuilt_since(warehouse, con, view, previous)
        if full_resync:
            mode, reason = "full", "full resync requested"
        elif previous is None:
            mode, reason = "full", "the store holds no completed sync"
        elif previous.version != view.version:
            mode, reason = "full", f"the definition changed (version {previous.version} -> {view.version})"
        elif previous.full_sync_due:
            mode, reason = "full", f"a full sync was requested: {previous.full_sync_due}"
        elif rebuilt is not None:
            mode, reason = "full", f"as-of times from {rebuilt} were rebuilt after the last sync"
        else:
            mode, reason = "incremental", f"snapshots after {previous.watermark}"
        oldest_served = now - view.online_ttl
        after = (
            max(previous.watermark, oldest_served)
            if mode == "incremental" and previous is not None and previous.watermark
            else oldest_served
        )
        written: set[bytes] = set()
        # A full sync deletes the entities the store held before it and did not write; listing them (a scan of
        # the store) runs while the sync writes.
        held_before = _in_background(store.entity_ids, view) if mode == "full" else None
        if newest is not None and newest > after:
            # A schema change leaves fields of the old schema behind unless each hash is replaced whole.
            with store.writer(view, replace=previous is not None and previous.schema != schema) as writer:
                for frame in iter_latest_snapshots(
                    warehouse, con, view, after=after, until=newest, batch_rows=batch_rows
                ):
                    batch = encode_batch(view, frame)
                    writer.write(batch)
                    if mode == "full":
                        written.update(batch.entity_ids)
                    rows += len(frame)
                    if on_batch is not None:
                        on_batch(rows)
    if held_before is not None:
        # Entities the warehouse no longer has a current snapshot for (deleted, or rebuilt away).
        gone = held_before.result() - written
        store.delete(view, gone)
        deleted = len(gone)
    watermark = newest if newest is not None else (previous.watermark if previous else None)
    definitions = tuple((f.name, f.definition_checksum) for f in view.features)
    store.record_sync(
        view, SyncRecord(view.version, schema, definitions, watermark, utc_now(), rows, mode == "full", built)
    )
    seconds = time.perf_counter() - started  # the count below scans the store; it is not part of the sync
    return SyncResult(mode, reason, rows, seconds, watermark, store.count_entities(view), deleted, merged)


@dataclass(frozen=True)
class ParityResult:
    entities_checked: int
    mismatched_entities: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None and self.mismatched_entities == 0

    def summary(self, view: FeatureView) -> str:
        """One line naming what differs, for the check's description and the CLI."""
        if self.problem:
            return self.problem
        if self.passed:
            return f"all {self.entities_checked} {view.entity} entities match the warehouse"
        named = sorted({str(example["entity"]) for example in self.examples})
        more = "" if len(named) >= self.mismatched_entities else ", ..."
        return (
            f"{self.mismatched_entities} of {self.entities_checked} {view.entity} entities differ from the warehouse "
            f"({view.entity_key} {', '.join(named)}{more}); a full sync repairs them"
        )


def _display(value: Any) -> Any:
    return None if value is pd.NA or value is pd.NaT else value


def check_online_parity(
    warehouse: Warehouse,
    store: OnlineStore,
    view: FeatureView,
    *,
    sample: int | None = None,
    batch_rows: int = 20_000,
    max_examples: int = 10,
) -> ParityResult:
    """Compares, after typed decoding, the online values with the offline latest snapshot (within the TTL) that
    the last completed sync covered (snapshots newer than its watermark are the next sync's job). Every entity
    is compared, and entities only the store holds count as mismatches; or a random sample of `sample`
    offline entities."""
    try:
        reader = FeatureReader(store, view)
    except DataError as error:
        return ParityResult(0, 0, problem=str(error))
    record = store.last_sync(view)
    if record is None:
        return ParityResult(0, 0, problem=f"{store.describe()} has no completed sync of {view.name}")
    checked = mismatched = 0
    examples: list[dict[str, Any]] = []
    fields = [(name, PANDAS_DTYPES[dtype]) for name, dtype in view_schema(view)]
    offline_ids: set[bytes] = set()
    oldest_served = utc_now() - view.online_ttl
    with warehouse.connect() as con:
        if record.watermark is None:
            return ParityResult(0, 0)
        for offline in iter_latest_snapshots(
            warehouse, con, view, after=oldest_served, until=record.watermark, sample=sample, batch_rows=batch_rows
        ):
            ids = offline[view.entity_key].tolist()
            if sample is None:
                offline_ids.update(map(encode_entity_id, ids))
            online = reader.get_online_features(ids)
            bad = online[MISSING].to_numpy().copy()
            differs = {}
            typed = {name: offline[name].astype(dtype).reset_index(drop=True) for name, dtype in fields}
            for name, _ in fields:
                left, right = typed[name], online[name]
                same = (left == right).fillna(False).to_numpy(dtype=bool) | (left.isna() & right.isna()).to_numpy()
                differs[name] = ~same
                bad |= ~same
            checked += len(ids)
            mismatched += int(bad.sum())
            for row in bad.nonzero()[0]:
                if len(examples) >= max_examples:
                    break
                if online[MISSING].iat[row]:
                    examples.append(
                        {"entity": ids[row], "feature": "*", "offline": "(a snapshot)", "online": "missing"}
                    )
                    continue
                for name, _ in fields:
                    if differs[name][row] and len(examples) < max_examples:
                        examples.append(
                            {
                                "entity": ids[row],
                                "feature": name,
                                "offline": _display(typed[name].iat[row]),
                                "online": _display(online[name].iat[row]),
                            }
                        )
    if sample is None:
        extra = sorted(store.entity_ids(view) - offline_ids)
        checked += len(extra)
        mismatched += len(extra)
        for entity_id in extra[: max(0, max_examples - len(examples))]:
            examples.append(
                {"entity": entity_id.decode(), "feature": "*", "offline": "(none in the TTL)", "online": "(a snapshot)"}
            )
    return ParityResult(checked, mismatched, examples)

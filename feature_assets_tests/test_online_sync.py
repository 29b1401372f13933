"""The sync from the warehouse's user_features to the online stores: incremental, bounded, and safe when it dies."""

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
import redis
from conftest import wait_until
from redis_servers import start_restartable_redis

from feature_assets.errors import OnlineStoreError
from feature_assets.online_sync import check_online_parity, sync_online_store
from feature_assets.registry import load_registry
from feature_assets.serving import FeatureReader, RedisOnlineStore, SqliteOnlineStore, SyncRecord
from feature_assets.serving.codec import PANDAS_DTYPES, view_schema
from feature_assets.settings import dbt_manifest_path
from feature_assets.warehouses import PostgresWarehouse, Warehouse

VIEW = load_registry(dbt_manifest_path()).view("user_features")
DEFINITIONS = tuple((f.name, f.definition_checksum) for f in VIEW.features)
# Two recent as-of times: snapshots older than the view's TTL are neither synced nor served.
T2 = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
T1 = T2 - timedelta(days=1)
COLUMNS = {VIEW.entity_key: "bigint", VIEW.timestamp: "timestamp", **{f.name: f.data_type for f in VIEW.features}}


def snapshot(user_ids, as_of: datetime, shift: int) -> pd.DataFrame:
    """Deterministic snapshots; two shifts differ in every field of every user (nulls included)."""
    users = np.asarray(user_ids, dtype=np.int64)
    k = users + shift
    return pd.DataFrame(
        {
            "user_id": users,
            "computed_at": np.full(len(users), np.datetime64(as_of, "us")),
            "age": 20 + users % 50 + shift,
            "country": pd.array(np.array(["US", "DE", "FR"], dtype=object)[k % 3], dtype="str"),
            "plan": pd.array(np.array(["free", "basic", "pro"], dtype=object)[k % 3], dtype="str"),
            "events_30d": users % 97 + shift,
            "avg_order_30d": np.where(k % 4 == 0, np.nan, (users * 1.37 + shift) / 3),
        }
    )


def append(warehouse: Warehouse, frame: pd.DataFrame) -> None:
    with warehouse.connect() as con:
        warehouse.append(con, "user_features", frame, COLUMNS)


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({name: PANDAS_DTYPES[dtype] for name, dtype in view_schema(VIEW)}).reset_index(drop=True)


def matches(online: pd.DataFrame, expected: pd.DataFrame) -> np.ndarray:
    """Per row: every stored field equals the expected snapshot exactly (null equal to null)."""
    same = np.ones(len(online), dtype=bool)
    for name, _ in view_schema(VIEW):
        left, right = online[name].reset_index(drop=True), expected[name]
        same &= (left == right).fillna(False).to_numpy(dtype=bool) | (left.isna() & right.isna()).to_numpy()
    return same


def test_incremental_sync_writes_only_users_with_a_newer_snapshot_and_a_full_resync_rewrites_all(
    duckdb_warehouse, online_store
):
    users = np.arange(1, 61)
    append(duckdb_warehouse, snapshot(users, T1, 0))
    first = sync_online_store(duckdb_warehouse, online_store, VIEW)
    assert (first.mode, first.rows_written, first.entities_in_store, first.watermark) == ("full", 60, 60, T1)

    append(duckdb_warehouse, snapshot(users[:10], T2, 1))
    second = sync_online_store(duckdb_warehouse, online_store, VIEW)
    assert (second.mode, second.rows_written, second.watermark) == ("incremental", 10, T2)
    reader = FeatureReader(online_store, VIEW)
    online = reader.get_online_features(users)
    expected = typed(pd.concat([snapshot(users[:10], T2, 1), snapshot(users[10:], T1, 0)]))
    assert matches(online, expected).all()

    # A user without a newer snapshot is not rewritten: a value altered by hand survives the next sync...
    if isinstance(online_store, RedisOnlineStore):
        online_store.client.hset("features:user:30", "age", "7")
    else:
        online_store._connect().execute("update online_user_features set age = '7' where entity_id = '30'")
    assert sync_online_store(duckdb_warehouse, online_store, VIEW).rows_written == 0
    assert reader.get_entity(30)["age"] == 7

    # ...until a full resync rewrites everyone, to the same result.
    full = sync_online_store(duckdb_warehouse, online_store, VIEW, full_resync=True)
    assert (full.mode, full.rows_written) == ("full", 60)
    pd.testing.assert_frame_equal(reader.get_online_features(users), online)


def test_a_sync_reads_the_warehouse_in_bounded_batches(duckdb_warehouse, online_store):
    append(duckdb_warehouse, snapshot(np.arange(1, 7001), T1, 0))
    progress = []
    result = sync_online_store(duckdb_warehouse, online_store, VIEW, batch_rows=2048, on_batch=progress.append)
    assert result.rows_written == 7000
    assert len(progress) >= 4 and progress[-1] == 7000
    assert max(np.diff([0, *progress])) <= 2048


def test_a_new_definition_version_forces_a_full_resync_and_a_new_schema_drops_old_fields(
    duckdb_warehouse, redis_client
):
    store = RedisOnlineStore(redis_client)
    append(duckdb_warehouse, snapshot(np.arange(1, 21), T1, 0))
    sync_online_store(duckdb_warehouse, store, VIEW)

    store.record_sync(VIEW, SyncRecord("stale", view_schema(VIEW), DEFINITIONS, T1, T1, 20, False))
    result = sync_online_store(duckdb_warehouse, store, VIEW)
    assert (result.mode, result.rows_written) == ("full", 20)
    assert "version" in result.reason

    redis_client.hset("features:user:3", "retired_feature", "1")
    store.record_sync(
        VIEW,
        SyncRecord(VIEW.version, (*view_schema(VIEW), ("retired_feature", "int64")), DEFINITIONS, T1, T1, 20, False),
    )
    sync_online_store(duckdb_warehouse, store, VIEW, full_resync=True)
    assert sorted(redis_client.hkeys("features:user:3")) == sorted(name.encode() for name, _ in view_schema(VIEW))
    assert redis_client.pttl("features:user:3") > 0
    assert matches(FeatureReader(store, VIEW).get_online_features([3]), typed(snapshot([3], T1, 0))).all()


def test_a_postgres_warehouse_syncs_through_a_server_side_cursor(postgres_warehouse, redis_client):
    users = np.arange(1, 3001)
    append(postgres_warehouse, snapshot(users, T1, 0))
    append(postgres_warehouse, snapshot(users[:500], T2, 1))
    store = RedisOnlineStore(redis_client)
    progress = []
    result = sync_online_store(postgres_warehouse, store, VIEW, batch_rows=1000, on_batch=progress.append)
    assert (result.rows_written, progress) == (3000, [1000, 2000, 3000])
    expected = typed(pd.concat([snapshot(users[:500], T2, 1), snapshot(users[500:], T1, 0)]))
    assert matches(FeatureReader(store, VIEW).get_online_features(users), expected).all()
    assert check_online_parity(postgres_warehouse, store, VIEW).passed


def test_the_parity_check_fails_on_a_value_altered_by_hand_and_names_it(duckdb_warehouse, redis_client):
    store = RedisOnlineStore(redis_client)
    append(duckdb_warehouse, snapshot(np.arange(1, 101), T1, 0))
    sync_online_store(duckdb_warehouse, store, VIEW)
    assert check_online_parity(duckdb_warehouse, store, VIEW).passed

    offline_age = int(snapshot([7], T1, 0)["age"].iloc[0])
    redis_client.hset("features:user:7", "age", str(offline_age + 1))
    redis_client.delete("features:user:8")
    parity = check_online_parity(duckdb_warehouse, store, VIEW)
    assert not parity.passed
    assert (parity.entities_checked, parity.mismatched_entities) == (100, 2)
    assert {"entity": 7, "feature": "age", "offline": offline_age, "online": offline_age + 1} in parity.examples
    assert {"entity": 8, "feature": "*", "offline": "(a snapshot)", "online": "missing"} in parity.examples

    sample = check_online_parity(duckdb_warehouse, store, VIEW, sample=10)
    assert sample.entities_checked == 10


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own that persists every write, to kill and start again on its port."""
    server = start_restartable_redis(tmp_path)
    yield server
    server.stop()


def assert_each_user_holds_one_whole_snapshot(store, users) -> int:
    online = FeatureReader(store, VIEW).get_online_features(users)
    assert not online["_missing"].any()
    old, new = matches(online, typed(snapshot(users, T1, 0))), matches(online, typed(snapshot(users, T2, 1)))
    assert (old | new).all(), "a user holds fields of two snapshots"
    return int(new.sum())


def test_a_sync_killed_with_redis_keeps_old_values_whole_records_nothing_and_the_next_sync_completes(
    duckdb_warehouse, own_redis
):
    users = np.arange(1, 60_001)
    append(duckdb_warehouse, snapshot(users, T1, 0))
    store = RedisOnlineStore.from_url(own_redis.url)
    sync_online_store(duckdb_warehouse, store, VIEW)
    append(duckdb_warehouse, snapshot(users, T2, 1))
    probe = redis.Redis.from_url(own_redis.url)

    def kill_midway(rows: int) -> None:
        if rows >= 15_000 and own_redis.process.running():
            # Wait until Redis has applied part of the new snapshot, then kill it (SIGKILL).
            hsets = len(users) + 2_000
            wait_until(
                lambda: probe.info("commandstats")["cmdstat_hset"]["calls"] >= hsets, f"Redis applying {hsets} HSETs"
            )
            own_redis.kill()

    with pytest.raises(OnlineStoreError, match="earlier values stay readable"):
        sync_online_store(duckdb_warehouse, store, VIEW, batch_rows=5000, on_batch=kill_midway)
    own_redis.restart()

    store = RedisOnlineStore.from_url(own_redis.url)
    assert store.last_sync(VIEW).watermark == T1
    updated = assert_each_user_holds_one_whole_snapshot(store, users)
    assert 0 < updated < len(users)
    assert all(ttl > 0 for ttl in (store.client.pttl(f"features:user:{u}") for u in users[::997]))

    resumed = sync_online_store(duckdb_warehouse, store, VIEW)
    assert (resumed.mode, resumed.rows_written, resumed.watermark) == ("incremental", len(users), T2)
    assert assert_each_user_holds_one_whole_snapshot(store, users) == len(users)
    assert store.last_sync(VIEW).watermark == T2


def test_a_sync_whose_warehouse_connection_dies_keeps_old_values_and_the_next_sync_completes(
    postgres_warehouse, postgres_url, redis_client
):
    application = f"fs_online_{uuid.uuid4().hex[:8]}"
    warehouse = PostgresWarehouse(f"{postgres_url}?application_name={application}", postgres_warehouse.schema_name)
    users = np.arange(1, 10_001)
    append(warehouse, snapshot(users, T1, 0))
    store = RedisOnlineStore(redis_client)
    sync_online_store(warehouse, store, VIEW)
    append(warehouse, snapshot(users, T2, 1))

    def terminate_warehouse_connection(rows: int) -> None:
        if rows == 4000:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s", (application,)
                )

    with pytest.raises(psycopg.Error):
        sync_online_store(warehouse, store, VIEW, batch_rows=2000, on_batch=terminate_warehouse_connection)

    assert store.last_sync(VIEW).watermark == T1
    assert assert_each_user_holds_one_whole_snapshot(store, users) <= 6000
    resumed = sync_online_store(warehouse, store, VIEW)
    assert (resumed.rows_written, resumed.watermark) == (len(users), T2)
    assert assert_each_user_holds_one_whole_snapshot(store, users) == len(users)


def test_sqlite_and_redis_hold_the_same_values_after_the_same_sync(duckdb_warehouse, redis_client, tmp_path):
    users = np.arange(1, 301)
    append(duckdb_warehouse, snapshot(users, T1, 0))
    append(duckdb_warehouse, snapshot(users[::3], T2, 1))
    frames = []
    for store in (RedisOnlineStore(redis_client), SqliteOnlineStore(tmp_path / "online.sqlite")):
        sync_online_store(duckdb_warehouse, store, VIEW)
        frames.append(FeatureReader(store, VIEW).get_online_features(users))
    pd.testing.assert_frame_equal(*frames)


def test_a_write_that_redis_refuses_fails_the_sync_naming_the_reason_and_records_nothing(
    duckdb_warehouse, redis_client
):
    append(duckdb_warehouse, snapshot(np.arange(1, 2001), T1, 0))
    redis_client.set("features:user:1500", "not a hash")
    store = RedisOnlineStore(redis_client)
    with pytest.raises(OnlineStoreError, match="WRONGTYPE"):
        sync_online_store(duckdb_warehouse, store, VIEW, batch_rows=500)
    assert store.last_sync(VIEW) is None


def test_a_backfill_after_raw_data_was_corrected_reaches_the_online_store_and_deleted_users_leave_it(
    duckdb_warehouse, tmp_path
):
    """Re-running as-of times the store already holds (the watermark does not move) still rewrites it: dbt logs
    each build of an as-of time, and the sync goes full when one it covered was rebuilt."""
    from conftest import ANCHOR, materialize, write_raw

    from feature_assets.demo_data import DemoDataSpec, generate

    write_raw(
        duckdb_warehouse, generate(DemoDataSpec(users=60, days=40, origin=ANCHOR - timedelta(days=40)), None, ANCHOR)
    )
    as_of = {"as_of_start": str(ANCHOR - timedelta(days=1)), "as_of_end": str(ANCHOR)}
    assert materialize(duckdb_warehouse, as_of=as_of).success
    store = SqliteOnlineStore(tmp_path / "online.sqlite")
    assert sync_online_store(duckdb_warehouse, store, VIEW).mode == "full"
    assert sync_online_store(duckdb_warehouse, store, VIEW).rows_written == 0  # nothing new
    deleted, corrected = 7, 8
    assert {b"7", b"8"} <= store.entity_ids(VIEW)

    with duckdb_warehouse.connect() as con:  # a user deleted, another's orders corrected, in the raw data
        for table in ("raw_users", "raw_profile_changes", "raw_events", "raw_orders"):
            con.execute(f"delete from {table} where user_id = ?", [deleted])
        con.execute("update raw_orders set amount = amount + 1000 where user_id = ?", [corrected])
    assert materialize(duckdb_warehouse, as_of=as_of).success  # the same as-of times, rebuilt

    result = sync_online_store(duckdb_warehouse, store, VIEW)
    assert result.mode == "full" and "rebuilt" in result.reason
    assert b"7" not in store.entity_ids(VIEW) and result.entities_deleted == 1
    assert check_online_parity(duckdb_warehouse, store, VIEW).passed
    assert (
        sync_online_store(duckdb_warehouse, store, VIEW).mode == "incremental"
    )  # the rebuild is taken into account once
    store.close()


def test_a_snapshot_dated_in_the_future_is_neither_synced_nor_the_watermark(duckdb_warehouse, online_store):
    users = np.arange(1, 21)
    append(duckdb_warehouse, snapshot(users, T1, 0))
    append(duckdb_warehouse, snapshot(users[:1], datetime(2099, 1, 1), 5))  # a mistaken as-of time
    first = sync_online_store(duckdb_warehouse, online_store, VIEW)
    assert first.watermark == T1 and first.rows_written == 20
    append(duckdb_warehouse, snapshot(users[:5], T2, 1))  # the next real snapshot is not skipped
    second = sync_online_store(duckdb_warehouse, online_store, VIEW)
    assert (second.watermark, second.rows_written) == (T2, 5)
    online = FeatureReader(online_store, VIEW).get_online_features(users)
    assert online["computed_at"].tolist() == [T2] * 5 + [T1] * 15

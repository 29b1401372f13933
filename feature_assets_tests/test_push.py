"""Pushing fresh features between syncs: served at once, never replaced by an older push or sync, in the warehouse's
history exactly when serving could have seen it, on SQLite, Redis and a Redis Cluster; refused whole when a row does
not fit the view's contract; whole per entity and repaired by a retry when Redis dies mid-push."""

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from conftest import empty_redis_store
from redis_servers import start_restartable_redis
from starlette.testclient import TestClient
from test_training import (
    FEATURE_SET,
    HOUR,
    USERS,
    _country_history,
    _labels,
    _load,
    _normalized,
    _reference,
    _user_history,
)

from feature_assets.errors import InvalidEntity, InvalidRow, OnlineStoreError
from feature_assets.leakage import check_leakage
from feature_assets.online_sync import check_online_parity, sync_online_store
from feature_assets.push import pushed_column_types, pushed_table
from feature_assets.registry import load_registry
from feature_assets.serving import FeatureReader, RedisOnlineStore
from feature_assets.serving.server import create_app
from feature_assets.settings import Settings, dbt_manifest_path
from feature_assets.store import FeatureStore
from feature_assets.training import build_table, point_in_time_sql
from feature_assets.warehouses import Warehouse

REGISTRY = load_registry(dbt_manifest_path())
VIEW = REGISTRY.view("user_features")
COLUMNS = {VIEW.entity_key: "bigint", VIEW.timestamp: "timestamp", **{f.name: f.data_type for f in VIEW.features}}


def hour() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)


def snapshot(user_ids, as_of: datetime, events: int) -> pd.DataFrame:
    users = np.asarray(user_ids, dtype=np.int64)
    return pd.DataFrame({
        "user_id": users, "computed_at": np.full(len(users), np.datetime64(as_of, "us")), "age": 30 + users % 7,
        "country": "DE", "plan": "basic", "events_30d": np.full(len(users), events), "avg_order_30d": users / 4,
    })  # fmt: skip


def row(user_id: object, at: datetime, events: object, **changes) -> dict:
    return {"user_id": user_id, "computed_at": at.isoformat() + "Z", "age": 41, "country": "FR",
            "plan": "pro", "events_30d": events, "avg_order_30d": 12.5, **changes}  # fmt: skip


def append(warehouse: Warehouse, frame: pd.DataFrame) -> None:
    with warehouse.connect() as con:
        warehouse.append(con, "user_features", frame, COLUMNS)


def events(store, user_ids) -> list:
    online = FeatureReader(store, VIEW).get_online_features(list(user_ids))
    return [None if missing else int(value) for missing, value in zip(online["_missing"], online["events_30d"])]


def pushed_rows(warehouse: Warehouse) -> pd.DataFrame:
    with warehouse.connect() as con:
        if not warehouse.table_exists(con, pushed_table(VIEW)):
            return pd.DataFrame()
        return warehouse.fetch(con, f"select * from {pushed_table(VIEW)} order by user_id, computed_at")


def test_a_pushed_value_is_served_at_once_kept_over_older_pushes_and_syncs_and_parity_passes(
    duckdb_warehouse, online_store
):
    synced = hour() - timedelta(hours=2)
    append(duckdb_warehouse, snapshot(range(1, 11), synced, events=1))
    sync_online_store(duckdb_warehouse, online_store, VIEW)
    store = FeatureStore(registry=REGISTRY, warehouse=duckdb_warehouse, online_store=online_store)

    fresh = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    result = store.push("user_features", [row(3, fresh, 100), row(4, fresh, 200)])
    assert (result.rows, result.written) == (2, 2)
    assert events(online_store, [3, 4, 5]) == [100, 200, 1]  # served at once; the others keep their snapshot
    served = store.online_features("user_features:*", [{"user_id": 3}])
    assert (served["plan"].iat[0], served["user_features__computed_at"].iat[0]) == ("pro", pd.Timestamp(fresh))

    older = store.push("user_features", [row(3, fresh - timedelta(minutes=1), 7)])
    replayed = store.push("user_features", [row(4, fresh, 999)])  # the same key and computed_at: the first is kept
    assert (older.written, replayed.written) == (0, 0)
    assert events(online_store, [3, 4]) == [100, 200]

    # A sync, full or incremental, of an older snapshot keeps the pushed values; a newer snapshot replaces them.
    append(duckdb_warehouse, snapshot(range(1, 11), synced + timedelta(hours=1), events=2))
    sync_online_store(duckdb_warehouse, online_store, VIEW)
    assert events(online_store, [3, 4, 5]) == [100, 200, 2]
    sync_online_store(duckdb_warehouse, online_store, VIEW, full_resync=True)
    assert events(online_store, [3, 4, 5]) == [100, 200, 2]
    parity = check_online_parity(duckdb_warehouse, online_store, VIEW)
    assert parity.passed, parity.summary(VIEW)

    history = pushed_rows(duckdb_warehouse)
    assert history[["user_id", "events_30d"]].values.tolist() == [[3, 7], [3, 100], [4, 200]]
    assert (history["loaded_at"] >= history["computed_at"]).all()


def test_a_training_row_sees_a_pushed_value_only_once_it_was_computed_and_loaded(warehouse, request, tmp_path):
    warehouse_under_test: Warehouse = request.getfixturevalue(f"{warehouse}_warehouse")
    from feature_assets.serving import SqliteOnlineStore

    synced = hour() - timedelta(hours=3)
    append(warehouse_under_test, snapshot([1, 2], synced, events=1))
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=warehouse_under_test, online_store=online)
    computed = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)  # computed an hour ago, loaded now
    odd = 'a "quoted" \\ back, {braced} NULL é'  # text the warehouse must keep exactly
    store.push("user_features", [row(1, computed, 50, country=odd, avg_order_30d=None)])
    loaded = pushed_rows(warehouse_under_test)["loaded_at"].iat[0]
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=1)
    labels = pd.DataFrame({
        "user_id": [1, 1, 1, 2],
        "label_time": [computed - timedelta(minutes=1), computed + timedelta(minutes=1), later, later],
    })  # fmt: skip
    frame = store.historical_features(labels, "user_features:*")
    # Before computed_at and before it was loaded: the snapshot; after both: the pushed row; another user: its own.
    assert frame["events_30d"].tolist() == [1, 1, 50, 1]
    assert frame["country"].iat[2] == odd and frame["avg_order_30d"].isna().tolist() == [False, False, True, False]
    assert frame["user_features__computed_at"].tolist()[2] == pd.Timestamp(computed)
    assert loaded > computed
    online.close()


@pytest.fixture(params=["duckdb", "postgres", "spark"])
def warehouse(request) -> str:
    return request.param


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        (lambda t: [row(1, t, 5, avg_order_30d=float("inf"))], InvalidRow, "row 1: user_features.avg_order_30d is inf"),
        (
            lambda t: [row(1, t, 5), row(2, t, 5, avg_order_30d=float("nan"))],
            InvalidRow,
            "row 2: user_features.avg_order_30d is nan, not a finite number",
        ),
        (lambda t: [row(1, t, "5")], InvalidRow, "user_features.events_30d is '5', not an integer"),
        (lambda t: [row(1, t, 5, plan=3)], InvalidRow, "user_features.plan is 3, not text"),
        (lambda t: [row(1, t, 5, age=True)], InvalidRow, "user_features.age is True"),
        (lambda t: [row(1, t, 5, churned=True)], InvalidRow, "user_features has no feature 'churned'"),
        (lambda t: [{k: v for k, v in row(1, t, 5).items() if k != "plan"}], InvalidRow, "row 1 has no plan"),
        (lambda t: [{k: v for k, v in row(1, t, 5).items() if k != "user_id"}], InvalidRow, "row 1 has no user_id"),
        (lambda t: [row(1, t, 5), row(2, t, 5, computed_at=None)], InvalidRow, "row 2: no computed_at"),
        (lambda t: [row(1, t, 5, computed_at="yesterday")], InvalidRow, "'yesterday' is not an ISO 8601 time"),
        (lambda t: [row(1, t + timedelta(hours=2), 5)], InvalidRow, "is after the current time"),
        (lambda t: [row("x1", t, 5)], InvalidEntity, "row 1: user_id 'x1' is not a bigint"),
    ],
)
def test_a_row_that_breaks_the_contract_is_refused_by_name_and_nothing_is_written(
    duckdb_warehouse, tmp_path, rows, error, message
):
    from feature_assets.serving import SqliteOnlineStore

    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=duckdb_warehouse, online_store=online)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        store.push("user_features", [row(9, hour(), 5), *rows(hour())])  # a good row first: it is not written either
    assert pushed_rows(duckdb_warehouse).empty
    assert events(online, [9]) == [None]
    online.close()


@pytest.mark.parametrize(
    ("drop", "message"),
    [("plan", "the rows have no feature plan"), ("computed_at", "the rows have no column computed_at")],
)
def test_a_frame_without_a_feature_or_the_time_is_refused(duckdb_warehouse, tmp_path, drop, message):
    from feature_assets.serving import SqliteOnlineStore

    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=duckdb_warehouse, online_store=online)
    with pytest.raises(InvalidRow, match=message):
        store.push("user_features", snapshot([5], hour(), events=8).drop(columns=[drop]))
    assert pushed_rows(duckdb_warehouse).empty
    online.close()


def test_a_frame_pushes_like_rows(duckdb_warehouse, tmp_path):
    from feature_assets.serving import SqliteOnlineStore

    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=duckdb_warehouse, online_store=online)
    frame = snapshot([5, 6], hour(), events=8).astype({"events_30d": "Int64", "avg_order_30d": "Float64"})
    frame.loc[1, "avg_order_30d"] = pd.NA  # a null feature is pushed as null
    assert store.push("user_features", frame).written == 2
    served = store.online_features("user_features:*", [{"user_id": 5}, {"user_id": 6}])
    assert served["events_30d"].tolist() == [8, 8] and served["avg_order_30d"].isna().tolist() == [False, True]
    online.close()


def test_push_over_http_answers_what_was_written_and_refuses_a_bad_row_as_400(
    duckdb_warehouse, redis_client, tmp_path, monkeypatch
):
    from conftest import REDIS_URL

    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    monkeypatch.setenv("FEATURE_STORE_ONLINE", "redis")
    monkeypatch.setenv("FEATURE_STORE_REDIS_URL", REDIS_URL)
    settings = Settings.from_env()
    append_to = settings.duckdb_path
    from feature_assets.warehouses import DuckDBWarehouse

    append(DuckDBWarehouse(append_to), snapshot([1], hour() - timedelta(hours=1), events=1))
    fresh = datetime.now(UTC).replace(tzinfo=None)
    with TestClient(create_app(settings, REGISTRY)) as client:
        answer = client.post("/v1/push/user_features", json={"rows": [row(1, fresh, 70), row(2, fresh, 80)]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"view": "user_features", "rows": 2, "written": 2, "kept": 0}
        features = client.post("/v1/features/user_features", json={"entities": [{"user_id": 1}, {"user_id": 2}]})
        assert [entity["features"]["events_30d"] for entity in features.json()["entities"]] == [70, 80]
        refused = client.post("/v1/push/user_features", json={"rows": [row(3, fresh, 1, avg_order_30d=None, age=1.5)]})
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "row 0: user_features.age is 1.5, not an integer within int64 (int64)",
            "cause": "invalid_row",
        }
        unknown = client.post("/v1/push/no_such_view", json={"rows": [row(3, fresh, 1)]})
        assert (unknown.status_code, unknown.json()["cause"]) == (404, "unknown_view")


def test_a_push_cut_by_a_killed_redis_leaves_entities_whole_and_a_retry_makes_both_stores_agree(
    duckdb_warehouse, tmp_path
):
    synced = hour() - timedelta(hours=2)
    users = list(range(1, 10_001))
    append(duckdb_warehouse, snapshot(users, synced, events=1))
    server = start_restartable_redis(tmp_path / "redis")  # every write fsynced: slow enough to be cut mid-batch
    try:
        online = RedisOnlineStore.from_url(server.url, timeout=2.0)
        sync_online_store(duckdb_warehouse, online, VIEW)
        store = FeatureStore(registry=REGISTRY, warehouse=duckdb_warehouse, online_store=online)
        fresh = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
        batches = [[row(user, fresh, 2) for user in users[start : start + 500]] for start in range(0, 10_000, 500)]
        failures: list[Exception] = []
        first_done = threading.Event()

        def push_all() -> None:
            for batch in batches:
                try:
                    store.push("user_features", batch)
                except OnlineStoreError as error:
                    failures.append(error)
                first_done.set()

        pusher = threading.Thread(target=push_all)
        pusher.start()
        assert first_done.wait(60)
        server.kill()
        pusher.join(120)
        assert failures, "the kill came after the last push"
        assert "a retry of the push completes it" in str(failures[0]) or server.url.split("@")[-1] in str(failures[0])
        server.restart()
        # Whatever reached Redis is whole: each entity is its old snapshot or its pushed row, never a mix.
        online_now = FeatureReader(online, VIEW).get_online_features(users)
        old = (online_now["events_30d"] == 1) & (online_now["plan"] == "basic")
        new = (online_now["events_30d"] == 2) & (online_now["plan"] == "pro")
        assert (old | new).all() and old.any() and new.any()
        assert len(pushed_rows(duckdb_warehouse)) == 10_000  # the warehouse first: every batch's rows
        for batch in batches:  # the retry: idempotent by key and computed_at
            store.push("user_features", batch)
        assert len(pushed_rows(duckdb_warehouse)) == 10_000
        assert events(online, users) == [2] * 10_000
        parity = check_online_parity(duckdb_warehouse, online, VIEW)
        assert parity.passed, parity.summary(VIEW)
        online.close()
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_a_push_retried_after_part_of_it_reached_redis_writes_the_rest_once(duckdb_warehouse, request, kind):
    online = empty_redis_store(kind, request)
    store = FeatureStore(registry=REGISTRY, warehouse=duckdb_warehouse, online_store=online)
    fresh = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
    rows = [row(user, fresh, 3) for user in range(1, 1001)]
    first = store.push("user_features", rows[:400])
    retried = store.push("user_features", rows)
    assert (first.written, retried.written, retried.rows) == (400, 600, 1000)
    assert len(pushed_rows(duckdb_warehouse)) == 1000
    assert events(online, range(1, 1001)) == [3] * 1000
    # Each key expires at its computed_at + the view's TTL, as a synced snapshot does.
    expected_ms = int((fresh.replace(tzinfo=UTC) + VIEW.online_ttl).timestamp() * 1000)
    for user in (1, 500, 1000):
        assert abs(online.client.pexpiretime(online.key_of(VIEW, user)) - expected_ms) <= 1
    online.close()


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_training_sets_read_pushed_rows_and_the_leakage_check_holds_them_to_the_same_rule(engine, request, tmp_path):
    from feature_assets.leakage import check_leakage
    from feature_assets.push import pushed_views
    from feature_assets.registry import FeatureSet, LabelTable, ViewRead
    from feature_assets.serving import SqliteOnlineStore
    from feature_assets.training import build_table, point_in_time_sql

    warehouse: Warehouse = request.getfixturevalue(f"{engine}_warehouse")
    now = datetime.now(UTC).replace(tzinfo=None)
    append(warehouse, snapshot(range(1, 21), hour() - timedelta(hours=3), events=1))
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=warehouse, online_store=online)
    computed = now - timedelta(hours=2)  # loaded now: a label between the two must not see it
    store.push("user_features", [row(user, computed, 100 + user) for user in range(1, 11)])
    label_times = [computed - timedelta(minutes=1), computed + timedelta(minutes=30), now + timedelta(seconds=5)]
    labels = pd.DataFrame(
        [(user, t, user % 2 == 0) for user in range(1, 21) for t in label_times],
        columns=["user_id", "label_time", "churned"],
    )
    feature_set = FeatureSet(
        "push_model",
        (ViewRead(VIEW, VIEW.features),),
        LabelTable("push_labels", ("user_id",), "label_time", "churned", "boolean", timedelta(days=30)),
        "classification",
    )
    with warehouse.connect() as con:
        warehouse.append(con, "push_labels", labels, {"user_id": "bigint", "label_time": "timestamp",
                                                      "churned": "boolean"})  # fmt: skip
        pushed = pushed_views(warehouse, con, [VIEW])
        assert pushed == {"user_features"}
        build_table(warehouse, con, "push_training_set", *point_in_time_sql(warehouse, feature_set, pushed))
        build_table(warehouse, con, "stale_training_set", *point_in_time_sql(warehouse, feature_set))
        built = warehouse.fetch(con, "select user_id, label_time, events_30d from push_training_set")
    seen = built.set_index(["user_id", "label_time"])["events_30d"]
    assert [int(seen[(3, t)]) for t in label_times] == [1, 1, 103]  # seen once computed and loaded
    assert [int(seen[(13, t)]) for t in label_times] == [1, 1, 1]  # a user with no push keeps its snapshot
    assert check_leakage(warehouse, feature_set, "push_training_set", sample=60).passed
    # A training set blind to the pushed rows took older values than serving held: the check names them.
    stale = check_leakage(warehouse, feature_set, "stale_training_set", sample=60)
    assert len({problem["entity"] for problem in stale.problems}) == 10
    assert all("not the latest one before the label time" in problem["problem"] for problem in stale.problems)
    online.close()


def test_the_first_pushes_of_many_workers_at_once_all_land_on_a_fresh_postgresql(postgres_warehouse, tmp_path):
    from feature_assets.serving import SqliteOnlineStore

    # Each server worker's first push creates the pushed table if it is missing: those arriving together must all
    # be written, none refused because another created the table a moment before.
    workers = 8
    start = threading.Barrier(workers)
    failures: list[BaseException] = []
    at = hour() - timedelta(hours=1)

    def first_push(user_id: int) -> None:
        start.wait()
        try:
            online = SqliteOnlineStore(tmp_path / f"online-{user_id}.sqlite")
            FeatureStore(warehouse=postgres_warehouse, online_store=online).push("user_features", [row(user_id, at, 3)])
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=first_push, args=(user_id,)) for user_id in range(1, workers + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert sorted(pushed_rows(postgres_warehouse)[VIEW.entity_key]) == list(range(1, workers + 1))


def _pushes(rng: np.random.Generator, users: pd.DataFrame) -> pd.DataFrame:
    """Pushed user rows: some at a snapshot's own time (the snapshot wins the tie), the others between snapshots;
    loaded at once, a minute, two hours or eight hours after they were computed (past the next snapshots)."""
    picked = users[users["user_id"] != 999].sample(200, random_state=2, replace=True)
    minutes = np.where(rng.random(len(picked)) < 0.3, 0, rng.integers(1, 6 * 60, len(picked)))
    rows = pd.DataFrame({
        "user_id": picked["user_id"].to_numpy(),
        "computed_at": picked["computed_at"].to_numpy() + minutes.astype("timedelta64[m]"),
    }).drop_duplicates(ignore_index=True)  # fmt: skip
    n = len(rows)
    rows["age"] = rng.integers(18, 80, n)
    rows["country"] = rng.choice(["US", "DE", None], n)
    rows["plan"] = rng.choice(["free", "pro"], n)
    rows["events_30d"] = rng.integers(100, 150, n)  # apart from the snapshots' 0..49: a wrong pick shows
    rows["avg_order_30d"] = np.where(rng.random(n) < 0.3, np.nan, rng.random(n) * 100)
    delays = np.array([0, 1, 120, 480], dtype="timedelta64[m]")
    rows["loaded_at"] = rows["computed_at"].to_numpy() + delays[rng.integers(0, 4, n)]
    return rows


def _python_columns(frame: pd.DataFrame) -> dict[str, list]:
    """A frame's columns as the Python values a push hands the warehouse: None for null, datetimes for times."""
    return {
        name: list(column.dt.to_pydatetime()) if column.dtype.kind == "M" else [
            None if pd.isna(value) else value for value in column.tolist()
        ]
        for name, column in frame.items()
    }  # fmt: skip


@pytest.mark.parametrize("engine", ["duckdb", "postgres", "spark"])
def test_a_training_set_with_pushed_rows_matches_the_row_by_row_reference(engine, request):
    """Generated snapshots and pushed rows, and labels on each pushed row's edges (at its computed_at, at its
    loaded_at, a second later, at its TTL's end): the warehouse's join, row for row, is the reference's."""
    warehouse: Warehouse = request.getfixturevalue(f"{engine}_warehouse")
    rng = np.random.default_rng(17)
    users, countries = _user_history(rng), _country_history(rng)
    pushes = _pushes(rng, users)
    edges = [pushes["computed_at"], pushes["loaded_at"], pushes["loaded_at"] + pd.Timedelta(seconds=1),
             pushes["computed_at"] + USERS.online_ttl]  # fmt: skip
    on_edges = pd.concat([pd.DataFrame({"user_id": pushes["user_id"], "label_time": edge}) for edge in edges])
    on_edges["country_code"] = rng.choice(["US", "DE", None], len(on_edges))
    on_edges["churned"] = rng.random(len(on_edges)) < 0.2
    labels = pd.concat([_labels(rng, users, countries), on_edges[["user_id", "country_code", "label_time", "churned"]]],
                       ignore_index=True)  # fmt: skip
    expected = _reference({"user_features": users, "country_features": countries}, labels, {"user_features": pushes})
    with warehouse.connect() as con:
        _load(warehouse, con, users, countries, labels)
        warehouse.insert_new_rows(
            con, pushed_table(USERS), _python_columns(pushes), pushed_column_types(USERS), ("user_id", "computed_at")
        )
        build_table(warehouse, con, "pushed_training_set", *point_in_time_sql(warehouse, FEATURE_SET, {USERS.name}))
        built = warehouse.fetch(con, "select * from pushed_training_set")
    expected = expected.sort_values(["user_id", "label_time", "country_code", "churned"], kind="stable",
                                    na_position="last")  # fmt: skip
    assert _normalized(built.sort_values("label_row")) == _normalized(expected)
    # Each kind of pick happens: a pushed row, a snapshot tied with a pushed row, a pushed row not yet loaded.
    assert (built["events_30d"] >= 100).sum() > 100 and (built["events_30d"] < 100).sum() > 100
    leakage = check_leakage(warehouse, FEATURE_SET, "pushed_training_set", sample=400)
    assert leakage.passed, leakage.problems[:3]


def test_pushes_to_spark_at_once_all_land_a_retry_writes_nothing_twice_and_the_sync_serves_them(
    spark_warehouse, tmp_path
):
    """Spark tables have no keys and one Parquet folder admits one writer: four pushes at once all land, a retried
    push keeps the first row of its key and computed_at, and a sync from Spark serves the pushed rows (parity holds)."""
    from feature_assets.serving import SqliteOnlineStore

    append(spark_warehouse, snapshot(range(1, 9), hour() - 3 * HOUR, events=1))
    at = hour() - HOUR
    start, failures = threading.Barrier(4), []

    def push(user_id: int) -> None:
        online = SqliteOnlineStore(tmp_path / f"pusher-{user_id}.sqlite")
        start.wait()
        try:
            FeatureStore(registry=REGISTRY, warehouse=spark_warehouse, online_store=online).push(
                "user_features", [row(user_id, at, 100 + user_id)]
            )
        except BaseException as error:
            failures.append(error)
        finally:
            online.close()

    threads = [threading.Thread(target=push, args=(user_id,)) for user_id in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    first = pushed_rows(spark_warehouse)
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=spark_warehouse, online_store=online)
    assert store.push("user_features", [row(1, at, 999)]).written == 1  # this store had nothing of user 1
    history = pushed_rows(spark_warehouse)
    assert history[["user_id", "events_30d"]].values.tolist() == [[1, 101], [2, 102], [3, 103], [4, 104]]
    assert history["loaded_at"].tolist() == first["loaded_at"].tolist()

    sync_online_store(spark_warehouse, online, VIEW, full_resync=True)
    assert events(online, [1, 2, 5]) == [101, 102, 1]  # the warehouse's first row of user 1 replaced the retry's
    parity = check_online_parity(spark_warehouse, online, VIEW)
    assert parity.passed, parity.summary(VIEW)
    online.close()


def test_a_sync_merges_the_pushes_files_on_spark_and_the_pushed_history_reads_the_same(
    spark_warehouse, monkeypatch, tmp_path
):
    """Spark keeps a partition (a file) per push; past a number of them the sync merges them into one, and the
    pushed history reads row for row as before, the first row of a retried key and time kept, loaded_at too."""
    from feature_assets.serving import SqliteOnlineStore
    from feature_assets.warehouses import spark as spark_module

    monkeypatch.setattr(spark_module, "COMPACT_AFTER_APPENDS", 4)
    append(spark_warehouse, snapshot(range(1, 9), hour() - 3 * HOUR, events=1))
    at = hour() - HOUR
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    try:
        store = FeatureStore(registry=REGISTRY, warehouse=spark_warehouse, online_store=online)
        for user in (1, 2, 3):
            store.push("user_features", [row(user, at, 100 + user)])
        store.push("user_features", [row(2, at, 999), row(4, at, 104)])  # a retry of user 2, and a new user
        before = pushed_rows(spark_warehouse)
        appends = f"{pushed_table(VIEW)}_appends"
        assert len(spark_warehouse.query(f"show partitions {appends}")) == 4
        assert sync_online_store(spark_warehouse, online, VIEW).pushes_merged == 4
        assert len(spark_warehouse.query(f"show partitions {appends}")) == 1
        pd.testing.assert_frame_equal(pushed_rows(spark_warehouse), before)
        assert before[["user_id", "events_30d"]].values.tolist() == [[1, 101], [2, 102], [3, 103], [4, 104]]
        # Pushes after the merge read with it; under the threshold again, the next sync merges nothing.
        store.push("user_features", [row(2, at, 555), row(5, at, 105)])
        assert sync_online_store(spark_warehouse, online, VIEW).pushes_merged == 0
        history = pushed_rows(spark_warehouse)
        assert history[["user_id", "events_30d"]].values.tolist() == [[1, 101], [2, 102], [3, 103], [4, 104], [5, 105]]
        assert events(online, [1, 2, 5]) == [101, 102, 105]
    finally:
        online.close()


@pytest.mark.parametrize("engine", ["duckdb", "postgres", "spark"])
def test_a_push_after_the_view_changed_names_the_pushed_table_of_the_old_definition(engine, request, tmp_path):
    from feature_assets.errors import DataError
    from feature_assets.serving import SqliteOnlineStore

    warehouse: Warehouse = request.getfixturevalue(f"{engine}_warehouse")
    at = hour() - HOUR
    old = {"user_id": "bigint", "computed_at": "timestamp", "age": "integer", "loaded_at": "timestamp"}
    with warehouse.connect() as con:  # pushed under a definition of user_features with one feature, age
        warehouse.insert_new_rows(
            con, pushed_table(VIEW), {"user_id": [1], "computed_at": [at], "age": [30], "loaded_at": [at]}, old,
            ("user_id", "computed_at"),
        )  # fmt: skip
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    store = FeatureStore(registry=REGISTRY, warehouse=warehouse, online_store=online)
    with pytest.raises(DataError, match="holds pushed rows of another definition of user_features") as refused:
        store.push("user_features", [row(2, at, 5)])
    assert "columns user_id, computed_at, age, loaded_at; the view's now: user_id, computed_at, age, country" in str(
        refused.value
    )
    assert events(online, [2]) == [None]  # nothing reached serving either
    online.close()

"""Served-feature logging: predictions unchanged, the exact served vectors logged, sampled, bounded, outage-proof."""

import socket
from datetime import UTC, datetime

import pandas as pd
import pytest
import redis
from conftest import REDIS_URL, wait_until
from redis_servers import start_restartable_redis

from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.serving import FeatureReader, FolderModelStore, RedisOnlineStore
from feature_assets.serving.codec import PANDAS_DTYPES
from feature_assets.serving.predictor import Predictor
from feature_assets.serving.served_log import RedisServedLog, SqliteServedLog
from feature_assets.settings import dbt_manifest_path

REGISTRY = load_registry(dbt_manifest_path())
VIEW = REGISTRY.view("user_features")
MODEL = "ltv_model"  # reads user_features only; churn_model's two views are logged per view (test at the end)
# Timing tests use the logistic churn model (a one-row prediction well under a millisecond; ltv's boosted trees
# take ~10 ms); each of its predictions logs one vector per view.
FAST, PER_PREDICTION = "churn_model", 2


@pytest.fixture(params=["redis", "sqlite"])
def served_log_factory(request, tmp_path):
    """Makes served logs of one kind (Redis db 15, flushed by redis_client; or an SQLite file), closed afterwards."""
    if request.param == "redis":
        request.getfixturevalue("redis_client")
    made = []

    def make(**options):
        log = (
            RedisServedLog(REDIS_URL, **options)
            if request.param == "redis"
            else SqliteServedLog(tmp_path / "log.sqlite", **options)
        )
        made.append(log)
        return log

    yield make
    for log in made:
        log.close()


@pytest.fixture
def synced(trained, redis_client):
    """The trained models (conftest) and a Redis online store holding the latest snapshots; 30 of its users."""
    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    for view in REGISTRY.views.values():
        sync_online_store(warehouse, store, view, full_resync=True)
    latest = warehouse.query(
        "select user_id from user_features where computed_at = (select max(computed_at) from user_features) "
        "order by user_id limit 30"
    )
    return store, FolderModelStore(root), [int(user) for user in latest["user_id"]]


def _features(row: pd.Series, names: list[str]) -> dict:
    return {name: None if pd.isna(row[name]) else row[name] for name in names}


def test_logging_leaves_predictions_unchanged_and_records_the_exact_served_vectors(synced, served_log_factory):
    store, models, users = synced
    log = served_log_factory()
    plain, logged = Predictor(store, models), Predictor(store, models, served_log=log)
    before = datetime.now(UTC)
    expected = [plain.predict_one(MODEL, user) for user in users]
    served = [logged.predict_one(MODEL, user) for user in users]
    assert [p.score for p in served] == [p.score for p in expected]
    assert [p.features for p in served] == [p.features for p in expected]
    batch = logged.predict(MODEL, [*users[:10], 987654])
    pd.testing.assert_frame_equal(batch, plain.predict(MODEL, [*users[:10], 987654]))

    assert log.flush(10)
    assert (log.logged, log.dropped_full_queue, log.failed_writes) == (40, 0, 0)  # the missing user is not served
    frame = log.read("user_features")
    assert len(frame) == 40
    names = models.card(MODEL).feature_names
    assert list(frame.columns) == ["user_id", *names, "model", "version", "served_at"]
    assert [str(frame[f["name"]].dtype) for f in models.card(MODEL).features] == [
        PANDAS_DTYPES[f["dtype"]] for f in models.card(MODEL).features
    ]
    assert frame["user_id"].tolist() == users + users[:10]
    for (_, row), prediction in zip(frame.iterrows(), [*served, *served[:10]]):
        assert _features(row, names) == prediction.features  # values and types: ints stay ints, nulls stay null
        assert (row["model"], row["version"]) == (MODEL, prediction.version)
    assert frame["served_at"].dt.tz is not None
    assert (frame["served_at"] >= before).all() and (frame["served_at"] <= datetime.now(UTC)).all()
    assert log.read("user_features", limit=5)["user_id"].tolist() == users[5:10]


def test_online_reads_log_what_they_returned_with_no_model(synced, served_log_factory):
    store, _, users = synced
    log = served_log_factory()
    reader = FeatureReader(store, VIEW, served_log=log)
    one = reader.get_entity(users[0])
    many = reader.get_online_features([users[1], 987654, users[2]])
    assert log.flush(10)
    frame = log.read("user_features")
    assert frame["user_id"].tolist() == [users[0], users[1], users[2]]
    assert frame["model"].isna().all() and frame["version"].isna().all()
    names = list(VIEW.feature_names)
    assert _features(frame.iloc[0], names) == {name: one[name] for name in names}
    found = many[~many["_missing"]].reset_index(drop=True)
    for position in (0, 1):
        assert _features(frame.iloc[1 + position], names) == _features(found.iloc[position], names)


def test_a_sample_rate_of_one_half_logs_about_half_the_vectors_and_a_seed_repeats_the_choice(served_log_factory):
    chosen = []
    for view in ("first_view", "second_view"):
        log = served_log_factory(sample_rate=0.5, seed=7)
        for user in range(1000):
            log.log(view, "user_id", user, {"age": user})
        log.log_batch(view, "user_id", list(range(1000, 2000)), {"age": list(range(1000))})
        assert log.flush(10)
        chosen.append(log.read(view)["user_id"].tolist())
    singles, batch = [u for u in chosen[0] if u < 1000], [u for u in chosen[0] if u >= 1000]
    assert 440 <= len(singles) <= 560 and 440 <= len(batch) <= 560
    assert chosen[0] == chosen[1]


def test_the_stored_log_stays_bounded_by_its_max_length(served_log_factory):
    log = served_log_factory(max_length=100)
    for user in range(1500):
        log.log("bounded_view", "user_id", user, {"age": user})
    assert log.flush(10)
    kept = log.read("bounded_view")["user_id"].tolist()
    if isinstance(log, RedisServedLog):
        # MAXLEN ~ trims whole stream nodes (100 entries by default): never more than one node over the bound.
        assert 100 <= redis.Redis.from_url(REDIS_URL).xlen(log.key("bounded_view")) <= 200
        assert kept == list(range(1500 - len(kept), 1500))
    else:
        assert kept == list(range(1400, 1500))


def test_a_redis_outage_during_logging_never_fails_a_prediction_and_logging_resumes_after(synced, tmp_path):
    store, models, users = synced
    plain = Predictor(store, models)
    expected = {user: plain.predict_one(FAST, user).score for user in users}
    server = start_restartable_redis(tmp_path)
    log = RedisServedLog(server.url, retry_interval=0.2)
    try:
        predictor = Predictor(store, models, served_log=log)
        assert predictor.predict_one(FAST, users[0]).score == expected[users[0]]
        assert log.flush(10) and log.logged == PER_PREDICTION

        server.kill()
        for round in range(5):
            for user in users:
                assert predictor.predict_one(FAST, user).score == expected[user]
            if round == 0:  # the writer meets the dead server while predictions go on
                wait_until(lambda: log.failed_writes > 0, "a write to the killed server failing")
        pd.testing.assert_frame_equal(predictor.predict(FAST, users), plain.predict(FAST, users))
        assert log.flush(10)
        stats = log.stats()
        assert (
            stats.logged == PER_PREDICTION
            and stats.failed_writes + stats.dropped_full_queue == 6 * PER_PREDICTION * len(users)
        )
        assert stats.failed_writes > 0 and "ConnectionError" in stats.last_error

        server.restart()  # same port and AOF: the entry written before the outage comes back
        for user in users[:5]:
            assert predictor.predict_one(FAST, user).score == expected[user]
        assert log.flush(10)
        assert log.logged == 6 * PER_PREDICTION
        assert log.read("user_features")["user_id"].tolist() == [users[0], *users[:5]]
    finally:
        log.close()
        server.stop()


def test_an_unresponsive_log_server_costs_callers_nothing_and_a_full_queue_drops_and_counts(synced):
    """A server that accepts connections and never answers: the writer thread waits on its first write while every
    prediction returns, so no prediction waited on a write."""
    store, models, users = synced
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # never accepted: connecting succeeds, replies never come
    # A timeout no test run reaches: the writer stays stuck until the server goes away.
    log = RedisServedLog(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", socket_timeout=600, queue_size=10)
    try:
        predictor = Predictor(store, models, served_log=log)
        expected = {user: Predictor(store, models).predict_one(FAST, user).score for user in users}
        for user in users:
            assert predictor.predict_one(FAST, user).score == expected[user]
        stats = log.stats()
        assert (stats.logged, stats.failed_writes) == (0, 0), "a write finished: predictions may have waited on it"
        # At most one batch taken by the writer and a full queue wait; the rest was dropped.
        assert stats.queued > 0 and stats.dropped_full_queue >= PER_PREDICTION * len(users) - 20

        silent.close()  # resets the pending connection: the stuck write fails
        assert log.flush(10)
        stats = log.stats()
        assert stats.logged == 0 and stats.failed_writes + stats.dropped_full_queue == PER_PREDICTION * len(users)
        assert stats.failed_writes > 0 and "cannot connect" in stats.last_error
    finally:
        log.close()
        silent.close()


def test_a_two_view_prediction_logs_each_views_features_under_that_view_and_its_key(synced, tmp_path):
    store, models, users = synced
    log = SqliteServedLog(tmp_path / "log.sqlite")
    predictions = [Predictor(store, models, served_log=log).predict_one("churn_model", user) for user in users[:5]]
    assert log.flush(10)
    by_user, by_country = log.read("user_features"), log.read("country_features")
    log.close()
    assert by_user["user_id"].tolist() == users[:5]
    assert by_country["country_code"].tolist() == [p.entity["country_code"] for p in predictions]
    country_names = [f.name for f in REGISTRY.feature_set("churn_model").reads[1].features]
    assert list(by_country.columns) == ["country_code", *country_names, "model", "version", "served_at"]
    for (_, row), prediction in zip(by_country.iterrows(), predictions):
        assert _features(row, country_names) == {name: prediction.features[name] for name in country_names}

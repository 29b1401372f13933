"""What the Redis online store does when Redis fails: a killed connection mid-sync, a master killed mid-read, a hung
server, a TLS/plain mismatch, wrong credentials. Always a clear error naming the store, never wrong or partial
features, and never a key without an expiry."""

import os
import signal
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from conftest import REDIS_URL, empty_redis_store
from redis_servers import start_acl_redis, start_cluster

from feature_assets.errors import OnlineStoreError
from feature_assets.registry import Feature, FeatureView
from feature_assets.serving import FeatureReader, RedisOnlineStore, encode_batch
from feature_assets.serving.redis_io import primaries

VIEW = FeatureView(
    "thing_features", "thing", "thing_id", "computed_at", timedelta(days=2),
    (Feature("count", "int64", "bigint", "", "v1"), Feature("score", "float64", "double precision", "", "v1")),
    "checksum",
)  # fmt: skip
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def frame(ids) -> pd.DataFrame:
    ids = np.asarray(ids, dtype=np.int64)
    return pd.DataFrame({"thing_id": ids, "computed_at": np.datetime64(NOW, "us"), "count": ids * 2, "score": ids / 7})


@pytest.mark.parametrize("kind", ["redis", "cluster", "tls"])
def test_a_connection_killed_between_batches_fails_the_sync_clearly_and_leaves_no_key_without_expiry(kind, request):
    store = empty_redis_store(kind, request)
    writer = store.writer(VIEW)
    writer.write(encode_batch(VIEW, frame(range(0, 5000))))
    writer.write(encode_batch(VIEW, frame(range(5000, 10_000))))
    # Every connection to this store's database but the one sending the kill: the tests running beside this one
    # share the server, each on a database of its own.
    for node in primaries(store.client):
        db = str(node.connection_pool.connection_kwargs.get("db", 0))
        for client in node.client_list(_type="normal"):
            if client["db"] == db:
                node.client_kill_filter(_id=client["id"], skipme=True)
    with pytest.raises(OnlineStoreError) as failure:
        for start in range(10_000, 40_000, 5000):
            writer.write(encode_batch(VIEW, frame(range(start, start + 5000))))
        writer.finish()
    writer.abort()
    message = str(failure.value)
    assert "the sync failed after" in message and "the next sync resumes" in message
    assert store.describe() in message

    ttls = [
        node.pttl(key)
        for node in primaries(store.client)
        for key in node.scan_iter(match="features:thing:*", count=10_000)
    ]
    assert len(ttls) >= 5000  # the batches before the kill are stored
    assert min(ttls) > 0, "a key exists without an expiry"
    # What was stored is whole: every readable entity has both fields.
    online = FeatureReader(store, VIEW).get_online_features(range(0, 40_000))
    present = online[~online["_missing"]]
    assert (present["count"] == present["thing_id"] * 2).all()
    store.close()


def test_a_cluster_master_killed_mid_read_gives_a_clear_error_never_partial_features(tmp_path):
    cluster = start_cluster(tmp_path)
    try:
        store = RedisOnlineStore.from_url(cluster.url)
        with store.writer(VIEW) as writer:
            writer.write(encode_batch(VIEW, frame(range(3000))))
        reader = FeatureReader(store, VIEW)
        assert not reader.get_online_features(range(3000))["_missing"].any()
        assert (
            sorted(len(list(node.scan_iter(match="features:thing:*"))) > 0 for node in primaries(store.client))
            == [True] * 3
        )

        cluster.kill(1)

        with pytest.raises(OnlineStoreError, match="redis"):
            reader.get_online_features(range(3000))
        store.close()
    finally:
        cluster.stop()


def test_a_hung_redis_fails_a_read_within_the_timeout_with_a_clear_error(tmp_path):
    server = start_acl_redis(tmp_path)
    try:
        store = RedisOnlineStore.from_url(server.url, timeout=0.3)
        with store.writer(VIEW) as writer:
            writer.write(encode_batch(VIEW, frame(range(10))))
        reader = FeatureReader(store, VIEW)
        assert reader.get_entity(3)["count"] == 6
        os.killpg(server.processes[0].pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(OnlineStoreError, match="no answer in time"):
                reader.get_entity(3)
            with pytest.raises(OnlineStoreError, match="no answer in time"):
                reader.get_online_features([1, 2, 3])
            assert time.monotonic() - started < 5, "each read must give up after its timeout (0.3 s), not hang"
        finally:
            os.killpg(server.processes[0].pid, signal.SIGCONT)
        assert reader.get_entity(3)["count"] == 6  # the store recovers once Redis answers again
        store.close()
    finally:
        server.stop()


def test_acl_user_and_password_from_the_url_authenticate_and_a_wrong_password_is_refused(tmp_path):
    server = start_acl_redis(tmp_path)
    try:
        with RedisOnlineStore.from_url(server.url) as store:
            with store.writer(VIEW) as writer:
                writer.write(encode_batch(VIEW, frame(range(5))))
            assert FeatureReader(store, VIEW).get_entity(4)["count"] == 8
        wrong = server.url.replace(server.password, "not-the-password")
        with pytest.raises(OnlineStoreError) as refused:
            RedisOnlineStore.from_url(wrong)
        assert "AuthenticationError" in str(refused.value) or "password" in str(refused.value)
        assert server.password not in str(refused.value) and "not-the-password" not in str(refused.value)
    finally:
        server.stop()


def test_a_tls_plain_mismatch_is_an_error_that_says_so_within_the_timeout(tls_ca):
    plain_to_tls = tls_ca.url.replace("rediss://", "redis://")
    with pytest.raises(OnlineStoreError, match="rediss"):
        RedisOnlineStore.from_url(plain_to_tls, timeout=0.5)
    tls_to_plain = REDIS_URL.replace("redis://", "rediss://")
    with pytest.raises(OnlineStoreError, match="TLS"):
        RedisOnlineStore.from_url(tls_to_plain, timeout=0.5)


def test_a_tls_server_is_refused_without_the_ca_that_signed_it(tls_redis, monkeypatch):
    monkeypatch.delenv("FEATURE_STORE_REDIS_CA_CERT", raising=False)
    with pytest.raises(OnlineStoreError, match=r"TLS|certificate"):
        RedisOnlineStore.from_url(tls_redis.url, timeout=0.5)


def test_the_ca_certificate_may_come_in_the_url(tls_redis, monkeypatch):
    monkeypatch.delenv("FEATURE_STORE_REDIS_CA_CERT", raising=False)
    with RedisOnlineStore.from_url(f"{tls_redis.url}?ssl_ca_certs={tls_redis.ca_cert}") as store:
        assert store.count_entities(VIEW) >= 0


def test_the_served_vector_log_works_on_a_cluster(redis_cluster):
    from feature_assets.serving.served_log import RedisServedLog

    with RedisServedLog(redis_cluster.url) as log:
        for view in ("user_features", "country_features"):  # two streams, likely on two masters
            log.log(view, "entity_id", 7, {"count": 1, "score": 0.5})
        assert log.flush()
        assert log.stats().failed_writes == 0
        for view in ("user_features", "country_features"):
            frame = log.read(view)
            assert frame["entity_id"].tolist() == [7] and frame["count"].tolist() == [1]

"""The throwaway Redis servers of redis_servers.py start, serve redis-py's public API, and stop without leftovers."""

import os
from collections import Counter

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis_servers import start_acl_redis, start_cluster, start_tls_redis

# redis-py 8 retries a failed connection or command 3 times with exponential backoff (~4 s in all): the tests that
# expect a failure ask for none, so they take milliseconds.
NO_RETRY = Retry(NoBackoff(), 0)


def alive(pid: int) -> bool:
    """Whether a process with this pid still exists (killed servers are reaped by stop(), so none linger as zombies)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    server = start_acl_redis(tmp_path_factory.mktemp("acl"))
    yield server
    server.stop()


def test_cluster_spreads_keys_over_three_masters_and_a_kill_loses_only_that_masters_keys(tmp_path):
    # One cluster for every cluster check: `redis-cli --cluster create` alone takes 2-4 s (it polls once a second).
    cluster = start_cluster(tmp_path)
    try:
        assert len(cluster.nodes) == 3 and cluster.url == f"redis://127.0.0.1:{cluster.nodes[0][1]}"
        client = RedisCluster.from_url(cluster.url, socket_timeout=1, socket_connect_timeout=1, retry=NO_RETRY)
        keys = [f"featurestore:test:{i}" for i in range(100)]
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [int(client.get(key)) for key in keys] == list(range(100))

        # CLUSTER NODES: three connected masters, each serving a slot range.
        masters = {
            address: node
            for address, node in client.cluster_nodes().items()
            if "master" in node["flags"] and node["connected"] and node["slots"]
        }
        assert set(masters) == {f"{host}:{port}" for host, port in cluster.nodes}

        # KEYSLOT against the slot ranges: the 100 keys land on every master...
        def owner(key: str) -> str:
            slot = client.keyslot(key)
            (address,) = [a for a, n in masters.items() if any(int(lo) <= slot <= int(hi) for lo, hi in n["slots"])]
            return address

        owners = Counter(owner(key) for key in keys)
        assert set(owners) == set(masters)
        # ...and each master holds exactly the keys its slots say.
        for host, port in cluster.nodes:
            with redis.Redis(host=host, port=port) as node:
                assert node.dbsize() == owners[f"{host}:{port}"]

        # Kill one master: its keys fail at once, the others' are still served (until cluster-node-timeout, 2 s,
        # after which the cluster as a whole reports CLUSTERDOWN, as it has no replica to promote).
        dead = f"127.0.0.1:{cluster.nodes[2][1]}"
        on_dead = next(key for key in keys if owner(key) == dead)
        on_live = next(key for key in keys if owner(key) != dead)
        cluster.kill(2)
        assert not alive(cluster.pids[2])
        with pytest.raises(redis.ConnectionError):
            client.get(on_dead)
        assert client.get(on_live) is not None
        client.close()
    finally:
        cluster.stop()
    cluster.stop()  # safe twice
    assert not any(alive(pid) for pid in cluster.pids)
    assert not cluster.workdir.exists()


def test_tls_redis_answers_a_verifying_tls_client(tls_redis):
    assert tls_redis.url == f"rediss://127.0.0.1:{tls_redis.port}"
    with redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_redis.ca_cert)) as client:
        assert client.ping()
        client.set("featurestore:test", "over tls")
        assert client.get("featurestore:test") == b"over tls"
    # The certificate names localhost as well as 127.0.0.1.
    url = f"rediss://localhost:{tls_redis.port}"
    with redis.Redis.from_url(url, ssl_ca_certs=str(tls_redis.ca_cert)) as client:
        assert client.ping()


def test_tls_redis_refuses_plain_tcp_and_unknown_certificates(tls_redis):
    with pytest.raises(redis.ConnectionError):
        plain = redis.Redis(
            host="127.0.0.1", port=tls_redis.port, socket_timeout=1, socket_connect_timeout=1, retry=NO_RETRY
        )
        plain.ping()
    # Without the test CA, the server's certificate does not verify against the system's CAs.
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(tls_redis.url, socket_timeout=1, socket_connect_timeout=1, retry=NO_RETRY).ping()


def test_acl_redis_needs_its_user(acl_redis):
    assert acl_redis.url == f"redis://featurestore:{acl_redis.password}@127.0.0.1:{acl_redis.port}/0"
    with redis.Redis.from_url(acl_redis.url) as client:
        assert client.ping()
        assert client.acl_whoami() == "featurestore"
    wrong = acl_redis.url.replace(acl_redis.password, "wrong")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(wrong, retry=NO_RETRY).ping()
    # The default user is off: a client that drops the URL's credentials is refused too.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=acl_redis.port, retry=NO_RETRY).ping()


def test_stop_kills_the_server_and_removes_its_folder(tmp_path):
    for start in (start_tls_redis, start_acl_redis):
        server = start(tmp_path)
        (pid,) = server.pids
        assert alive(pid) and server.workdir.parent == tmp_path
        server.stop()
        server.stop()
        assert not alive(pid) and not server.workdir.exists()
    assert list(tmp_path.iterdir()) == []

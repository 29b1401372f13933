"""Redis connections for the online store and the served log: one URL for a single server or a cluster,
TLS and AUTH from the URL, timeouts on every wait, and pipelined exchanges through redis-py's public API.

redis-py's pipeline spends ~20 µs of Python per command, so the bulk paths pre-encode their commands
(RESP) and send them with `Connection.send_packed_command`; each reply is read with
`Connection.read_response`, which hiredis parses in C and which understands RESP3 push messages. A
connection is only ever used by one thread at a time, so TLS connections are safe.

On a cluster, `node_for(client, key)` gives the plain client of the master serving a key: bulk work is
grouped by node (and, for MULTI/EXEC, by hash slot), and each node's share goes out in one round.
"""

import os
from collections.abc import Iterable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import ConnectionInterface
from redis.crc import key_slot
from redis.retry import Retry

from feature_assets.errors import ConfigError, OnlineStoreError
from feature_assets.settings import seconds_from_milliseconds

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "RedisClient",
    "bulk",
    "check_url",
    "close",
    "connect",
    "describe",
    "describe_url",
    "errors",
    "exchange",
    "node_for",
    "primaries",
    "read",
    "slot_of",
    "timeout_from_env",
]

RedisClient = redis.Redis | RedisCluster
DEFAULT_TIMEOUT_MS = 500
_SCHEMES = ("redis://", "rediss://", "unix://")


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def timeout_from_env() -> float:
    """FEATURE_STORE_REDIS_TIMEOUT_MS in seconds: how long serving waits for Redis to connect or answer."""
    return seconds_from_milliseconds("FEATURE_STORE_REDIS_TIMEOUT_MS", DEFAULT_TIMEOUT_MS)


def check_url(url: str, what: str = "the Redis URL") -> None:
    if not url.startswith(_SCHEMES):
        # The URL may hold a password: name only its scheme.
        raise ConfigError(
            f"{what} must start with redis://, rediss:// or unix://, not {url.split(':', 1)[0][:20]!r}://"
        )


def describe_url(url: str) -> str:
    """Where a URL points, without user or password."""
    parts = urlsplit(url)
    return f"redis {parts.path}" if parts.scheme == "unix" else f"redis {parts.hostname}:{parts.port or 6379}"


def connect(url: str, *, timeout: float, what: str = "the Redis URL") -> RedisClient:
    """A client for the server or cluster at `url`. A cluster is detected (INFO cluster), so a URL naming any
    node of one needs no other setting. rediss:// uses TLS, verified against FEATURE_STORE_REDIS_CA_CERT when
    set (or the URL's ssl_ca_certs parameter); user and password in the URL authenticate (ACL users too)."""
    check_url(url, what)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # One retry, on a broken connection only (a pooled one the server closed): a timed-out request is not
        # retried, it would wait a second timeout.
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": 30,
    }
    ca_cert = os.environ.get("FEATURE_STORE_REDIS_CA_CERT")
    if url.startswith("rediss://") and ca_cert:
        options["ssl_ca_certs"] = ca_cert
    single = redis.Redis.from_url(url, **options)
    probe = describe(single)
    try:
        cluster = single.info("cluster").get("cluster_enabled") == 1
    except redis.ConnectionError as error:
        single.close()
        raise OnlineStoreError(f"{probe}: cannot connect ({_why(url, error)})") from None
    except redis.TimeoutError:
        single.close()
        raise OnlineStoreError(f"{probe}: no answer within {timeout * 1000:g} ms{_hung_hint(url)}") from None
    except redis.RedisError as error:
        single.close()
        raise OnlineStoreError(f"{probe}: {type(error).__name__}: {error}") from None
    if not cluster:
        return single
    single.close()
    return RedisCluster.from_url(url, **options)


def _hung_hint(url: str) -> str:
    if url.startswith("redis://"):
        return " (a hung server, or a TLS port: TLS needs rediss://)"
    if url.startswith("rediss://"):
        return " (a hung server, or a plain port: without TLS use redis://)"
    return " (a hung server)"


def _why(url: str, error: Exception) -> str:
    text = str(error)
    if url.startswith("rediss://") and ("SSL" in text or "certificate" in text):
        return f"TLS handshake failed: {text}"
    if url.startswith("redis://") and ("reset" in text.lower() or "closed" in text.lower()):
        return f"{text}; a TLS port needs rediss://"
    return text


def describe(client: RedisClient) -> str:
    """Where the client points, without secrets."""
    if isinstance(client, RedisCluster):
        # redis-py leaves get_primaries unannotated (it returns list[ClusterNode]).
        nodes = sorted(f"{node.host}:{node.port}" for node in client.get_primaries())  # type: ignore[no-untyped-call]
        return f"redis cluster {', '.join(nodes)}"
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"redis {where} db {kwargs.get('db', 0)}"


def close(client: RedisClient) -> None:
    client.close()
    if not isinstance(client, RedisCluster):
        client.connection_pool.disconnect()


def primaries(client: RedisClient) -> list[redis.Redis]:
    """A plain client per master (the client itself for a single server)."""
    if isinstance(client, RedisCluster):
        # redis-py leaves get_primaries unannotated (it returns list[ClusterNode]).
        return [node.redis_connection for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [client]


def slot_of(key: bytes) -> int:
    return key_slot(key)


def node_for(client: RedisClient, key: bytes | None = None, slot: int | None = None) -> redis.Redis:
    """The plain client of the master that serves a key (or hash slot)."""
    if not isinstance(client, RedisCluster):
        return client
    if slot is None:
        if key is None:
            raise TypeError("node_for needs a key or a slot")
        slot = key_slot(key)
    # ClusterNode.redis_connection is unannotated in redis-py; a node of the slot map has its client.
    node: redis.Redis = client.nodes_manager.get_node_from_slot(slot).redis_connection
    return node


def exchange(node: redis.Redis, payload: bytes, replies: int, timeout: float | None = None) -> list[Any]:
    """Sends pre-encoded commands to one server and reads their `replies` replies, once (no retry: the caller
    knows whether its commands may run twice). An error reply comes back as a redis.ResponseError value, not
    raised; any other failure closes the connection and raises."""
    pool = node.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([payload])  # type: ignore[no-untyped-call]  # unannotated in redis-py
        return read(connection, replies, timeout)
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        raise
    finally:
        pool.release(connection)


def read(connection: ConnectionInterface, replies: int, timeout: float | None = None) -> list[Any]:
    """`replies` replies off a connection, error replies as values (RESP values: bytes, ints, lists...)."""
    results: list[Any] = []
    append = results.append
    receive = connection.read_response if timeout is None else partial(connection.read_response, timeout=timeout)
    for _ in range(replies):
        try:
            append(receive())
        except redis.ResponseError as error:
            append(error)
    return results


def errors(replies: Iterable[object]) -> list[redis.ResponseError]:
    return [reply for reply in replies if isinstance(reply, redis.ResponseError)]

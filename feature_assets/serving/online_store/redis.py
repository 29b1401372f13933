"""The Redis online store (a single server, a cluster, TLS): a hash per entity, readable with plain redis-cli.

Layout (on a cluster, keys spread over the masters by hash slot):
    features:<namespace>:<id>       hash: the snapshot's computed_at and one field per feature of one view;
                                    null is a single NUL byte ("\\x00"); the key expires at computed_at + TTL,
                                    set with its fields by one Lua script (WRITE_NEWER). The
                                    namespace is the entity (features:user:42) for the view named
                                    <entity>_features, and the view's name for any other view of that entity
                                    (features:user_order_features:42), so two views never share a hash
    featurestore:view:<view name>   hash: schema, definition version and the last completed sync,
                                    expiring a TTL after the sync (a store that went quiet for a TTL starts over)
"""

import hashlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any, cast

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.connection import Connection

from feature_assets.errors import DataError, OnlineStoreError
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import NULL_MARKER, EncodedBatch, encode_entity_id, view_schema
from feature_assets.serving.online_store.base import OnlineStore, OnlineWriter, SyncRecord
from feature_assets.serving.redis_io import (
    RedisClient,
    bulk,
    close,
    connect,
    describe,
    errors,
    node_for,
    primaries,
    read,
    slot_of,
    timeout_from_env,
)

__all__ = ["RedisOnlineStore"]

_NULL_BULK = bulk(NULL_MARKER)
# Rows per script call: Redis runs one without serving anyone else, a few ms for this many rows.
_TRANSACTION_ROWS = 1000
# The sync waits longer than a request: a batch of megabytes is in flight while Redis works on the one before.
_SYNC_TIMEOUT = 30.0
# The clients never decode replies (no decode_responses), so every string Redis answers is bytes; redis-py's
# annotations allow str too, for clients that do: the casts below say which.


class RedisOnlineStore(OnlineStore):
    """Redis or Redis Cluster: a hash per entity. Use `from_url` with redis://, rediss:// (TLS) or unix:// URLs,
    user and password included; a URL naming any node of a cluster uses the whole cluster."""

    kind = "redis"

    def __init__(self, client: RedisClient, *, sync_client: RedisClient | None = None):
        self.client = client
        self.sync_client = sync_client or client
        self._prefixes: dict[str, bytes] = {}
        # On a cluster, the master of each hash slot seen so far (redis-py's lookup costs ~4 us a key); forgotten
        # after any failure, when the cluster's layout may have changed.
        self._slot_nodes: dict[int, redis.Redis] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout: float | None = None) -> "RedisOnlineStore":
        """timeout (seconds) bounds each connect and request; default FEATURE_STORE_REDIS_TIMEOUT_MS."""
        timeout = timeout_from_env() if timeout is None else timeout
        client = connect(url, timeout=timeout)
        return cls(client, sync_client=connect(url, timeout=max(timeout, _SYNC_TIMEOUT)))

    def describe(self) -> str:
        return describe(self.client)

    def unreachable(self, error: Exception, node: redis.Redis | None = None) -> OnlineStoreError:
        where = describe(node) if node is not None and node is not self.client else self.describe()
        if isinstance(error, redis.TimeoutError):
            return OnlineStoreError(f"{where}: no answer in time ({error})")
        return OnlineStoreError(f"{where}: {type(error).__name__}: {error}")

    def prefix(self, view: FeatureView) -> bytes:
        try:
            return self._prefixes[view.online_namespace]
        except KeyError:
            prefix = self._prefixes[view.online_namespace] = f"features:{view.online_namespace}:".encode()
            return prefix

    def key_of(self, view: FeatureView, entity_id: Any) -> str:
        return (self.prefix(view) + encode_entity_id(entity_id)).decode()

    @staticmethod
    def meta_key(view: FeatureView) -> str:
        return f"featurestore:view:{view.name}"

    def writer(self, view: FeatureView, *, replace: bool = False, push: bool = False) -> OnlineWriter:
        return _RedisWriter(self, view, "push" if push else "replace" if replace else "sync")

    def _checked(
        self, key: bytes, fields: Sequence[str], values: list[bytes | None] | redis.ResponseError
    ) -> list[bytes | None] | None:
        if isinstance(values, redis.ResponseError):
            raise self._refused(key, values)
        if values[0] is None:
            return None
        if None in values:
            absent = [field for field, value in zip(fields, values) if value is None]
            raise DataError(f"online value at {key.decode()} has no field {absent[0]!r}; run a full resync")
        if NULL_MARKER in values:
            return [None if value == NULL_MARKER else value for value in values]
        return values

    @staticmethod
    def _hmget(key: bytes, fields: Sequence[str]) -> bytes:
        return b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields)) + bulk(key) + b"".join(bulk(f.encode()) for f in fields)

    def read_row(
        self, view: FeatureView, entity_id: Any, fields: Sequence[str], *, timeout: float | None = None
    ) -> Sequence[Any] | None:
        key = self.prefix(view) + encode_entity_id(entity_id)
        (values,) = self._per_node([key], [self._hmget(key, fields)], timeout)
        return self._checked(key, fields, values)

    def read_rows(
        self, requests: Sequence[tuple[FeatureView, Any, Sequence[str]]], *, timeout: float | None = None
    ) -> list[Sequence[Any] | None]:
        if len(requests) == 1:
            return [self.read_row(*requests[0], timeout=timeout)]
        keys = [self.prefix(view) + encode_entity_id(entity_id) for view, entity_id, _ in requests]
        commands = [self._hmget(key, fields) for key, (_, _, fields) in zip(keys, requests)]
        replies = self._per_node(keys, commands, timeout)
        return [self._checked(key, fields, values) for key, (_, _, fields), values in zip(keys, requests, replies)]

    def _per_node(self, keys: Sequence[bytes], commands: Sequence[bytes], timeout: float | None) -> list[Any]:
        """One reply per command (command i touches keys[i]); each node's commands go out in one round, all
        nodes' rounds are sent before any reply is read."""
        if not isinstance(self.client, RedisCluster):
            return self._round({self.client: list(range(len(keys)))}, commands, timeout)
        by_node: dict[redis.Redis, list[int]] = {}
        for index, key in enumerate(keys):
            by_node.setdefault(self._node(key), []).append(index)
        return self._round(by_node, commands, timeout)

    def _refused(self, key: bytes, error: redis.ResponseError) -> Exception:
        """The error for a refused read; a cluster that moved the key's slot has its layout read again."""
        if str(error).startswith(("MOVED", "ASK", "CLUSTERDOWN")):
            self._slot_nodes.clear()
            if isinstance(self.client, RedisCluster):
                self.client.nodes_manager.initialize()
            return OnlineStoreError(
                f"the Redis cluster moved {key.decode()} while it was read ({error}); retry the request"
            )
        return DataError(f"online value at {key.decode()}: {error}")

    def _node(self, key: bytes) -> redis.Redis:
        if not isinstance(self.client, RedisCluster):
            return self.client
        slot = slot_of(key)
        node = self._slot_nodes.get(slot)
        if node is None:
            node = self._slot_nodes[slot] = node_for(self.client, slot=slot)
        return node

    def _round(
        self, by_node: dict[redis.Redis, list[int]], commands: Sequence[bytes], timeout: float | None
    ) -> list[Any]:
        try:
            return self._round_once(by_node, commands, timeout)
        except OnlineStoreError as error:
            self._slot_nodes.clear()
            if not isinstance(error.__cause__, redis.ConnectionError):
                raise
            # A pooled connection the server closed (a restart, an idle timeout): reads may run twice.
            return self._round_once(by_node, commands, timeout)

    def _round_once(
        self, by_node: dict[redis.Redis, list[int]], commands: Sequence[bytes], timeout: float | None
    ) -> list[Any]:
        replies: list[Any] = [None] * len(commands)
        taken: list[tuple[redis.Redis, Connection, list[int]]] = []
        node: redis.Redis | None = None
        try:
            for node, indexes in by_node.items():
                connection = node.connection_pool.get_connection()
                taken.append((node, connection, indexes))
                payload = b"".join([commands[i] for i in indexes])
                connection.send_packed_command([payload])  # type: ignore[no-untyped-call]  # unannotated in redis-py
            for _, connection, indexes in taken:
                for index, reply in zip(indexes, read(connection, len(indexes), timeout)):
                    replies[index] = reply
        except BaseException as error:
            for _, connection, _ in taken:
                connection.disconnect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            if isinstance(error, (redis.RedisError, OSError)):
                raise self.unreachable(error, node) from error
            raise
        finally:
            for taken_node, connection, _ in taken:
                taken_node.connection_pool.release(connection)
        return replies

    def read_columns(self, view: FeatureView, entity_ids: Sequence[Any], fields: Sequence[str]) -> list[Sequence[Any]]:
        ids = list(map(encode_entity_id, entity_ids))
        if not ids:
            return [[] for _ in fields]
        prefix = self.prefix(view)
        command = b"*%d\r\n$5\r\nHMGET\r\n$%%d\r\n" % (2 + len(fields)) + prefix.replace(b"%", b"%%") + b"%s\r\n"
        command += b"".join(bulk(field.encode()) for field in fields).replace(b"%", b"%%")
        commands = [command % (len(prefix) + len(entity_id), entity_id) for entity_id in ids]
        replies = self._per_node([prefix + entity_id for entity_id in ids], commands, None)
        try:
            columns = list(zip(*replies))  # transposed in C; an error reply is not iterable
        except TypeError:
            row = next(row for row, reply in enumerate(replies) if type(reply) is not list)
            raise self._refused(prefix + ids[row], replies[row]) from None
        # Membership tests scan a column in C; only a column holding a None (a missing entity, or a hash that lacks
        # the field) is compared row by row with the timestamp's, which is None exactly where the entity is missing.
        missing = None
        for column, field in enumerate(fields[1:], start=1):
            if None in columns[column]:
                # numpy's stubs refuse None as an operand, which np.equal compares element-wise in an object array.
                if missing is None:
                    missing = np.equal(np.array(columns[0], dtype=object), None)  # type: ignore[call-overload]
                nulls = np.equal(np.array(columns[column], dtype=object), None)  # type: ignore[call-overload]
                holes = np.flatnonzero(nulls & ~missing)
                if len(holes):
                    key = (prefix + ids[holes[0]]).decode()
                    raise DataError(f"online value at {key} has no field {field!r}; run a full resync")
        return [
            [None if value == NULL_MARKER else value for value in column] if NULL_MARKER in column else column
            for column in columns
        ]

    def last_sync(self, view: FeatureView) -> SyncRecord | None:
        try:
            fields = cast(dict[bytes, bytes], self.client.hgetall(self.meta_key(view)))
        except redis.RedisError as error:
            raise self.unreachable(error) from None
        if not fields:
            return None
        return SyncRecord.from_json({k.decode(): v.decode() for k, v in fields.items()})

    def record_sync(self, view: FeatureView, record: SyncRecord) -> None:
        key = self.meta_key(view)
        mapping = {
            **record.to_json(),
            "entity": view.entity,
            "entity_key": view.entity_key,
            "key_pattern": f"features:{view.online_namespace}:<{view.entity_key}>",
            "ttl_seconds": str(int(view.online_ttl.total_seconds())),
            "expiry": "each key expires at its snapshot's computed_at + ttl_seconds",
            "null": "a single NUL byte (\\x00)",
        }
        try:
            with node_for(self.sync_client, key.encode()).pipeline(transaction=True) as pipe:
                pipe.delete(key)
                # redis-py's Mapping[FieldT, EncodableT] is invariant in its key type, so refuses a dict[str, str]
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.pexpire(key, int(view.online_ttl.total_seconds() * 1000))
                pipe.execute()
        except redis.RedisError as error:
            raise self.unreachable(error) from None

    def request_full_sync(self, view: FeatureView, reason: str) -> None:
        key = self.meta_key(view)
        try:
            if self.sync_client.exists(key):  # without a record the next sync is a full one anyway
                self.sync_client.hset(key, "full_sync_due", reason)
        except redis.RedisError as error:
            raise self.unreachable(error) from None

    def _scan(self, view: FeatureView) -> Iterator[list[bytes]]:
        pattern = self.prefix(view) + b"*"
        for node in primaries(self.sync_client):
            cursor = None
            try:
                while cursor != 0:
                    cursor, keys = node.scan(cursor or 0, match=pattern, count=50_000)
                    yield cast(list[bytes], keys)
            except redis.RedisError as error:
                raise self.unreachable(error, node) from None

    def count_entities(self, view: FeatureView) -> int:
        return sum(len(keys) for keys in self._scan(view))

    def entity_ids(self, view: FeatureView) -> set[bytes]:
        start = len(self.prefix(view))
        return {key[start:] for keys in self._scan(view) for key in keys}

    def delete(self, view: FeatureView, entity_ids: Collection[bytes]) -> None:
        prefix = self.prefix(view)
        keys = [prefix + entity_id for entity_id in entity_ids]
        for start in range(0, len(keys), 10_000):
            chunk = keys[start : start + 10_000]
            replies = self._per_node(chunk, [b"*2\r\n$3\r\nDEL\r\n" + bulk(key) for key in chunk], _SYNC_TIMEOUT)
            for key, reply in zip(chunk, replies):
                if isinstance(reply, redis.ResponseError):
                    raise self._refused(key, reply)

    def close(self) -> None:
        for client in {id(self.client): self.client, id(self.sync_client): self.sync_client}.values():
            close(client)


# Writes each entity's hash whole, with its expiry, unless the store holds a newer snapshot of it; returns how many
# it wrote. One call per batch of keys (on a cluster, keys of one hash slot), atomic as a whole: one script call
# costs Redis about half the CPU of one call per key. KEYS: the hashes; ARGV[1] the mode, ARGV[2] the values per
# key (width), then per key its expiry (ms since the epoch) and its field, value pairs, the timestamp first. ISO 8601
# times of one form compare as strings. A sync rewrites a snapshot of the same time (its repair of a drifted value),
# a push does not (a retry, or a dbt snapshot of that time, keeps what is there); "replace" (after a schema change)
# drops the old hash whatever it holds.
WRITE_NEWER = b"""
local mode, width, written = ARGV[1], tonumber(ARGV[2]), 0
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * width
  local held = redis.call('HGET', key, ARGV[at + 1])
  if not (held and mode ~= 'replace' and (held > ARGV[at + 2] or (held == ARGV[at + 2] and mode == 'push'))) then
    if mode == 'replace' then redis.call('DEL', key) end
    redis.call('HSET', key, unpack(ARGV, at + 1, at + width - 1))
    redis.call('PEXPIREAT', key, ARGV[at])
    written = written + 1
  end
end
return written
"""
_WRITE_NEWER_SHA = hashlib.sha1(WRITE_NEWER).hexdigest().encode()
# Sent ahead of each node's batch: a node that restarted or took over a slot has no scripts.
_LOAD_SCRIPT = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n" + bulk(WRITE_NEWER)
_WRITE_NEWER_CALL = bulk(_WRITE_NEWER_SHA)


class _RedisWriter(OnlineWriter):
    """Writes entities through WRITE_NEWER (each one's fields and expiry, PEXPIREAT computed_at + TTL, at once, and
    only over an older snapshot), one script call per up to _TRANSACTION_ROWS rows (on a cluster, the rows of one
    hash slot). Every field is written (null included), so the whole hash changes at once.

    One thread, one connection per node: a batch is sent, then the replies of the batch before it are read, so
    Redis works on one batch while this process reads the last and encodes the next.
    """

    def __init__(self, store: RedisOnlineStore, view: FeatureView, mode: str):
        self._client = store.client if mode == "push" else store.sync_client
        self._timeout = None if mode == "push" else _SYNC_TIMEOUT  # a push waits as long as a read
        self._what = "push" if mode == "push" else "sync"
        self._prefix = store.prefix(view)
        self._fields = {name: bulk(name.encode()) for name, _ in view_schema(view)}
        # Per row: its key, and its arguments (expiry, then each column's ready-made field+value).
        self._key = b"$%d\r\n" + self._prefix.replace(b"%", b"%%") + b"%s\r\n"
        self._arguments = b"%s" * (1 + len(self._fields))
        self._width = 1 + 2 * len(self._fields)
        self._tail = bulk(mode.encode()) + bulk(b"%d" % self._width)
        self._connections: dict[redis.Redis, Connection] = {}  # one per node, taken from its pool for the whole sync
        # (connection, node, rows per script call)
        self._in_flight: list[tuple[Connection, redis.Redis, list[int]]] = []
        self._rows_stored = 0
        self.rows_written = 0  # rows stored over an older snapshot (or none); the others found a newer one
        self._failure: BaseException | None = None

    def _rows(self, batch: EncodedBatch, keep: np.ndarray, ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        """Each kept row's key and arguments; ids are the kept rows' ids."""
        lengths = (np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + len(self._prefix)).tolist()
        columns = []
        for name, column in batch.columns.items():
            field = self._fields[name]
            template = field.replace(b"%", b"%%") + b"$%d\r\n%s\r\n"
            values = column.values
            table = np.array([*map(template.__mod__, zip(map(len, values), values)), field + _NULL_BULK], dtype=object)
            columns.append(table[column.codes[keep]].tolist())
        moments, codes = np.unique(batch.expires_at_ms[keep], return_inverse=True)
        expiries = np.array([bulk(b"%d" % moment) for moment in moments.tolist()], dtype=object)[codes].tolist()
        keys = map(self._key.__mod__, zip(lengths, ids))
        return list(zip(keys, map(self._arguments.__mod__, zip(expiries, *columns))))

    def _call(self, rows: list[tuple[bytes, bytes]]) -> bytes:
        """One EVALSHA WRITE_NEWER over these rows."""
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (5 + len(rows) * (1 + self._width))
        keys, arguments = zip(*rows)
        return head + _WRITE_NEWER_CALL + bulk(b"%d" % len(rows)) + b"".join(keys) + self._tail + b"".join(arguments)

    def commands(self, batch: EncodedBatch, keep: np.ndarray) -> dict[redis.Redis, list[tuple[bytes, int]]]:
        """Each node's script calls for the kept rows of a batch, and how many rows each writes."""
        ids = batch.entity_ids if keep.all() else [entity_id for entity_id, kept in zip(batch.entity_ids, keep) if kept]
        rows = self._rows(batch, keep, ids)
        if not isinstance(self._client, RedisCluster):
            groups = {self._client: [rows[i : i + _TRANSACTION_ROWS] for i in range(0, len(rows), _TRANSACTION_ROWS)]}
        else:
            by_slot: dict[int, list[tuple[bytes, bytes]]] = {}
            for entity_id, row in zip(ids, rows):
                by_slot.setdefault(slot_of(self._prefix + entity_id), []).append(row)
            groups = {}
            for slot, slot_rows in by_slot.items():
                groups.setdefault(node_for(self._client, slot=slot), []).append(slot_rows)
        return {
            node: [(self._call(group), len(group)) for group in node_groups] for node, node_groups in groups.items()
        }

    def _connection(self, node: redis.Redis) -> Connection:
        if node not in self._connections:
            self._connections[node] = node.connection_pool.get_connection()
        return self._connections[node]

    def write(self, batch: EncodedBatch) -> None:
        self._raise_failure()
        keep = batch.unexpired()
        if not keep.any():
            return
        try:
            sent = []
            for node, calls in self.commands(batch, keep).items():
                connection = self._connection(node)
                payload = _LOAD_SCRIPT + b"".join(call for call, _ in calls)
                connection.send_packed_command([payload])  # type: ignore[no-untyped-call]  # unannotated in redis-py
                sent.append((connection, node, [rows for _, rows in calls]))
            self._collect()
            self._in_flight = sent
        except BaseException as error:
            self._fail(error)
            self._raise_failure()

    def _collect(self) -> None:
        """Reads the replies of the batch in flight: the script's SHA, then per script call the rows it wrote (the
        others found a newer snapshot)."""
        for connection, node, calls in self._in_flight:
            loaded = read(connection, 1, self._timeout)
            for rows in calls:
                (written,) = read(connection, 1, self._timeout)
                refused = errors(loaded) or errors([written])
                if refused:
                    raise redis.ResponseError(
                        f"Redis refused a write of the {self._what} at {describe(node)}: {refused[0]}"
                    )
                self._rows_stored += rows
                self.rows_written += written
        self._in_flight = []

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        for connection in self._connections.values():
            connection.disconnect()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is None:
            return
        raise OnlineStoreError(
            f"{describe(self._client)}: the {self._what} failed after {self._rows_stored} stored rows "
            f"({type(failure).__name__}: {failure}); earlier values stay readable and "
            + ("the next sync resumes" if self._what == "sync" else "a retry of the push completes it")
        ) from failure

    def finish(self) -> None:
        if self._failure is None:
            try:
                self._collect()
            except BaseException as error:
                self._fail(error)
        self._release()
        self._raise_failure()

    def _release(self) -> None:
        for node, connection in self._connections.items():
            node.connection_pool.release(connection)
        self._connections = {}

    def abort(self) -> None:
        # Unread replies of the batch in flight would confuse the connection's next user: it goes back closed.
        self._fail(self._failure or RuntimeError("aborted"))
        self._release()

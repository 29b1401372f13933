"""The online store: each entity's latest snapshot, replaced atomically and expiring after the view's TTL.

Two implementations honour one contract (feature_assets_tests/test_online_store.py runs against both):
Redis in production, and SQLite, the embedded default that needs no server. Values are stored in the
text form of `codec`; stores hand raw values back and `reads.FeatureReader` decodes them.

Redis layout, readable with plain redis-cli:
    features:<namespace>:<id>       hash: the snapshot's computed_at and one field per feature of one view;
                                    null is a single NUL byte ("\\x00"); the key has the view's TTL. The
                                    namespace is the entity (features:user:42) for the view named
                                    <entity>_features, and the view's name for any other view of that entity
                                    (features:user_order_features:42), so two views never share a hash
    featurestore:view:<view name>   hash: schema, definition version and the last completed sync,
                                    with the same TTL (a store that went quiet for a TTL starts over)
"""

import json
import queue
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import redis

from feature_assets.errors import ConfigError, DataError, OnlineStoreError
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import NULL_MARKER, EncodedBatch, encode_entity_id, view_schema
from feature_assets.serving.resp import bulk, read_replies

__all__ = ["SyncRecord", "OnlineWriter", "OnlineStore", "RedisOnlineStore", "SqliteOnlineStore"]


@dataclass(frozen=True)
class SyncRecord:
    """What the last completed sync of a view wrote: its schema (dtype and definition checksum per feature),
    and the newest snapshot time it covered."""

    version: str
    schema: tuple[tuple[str, str], ...]
    definitions: tuple[tuple[str, str], ...]
    watermark: datetime | None
    completed_at: datetime
    rows_written: int
    full: bool

    def to_json(self) -> dict[str, str]:
        return {
            "version": self.version,
            "schema": json.dumps(dict(self.schema)),
            "definitions": json.dumps(dict(self.definitions)),
            "last_sync_watermark": self.watermark.isoformat() if self.watermark else "",
            "last_sync_completed_at": self.completed_at.isoformat(),
            "last_sync_rows_written": str(self.rows_written),
            "last_sync_mode": "full" if self.full else "incremental",
        }

    @classmethod
    def from_json(cls, fields: dict[str, str]) -> "SyncRecord":
        try:
            watermark = fields["last_sync_watermark"]
            return cls(
                version=fields["version"],
                schema=tuple(json.loads(fields["schema"]).items()),
                definitions=tuple(json.loads(fields["definitions"]).items()),
                watermark=datetime.fromisoformat(watermark) if watermark else None,
                completed_at=datetime.fromisoformat(fields["last_sync_completed_at"]),
                rows_written=int(fields["last_sync_rows_written"]),
                full=fields["last_sync_mode"] == "full",
            )
        except (KeyError, ValueError) as error:
            raise DataError(f"the online store's sync record is unreadable ({error!r}); run a full resync") from None


class OnlineWriter(ABC):
    """Writes batches of one sync. Each entity is replaced whole; a failure leaves earlier values readable."""

    @abstractmethod
    def write(self, batch: EncodedBatch) -> None:
        """Queues or writes one batch; raises OnlineStoreError if an earlier batch failed."""

    @abstractmethod
    def finish(self) -> None:
        """Returns once every batch is stored; raises OnlineStoreError if any failed."""

    @abstractmethod
    def abort(self) -> None:
        """Stops writing; batches already stored stay."""

    def __enter__(self) -> "OnlineWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.finish()
        else:
            self.abort()


class OnlineStore(ABC):
    """Latest snapshot per entity of each feature view, as raw stored values (see codec for the form)."""

    kind: str

    @abstractmethod
    def writer(self, view: FeatureView, *, replace: bool = False) -> OnlineWriter:
        """A writer for one sync. replace=True also drops fields of an older schema."""

    @abstractmethod
    def read_row(self, view: FeatureView, entity_id: Any, fields: Sequence[str]) -> Sequence[Any] | None:
        """Stored values of `fields` (bytes or str; None for null), or None if the entity is missing or expired."""

    @abstractmethod
    def read_rows(self, requests: Sequence[tuple[FeatureView, Any, Sequence[str]]]) -> list[Sequence[Any] | None]:
        """Several entities, possibly of several views, in one exchange: per (view, entity id, fields) request what
        read_row returns for it."""

    @abstractmethod
    def read_columns(self, view: FeatureView, entity_ids: Sequence[Any], fields: Sequence[str]) -> list[Sequence[Any]]:
        """Many entities in few round trips, column by column: one sequence per field, entities in the order
        given, None for null. An entity is missing or expired exactly where the first field (the timestamp) is None."""

    @abstractmethod
    def last_sync(self, view: FeatureView) -> SyncRecord | None:
        """The record of the last completed sync, or None if there was none (or it expired)."""

    @abstractmethod
    def record_sync(self, view: FeatureView, record: SyncRecord) -> None:
        """Marks a sync complete; called only after its last batch is stored."""

    @abstractmethod
    def count_entities(self, view: FeatureView) -> int:
        """Entities of the view currently readable (not expired)."""

    @abstractmethod
    def key_of(self, view: FeatureView, entity_id: Any) -> str:
        """Where an entity lives, for error messages and for people with a store client."""

    @abstractmethod
    def describe(self) -> str:
        """The store's location without secrets."""

    @abstractmethod
    def close(self) -> None:
        """Releases connections; the store is unusable afterwards."""

    def __enter__(self) -> "OnlineStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_NULL_BULK = bulk(NULL_MARKER)
_PEXPIRE = b"*3\r\n$7\r\nPEXPIRE\r\n"
_DEL = b"*2\r\n$3\r\nDEL\r\n"
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


class RedisOnlineStore(OnlineStore):
    """Redis: a hash per entity. Use `from_url` with redis://, rediss:// (TLS) or unix:// URLs, password included."""

    kind = "redis"

    def __init__(self, client: redis.Redis):
        self.client = client
        self._prefixes: dict[str, bytes] = {}

    @classmethod
    def from_url(cls, url: str) -> "RedisOnlineStore":
        if not url.startswith(("redis://", "rediss://", "unix://")):
            # The URL may hold a password: name only its scheme.
            raise ConfigError(f"the Redis URL must start with redis://, rediss:// or unix://, not {url.split(':', 1)[0]!r}://")
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30))

    def describe(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        return f"redis {where} db {kwargs.get('db', 0)}"

    def unreachable(self, error: Exception) -> OnlineStoreError:
        return OnlineStoreError(f"{self.describe()}: {type(error).__name__}: {error}")

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

    def writer(self, view: FeatureView, *, replace: bool = False) -> OnlineWriter:
        return _RedisWriter(self, view, replace)

    def _checked(self, view: FeatureView, key: bytes, fields: Sequence[str], values: list) -> list | None:
        if values[0] is None:
            return None
        if None in values:
            absent = [field for field, value in zip(fields, values) if value is None]
            raise DataError(f"online value at {key.decode()} has no field {absent[0]!r}; run a full resync")
        if NULL_MARKER in values:
            return [None if value == NULL_MARKER else value for value in values]
        return values

    def read_row(self, view: FeatureView, entity_id: Any, fields: Sequence[str]) -> Sequence[Any] | None:
        key = self.prefix(view) + encode_entity_id(entity_id)
        try:
            values = self.client.execute_command("HMGET", key, *fields)
        except redis.ResponseError as error:
            raise DataError(f"online value at {key.decode()}: {error}") from None
        except redis.RedisError as error:
            raise self.unreachable(error) from None
        return self._checked(view, key, fields, values)

    def read_rows(self, requests: Sequence[tuple[FeatureView, Any, Sequence[str]]]) -> list[Sequence[Any] | None]:
        if len(requests) == 1:  # one command needs no pipeline (which costs ~30 us more)
            return [self.read_row(*requests[0])]
        keys = [self.prefix(view) + encode_entity_id(entity_id) for view, entity_id, _ in requests]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, (_, _, fields) in zip(keys, requests):
                    pipe.execute_command("HMGET", key, *fields)
                replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            raise self.unreachable(error) from None
        rows = []
        for key, (view, _, fields), values in zip(keys, requests, replies):
            if isinstance(values, redis.ResponseError):
                raise DataError(f"online value at {key.decode()}: {values}")
            rows.append(self._checked(view, key, fields, values))
        return rows

    def read_columns(self, view: FeatureView, entity_ids: Sequence[Any], fields: Sequence[str]) -> list[Sequence[Any]]:
        # Raw pipelined HMGETs parsed by hiredis: redis-py's pipeline costs ~20 us per command in Python and a
        # Lua loop ~9 us per key inside Redis (both measured); this is bound by Redis's own ~1.5 us per HMGET.
        ids = list(map(encode_entity_id, entity_ids))
        if not ids:
            return [[] for _ in fields]
        prefix = self.prefix(view)
        command = b"*%d\r\n$5\r\nHMGET\r\n$%%d\r\n" % (2 + len(fields)) + prefix.replace(b"%", b"%%") + b"%s\r\n"
        command += b"".join(bulk(field.encode()) for field in fields).replace(b"%", b"%%")
        payload = b"".join([command % (len(prefix) + len(entity_id), entity_id) for entity_id in ids])
        pool = self.client.connection_pool
        try:
            connection = pool.get_connection()
        except redis.RedisError as error:
            raise self.unreachable(error) from None
        try:
            connection.send_packed_command([payload])
            replies = read_replies(connection._sock, len(ids))
        except BaseException as error:
            connection.disconnect()
            if isinstance(error, (redis.RedisError, OSError)):
                raise self.unreachable(error) from None
            raise
        finally:
            pool.release(connection)
        try:
            columns = list(zip(*replies))  # transposed in C; an error reply is not iterable
        except TypeError:
            row = next(row for row, reply in enumerate(replies) if type(reply) is not list)
            raise DataError(f"online value at {(prefix + ids[row]).decode()}: {replies[row]}") from None
        # Membership tests scan a column in C; only a column holding a None (a missing entity, or a hash that lacks
        # the field) is compared row by row with the timestamp's, which is None exactly where the entity is missing.
        missing = None
        for column, field in enumerate(fields[1:], start=1):
            if None in columns[column]:
                if missing is None:
                    missing = np.equal(np.array(columns[0], dtype=object), None)
                holes = np.flatnonzero(np.equal(np.array(columns[column], dtype=object), None) & ~missing)
                if len(holes):
                    key = (prefix + ids[holes[0]]).decode()
                    raise DataError(f"online value at {key} has no field {field!r}; run a full resync")
        return [
            [None if value == NULL_MARKER else value for value in column] if NULL_MARKER in column else column
            for column in columns
        ]

    def last_sync(self, view: FeatureView) -> SyncRecord | None:
        try:
            fields = self.client.hgetall(self.meta_key(view))
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
            "null": "a single NUL byte (\\x00)",
        }
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=mapping)
                pipe.pexpire(key, int(view.online_ttl.total_seconds() * 1000))
                pipe.execute()
        except redis.RedisError as error:
            raise self.unreachable(error) from None

    def count_entities(self, view: FeatureView) -> int:
        pattern, cursor, count = self.prefix(view) + b"*", 0, 0
        try:
            while True:
                cursor, keys = self.client.scan(cursor, match=pattern, count=50_000)
                count += len(keys)
                if not cursor:
                    return count
        except redis.RedisError as error:
            raise self.unreachable(error) from None

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()


class _RedisWriter(OnlineWriter):
    """Streams batches as raw RESP on a connection of its own while the caller encodes the next batch.

    Per entity one HSET of every field (null included), so the whole hash changes at once, then a PEXPIRE.
    replace=True wraps DEL, HSET and PEXPIRE in MULTI/EXEC per entity (slower; only after a schema change).
    The RESP is assembled column by column from each column's distinct values. One thread sends, another
    reads the replies as they come (Redis never waits on a full socket); replies are counted, not parsed:
    every reply is one line and only an error reply holds a "-".
    """

    def __init__(self, store: RedisOnlineStore, view: FeatureView, replace: bool):
        self._store = store
        self._prefix = store.prefix(view)
        self._replace = replace
        self._fields = {name: bulk(name.encode()) for name, _ in view_schema(view)}
        # One bytes template per row: HSET key <every field>, PEXPIRE key ttl (in MULTI with a DEL first
        # if replacing). Filled with the key's length, the id and each column's ready-made field+value.
        key = b"$%d\r\n" + self._prefix.replace(b"%", b"%%") + b"%s\r\n"
        hset = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(self._fields)) + key + b"%s" * len(self._fields)
        pexpire = _PEXPIRE + key + bulk(b"%d" % int(view.online_ttl.total_seconds() * 1000))
        self._row = (_MULTI + _DEL + key + hset + pexpire + _EXEC) if replace else (hset + pexpire)
        self._lines_per_row = 8 if replace else 2
        self._rows_stored = 0
        self._failure: BaseException | None = None
        self._pool = store.client.connection_pool
        try:
            self._connection = self._pool.get_connection()
        except redis.RedisError as error:
            raise store.unreachable(error) from None
        # redis-py keeps the socket in _sock; using it directly is what lets one sync stream megabytes.
        self._sock = self._connection._sock
        # At most two encoded batches wait, so memory stays bounded whatever the table size.
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._sent: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._send_loop, name="online-writer-send", daemon=True),
            threading.Thread(target=self._receive_loop, name="online-writer-receive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _payload(self, batch: EncodedBatch) -> bytes:
        ids = batch.entity_ids
        lengths = (np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + len(self._prefix)).tolist()
        columns = []
        for name, column in batch.columns.items():
            field = self._fields[name]
            bulk = field.replace(b"%", b"%%") + b"$%d\r\n%s\r\n"
            values = column.values
            table = np.array([*map(bulk.__mod__, zip(map(len, values), values)), field + _NULL_BULK], dtype=object)
            columns.append(table[column.codes].tolist())
        heads = (lengths, ids, lengths, ids) if self._replace else (lengths, ids)
        rows = zip(*heads, *columns, lengths, ids)
        return b"".join(map(self._row.__mod__, rows))

    def write(self, batch: EncodedBatch) -> None:
        self._raise_failure()
        if len(batch):
            self._queue.put((self._payload(batch), len(batch)))

    def _fail(self, error: BaseException) -> None:
        """Records the first failure (handed to the caller's thread by _raise_failure) and stops both threads."""
        if self._failure is None:
            self._failure = error
        self._connection.disconnect()

    def _send_loop(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if self._failure is None:  # after a failure, keep taking batches so the caller never blocks
                    payload, rows = item
                    try:
                        self._sock.sendall(payload)
                    except BaseException as error:
                        self._fail(error)
                    else:
                        self._sent.put(rows)
        finally:
            self._sent.put(None)

    def _receive_loop(self) -> None:
        try:
            self._count_replies()
        except BaseException as error:
            self._fail(error)

    def _count_replies(self) -> None:
        expected = seen = 0
        last, sending = b"\n", True  # the byte before the data: a reply starts after a newline
        while sending or seen < expected:
            while sending and (seen >= expected or not self._sent.empty()):
                rows = self._sent.get()  # blocks only while every row sent so far is acknowledged
                if rows is None:
                    sending = False
                else:
                    expected += rows * self._lines_per_row
            if seen >= expected:
                continue
            data = self._sock.recv(1 << 20)
            if not data:
                raise redis.ConnectionError("Redis closed the connection")
            chunk = last + data
            error_at = chunk.find(b"\n-")
            if error_at >= 0:
                row = (seen + chunk[:error_at].count(b"\r\n")) // self._lines_per_row
                end = chunk.find(b"\r\n", error_at)
                message = chunk[error_at + 2 : end if end >= 0 else None].decode(errors="replace")
                raise redis.ResponseError(f"Redis refused the write of row {row} of the sync: {message}")
            seen += chunk.count(b"\r\n")
            self._rows_stored = seen // self._lines_per_row
            last = data[-1:]

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is None:
            return
        raise OnlineStoreError(
            f"{self._store.describe()}: the sync failed after {self._rows_stored} stored rows "
            f"({type(failure).__name__}: {failure}); earlier values stay readable and the next sync resumes"
        ) from failure

    def finish(self) -> None:
        self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._release()
        self._raise_failure()

    def _release(self) -> None:
        # Replies were read past redis-py's parser: the connection goes back to the pool closed, reopened on use.
        self._connection.disconnect()
        self._pool.release(self._connection)

    def abort(self) -> None:
        self._failure = self._failure or RuntimeError("aborted")
        self._connection.disconnect()  # unblocks a send or receive in progress
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._pool.release(self._connection)


class SqliteOnlineStore(OnlineStore):
    """SQLite: a table per view (online_<view>), values as TEXT, SQL NULL for null, an expires_at per row."""

    kind = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._con: sqlite3.Connection | None = None
        self._sql: dict[tuple, str] = {}

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode; transactions are explicit so a batch is stored whole or not at all.
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            con.execute("pragma journal_mode = wal")  # readers are not blocked by a sync
            con.execute("pragma synchronous = normal")
            con.execute(
                "create table if not exists featurestore_views (name text primary key, record text not null, expires_at real not null)"
            )
            self._con = con
        return self._con

    @staticmethod
    def table(view: FeatureView) -> str:
        return f"online_{view.name}"

    def key_of(self, view: FeatureView, entity_id: Any) -> str:
        return f"{self.table(view)}[{view.entity_key}={encode_entity_id(entity_id).decode()}]"

    def _columns(self, view: FeatureView) -> list[str]:
        rows = self._connect().execute(f'pragma table_info("{self.table(view)}")').fetchall()
        return [row[1] for row in rows]

    def writer(self, view: FeatureView, *, replace: bool = False) -> OnlineWriter:
        con = self._connect()
        table = self.table(view)
        expected = ["entity_id", "expires_at", *(name for name, _ in view_schema(view))]
        con.execute("begin immediate")
        try:
            if replace or self._columns(view) != expected:
                con.execute(f'drop table if exists "{table}"')
                columns = ", ".join(f'"{name}" text' for name, _ in view_schema(view))
                con.execute(
                    f'create table "{table}" (entity_id text primary key, expires_at real not null, {columns}) without rowid'
                )
            con.execute(f'delete from "{table}" where expires_at <= ?', (time.time(),))
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return _SqliteWriter(con, table, view, len(expected))

    def _select(self, view: FeatureView, fields: Sequence[str], many: bool) -> str:
        cache_key = (view.name, tuple(fields), many)
        sql = self._sql.get(cache_key)
        if sql is None:
            columns = ", ".join(f'"{field}"' for field in fields)
            table = self.table(view)
            if many:
                sql = f'select entity_id, {columns} from "{table}" where entity_id in (select value from json_each(?)) and expires_at > ?'
            else:
                sql = f'select {columns} from "{table}" where entity_id = ? and expires_at > ?'
            sql = self._sql[cache_key] = sql
        return sql

    def read_row(self, view: FeatureView, entity_id: Any, fields: Sequence[str]) -> Sequence[Any] | None:
        try:
            return self._connect().execute(
                self._select(view, fields, False), (encode_entity_id(entity_id).decode(), time.time())
            ).fetchone()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return None
            raise OnlineStoreError(f"{self.describe()}: {error}") from None

    def read_rows(self, requests: Sequence[tuple[FeatureView, Any, Sequence[str]]]) -> list[Sequence[Any] | None]:
        return [self.read_row(view, entity_id, fields) for view, entity_id, fields in requests]

    def read_columns(self, view: FeatureView, entity_ids: Sequence[Any], fields: Sequence[str]) -> list[Sequence[Any]]:
        ids = [encode_entity_id(entity_id).decode() for entity_id in entity_ids]
        try:
            found = {
                row[0]: row[1:]
                for row in self._connect().execute(self._select(view, fields, True), (json.dumps(ids), time.time()))
            }
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise OnlineStoreError(f"{self.describe()}: {error}") from None
            found = {}
        blank = (None,) * len(fields)
        return [list(column) for column in zip(*(found.get(entity_id, blank) for entity_id in ids))] or [[] for _ in fields]

    def last_sync(self, view: FeatureView) -> SyncRecord | None:
        row = self._connect().execute(
            "select record from featurestore_views where name = ? and expires_at > ?", (view.name, time.time())
        ).fetchone()
        return None if row is None else SyncRecord.from_json(json.loads(row[0]))

    def record_sync(self, view: FeatureView, record: SyncRecord) -> None:
        self._connect().execute(
            "insert or replace into featurestore_views values (?, ?, ?)",
            (view.name, json.dumps(record.to_json()), time.time() + view.online_ttl.total_seconds()),
        )

    def count_entities(self, view: FeatureView) -> int:
        try:
            return self._connect().execute(
                f'select count(*) from "{self.table(view)}" where expires_at > ?', (time.time(),)
            ).fetchone()[0]
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return 0
            raise

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class _SqliteWriter(OnlineWriter):
    """One transaction per batch: INSERT OR REPLACE of whole rows, bound column by column."""

    def __init__(self, con: sqlite3.Connection, table: str, view: FeatureView, width: int):
        self._con = con
        self._ttl = view.online_ttl.total_seconds()
        self._sql = f'insert or replace into "{table}" values ({", ".join("?" * width)})'

    def write(self, batch: EncodedBatch) -> None:
        if not len(batch):
            return
        columns = []
        for column in batch.columns.values():
            table = np.array([value.decode() for value in column.values] + [None], dtype=object)
            columns.append(table[column.codes].tolist())
        ids = [entity_id.decode() for entity_id in batch.entity_ids]
        con = self._con
        con.execute("begin immediate")
        try:
            con.executemany(self._sql, zip(ids, repeat(time.time() + self._ttl), *columns))
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass

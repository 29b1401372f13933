"""The SQLite online store, the embedded default that needs no server: a table per view in one file."""

import json
import sqlite3
import time
from collections.abc import Collection, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from feature_assets.errors import OnlineStoreError
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import EncodedBatch, encode_entity_id, view_schema
from feature_assets.serving.online_store.base import OnlineStore, OnlineWriter, SyncRecord

__all__ = ["SqliteOnlineStore"]


class SqliteOnlineStore(OnlineStore):
    """SQLite: a table per view (online_<view>), values as TEXT, SQL NULL for null, an expires_at per row."""

    kind = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._con: sqlite3.Connection | None = None
        self._sql: dict[tuple[str, tuple[str, ...], bool], str] = {}  # (view, fields, many) -> select

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
                "create table if not exists featurestore_views "
                "(name text primary key, record text not null, expires_at real not null)"
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

    def writer(self, view: FeatureView, *, replace: bool = False, push: bool = False) -> OnlineWriter:
        con = self._connect()
        table = self.table(view)
        expected = ["entity_id", "expires_at", *(name for name, _ in view_schema(view))]
        con.execute("begin immediate")
        try:
            if replace or self._columns(view) != expected:
                con.execute(f'drop table if exists "{table}"')
                columns = ", ".join(f'"{name}" text' for name, _ in view_schema(view))
                con.execute(
                    f'create table "{table}" '
                    f"(entity_id text primary key, expires_at real not null, {columns}) without rowid"
                )
            if not push:  # a sync clears expired rows; a push (one request) leaves that to it
                con.execute(f'delete from "{table}" where expires_at <= ?', (time.time(),))
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return _SqliteWriter(con, table, expected, push)

    def _select(self, view: FeatureView, fields: Sequence[str], many: bool) -> str:
        cache_key = (view.name, tuple(fields), many)
        sql = self._sql.get(cache_key)
        if sql is None:
            columns = ", ".join(f'"{field}"' for field in fields)
            table = self.table(view)
            if many:
                sql = (
                    f'select entity_id, {columns} from "{table}" '
                    "where entity_id in (select value from json_each(?)) and expires_at > ?"
                )
            else:
                sql = f'select {columns} from "{table}" where entity_id = ? and expires_at > ?'
            sql = self._sql[cache_key] = sql
        return sql

    def read_row(
        self, view: FeatureView, entity_id: Any, fields: Sequence[str], *, timeout: float | None = None
    ) -> Sequence[Any] | None:
        try:
            row: tuple[Any, ...] | None = (
                self._connect()
                .execute(self._select(view, fields, False), (encode_entity_id(entity_id).decode(), time.time()))
                .fetchone()
            )
            return row
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return None
            raise OnlineStoreError(f"{self.describe()}: {error}") from None

    def read_rows(
        self, requests: Sequence[tuple[FeatureView, Any, Sequence[str]]], *, timeout: float | None = None
    ) -> list[Sequence[Any] | None]:
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
        return [list(column) for column in zip(*(found.get(entity_id, blank) for entity_id in ids))] or [
            [] for _ in fields
        ]

    def last_sync(self, view: FeatureView) -> SyncRecord | None:
        row = (
            self._connect()
            .execute(
                "select record from featurestore_views where name = ? and expires_at > ?", (view.name, time.time())
            )
            .fetchone()
        )
        return None if row is None else SyncRecord.from_json(json.loads(row[0]))

    def record_sync(self, view: FeatureView, record: SyncRecord) -> None:
        self._connect().execute(
            "insert or replace into featurestore_views values (?, ?, ?)",
            (view.name, json.dumps(record.to_json()), time.time() + view.online_ttl.total_seconds()),
        )

    def request_full_sync(self, view: FeatureView, reason: str) -> None:
        con = self._connect()
        row = con.execute("select record from featurestore_views where name = ?", (view.name,)).fetchone()
        if row is not None:
            record = {**json.loads(row[0]), "full_sync_due": reason}
            con.execute("update featurestore_views set record = ? where name = ?", (json.dumps(record), view.name))

    def count_entities(self, view: FeatureView) -> int:
        rows = self._unexpired(view, "count(*)")
        return rows[0][0] if rows else 0

    def entity_ids(self, view: FeatureView) -> set[bytes]:
        return {row[0].encode() for row in self._unexpired(view, "entity_id")}

    def _unexpired(self, view: FeatureView, columns: str) -> list[tuple[Any, ...]]:
        """`columns` over the view's unexpired entities ([] before its first sync), on a connection of its own: a
        sync lists the entities in another thread while it writes."""
        self._connect()  # creates the file and tables on first use
        with closing(sqlite3.connect(self.path, timeout=30)) as con:
            try:
                return con.execute(
                    f'select {columns} from "{self.table(view)}" where expires_at > ?', (time.time(),)
                ).fetchall()
            except sqlite3.OperationalError as error:
                if "no such table" in str(error):
                    return []
                raise OnlineStoreError(f"{self.describe()}: {error}") from None

    def delete(self, view: FeatureView, entity_ids: Collection[bytes]) -> None:
        con = self._connect()
        con.execute("begin immediate")
        try:
            con.executemany(
                f'delete from "{self.table(view)}" where entity_id = ?', ((i.decode(),) for i in entity_ids)
            )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class _SqliteWriter(OnlineWriter):
    """One transaction per batch: an upsert of whole rows, bound column by column, that keeps a newer snapshot (ISO
    8601 times of one form compare as text; an expired row is replaced whatever its time)."""

    def __init__(self, con: sqlite3.Connection, table: str, columns: list[str], push: bool):
        self._con = con
        timestamp = columns[2]
        kept = f'excluded."{timestamp}" > "{table}"."{timestamp}"'
        same = f'excluded."{timestamp}" = "{table}"."{timestamp}"'
        older = kept if push else f"({kept} or {same})"
        now = "(julianday('now') - 2440587.5) * 86400.0"
        self._sql = (
            f'insert into "{table}" values ({", ".join("?" * len(columns))}) on conflict (entity_id) do update set '
            + ", ".join(f'"{column}" = excluded."{column}"' for column in columns[1:])
            + f' where {older} or "{table}".expires_at <= {now}'
        )
        self.rows_written = 0

    def write(self, batch: EncodedBatch) -> None:
        keep = batch.unexpired()
        if not keep.any():
            return
        columns = []
        for column in batch.columns.values():
            table = np.array([value.decode() for value in column.values] + [None], dtype=object)
            columns.append(table[column.codes[keep]].tolist())
        ids = [entity_id.decode() for entity_id, kept in zip(batch.entity_ids, keep) if kept]
        expires_at = (batch.expires_at_ms[keep] / 1000).tolist()
        con = self._con
        con.execute("begin immediate")
        try:
            before = con.total_changes
            con.executemany(self._sql, zip(ids, expires_at, *columns))
            con.execute("commit")
            self.rows_written += con.total_changes - before
        except BaseException:
            con.execute("rollback")
            raise

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass

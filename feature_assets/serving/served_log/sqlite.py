"""The served-vector log in an SQLite file, the embedded default."""

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from feature_assets.serving.served_log.base import Record, ServedLog, ServedLogError, records_frame

__all__ = ["SqliteServedLog"]


class SqliteServedLog(ServedLog):
    """The table served_vectors in an SQLite file (may be the online store's), trimmed to max_length rows per view."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 1.0, **options: Any):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._con: sqlite3.Connection | None = None  # the writer thread's
        super().__init__(**options)

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=False)
        con.execute("pragma journal_mode = wal")
        con.execute(
            "create table if not exists served_vectors (id integer primary key autoincrement, view text not null, "
            "entity_key text not null, entity_id text not null, features text not null, model text, version text, "
            "served_at text not null)"
        )
        con.execute("create index if not exists served_vectors_view on served_vectors (view, id)")
        return con

    def _write(self, records: list[Record]) -> None:
        if self._con is None:
            self._con = self._connect()
        con = self._con
        con.execute("begin immediate")
        try:
            con.executemany(
                "insert into served_vectors (view, entity_key, entity_id, features, model, version, served_at) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                records,
            )
            for view in dict.fromkeys(record.view for record in records):
                con.execute(
                    "delete from served_vectors where view = ? and id <= "
                    "(select id from served_vectors where view = ? order by id desc limit 1 offset ?)",
                    (view, view, self.max_length),
                )
            con.execute("commit")
        except BaseException:
            if con.in_transaction:
                con.execute("rollback")
            raise

    def read(self, view: str, limit: int | None = None) -> pd.DataFrame:
        if not self.path.exists():
            return records_frame([])
        try:
            con = sqlite3.connect(self.path, timeout=5)
            try:
                exists = con.execute("select 1 from sqlite_master where name = 'served_vectors'").fetchone()
                rows = (
                    []
                    if not exists
                    else con.execute(
                        "select entity_key, entity_id, features, model, version, served_at from served_vectors "
                        "where view = ? order by id desc limit ?",
                        (view, -1 if limit is None else limit),
                    ).fetchall()[::-1]
                )
            finally:
                con.close()
        except sqlite3.Error as error:
            raise ServedLogError(f"served log at {self.describe()}: {error}") from None
        return records_frame(rows)

    def _close_backend(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

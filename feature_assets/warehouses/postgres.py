"""The PostgreSQL warehouse, the default in prod, at the libpq URL FEATURE_STORE_POSTGRES_URL (a secret)."""

import io
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg
from psycopg.conninfo import conninfo_to_dict

from feature_assets.errors import WarehouseError
from feature_assets.postgres import connect_postgres
from feature_assets.registry import LABEL_ROW, FeatureView, ViewRead, snapshot_column
from feature_assets.settings import validate_identifier
from feature_assets.warehouses.base import Warehouse, keyed_table_sql

__all__ = ["POSTGRES_STATEMENT_TIMEOUT_S", "PostgresWarehouse", "postgres_sql"]

# The server cancels any statement running longer than this (training builds included).
POSTGRES_STATEMENT_TIMEOUT_S = 3600
# Open connections pooled() keeps between uses; more at once are opened and closed again (a server's worker has up
# to 32 request threads, and PostgreSQL's default max_connections is 100).
_POOLED_IDLE = 8
# Connection parameters of FEATURE_STORE_POSTGRES_URL that dbt's profile takes as well.
_DBT_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout")


def postgres_sql(sql: str) -> str:
    """SQL with ? placeholders in psycopg's spelling (%s), a literal % kept as one."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresWarehouse(Warehouse):
    """One connection per `connect()`, its statements bounded by POSTGRES_STATEMENT_TIMEOUT_S."""

    kind = "postgres"

    def __init__(self, url: str, schema_name: str = "public"):
        self.url = url
        self.schema_name = schema_name
        self._idle: list[psycopg.Connection] = []  # pooled() connections between uses
        self._idle_lock = threading.Lock()

    def __repr__(self) -> str:
        # Never the URL: it holds the password.
        return f"PostgresWarehouse(schema_name={self.schema_name!r})"

    def _open(self) -> psycopg.Connection:
        schema = validate_identifier(self.schema_name, "warehouse schema")
        con = connect_postgres(
            self.url,
            "PostgreSQL warehouse",
            WarehouseError,
            options=f"-c timezone=UTC -c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_S * 1000}",
        )
        try:
            _create_if_missing(con, f"create schema if not exists {schema}")
            con.execute(f"set search_path to {schema}")
            con.commit()
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with self._open() as con:  # commits at the end, rolls back on error, closes
            yield con

    @contextmanager
    def pooled(self) -> Iterator[psycopg.Connection]:
        """An open connection of the pool (a new one when none is idle): a transaction, committed at the block's end
        and rolled back on error; a connection that failed is closed, not kept."""
        with self._idle_lock:
            con = self._idle.pop() if self._idle else None
        if con is None:
            con = self._open()
        try:
            yield con
            con.commit()
        except BaseException:
            con.close()
            raise
        with self._idle_lock:
            if len(self._idle) < _POOLED_IDLE:
                self._idle.append(con)
                return
        con.close()

    def create_keyed_table(
        self, con: Any, table: str, column_types: Mapping[str, str], unique: Sequence[str]
    ) -> list[str]:
        """As the base's, safe against another worker creating the table at the same moment (run it first in its
        transaction, as insert_new_rows does)."""
        sql, names = keyed_table_sql(table, column_types, unique)
        _create_if_missing(con, sql)
        return names

    def insert_new_rows(
        self,
        con: Any,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        column_types: Mapping[str, str],
        unique: Sequence[str],
    ) -> None:
        """One array per column, unnested in the server: a statement of thousands of placeholders takes psycopg
        longer to prepare than PostgreSQL to run."""
        names = self.create_keyed_table(con, table, column_types, unique)
        arrays = ", ".join(f"?::{kind}[]" for kind in column_types.values())
        self.execute(
            con,
            f"insert into {table} ({', '.join(names)}) select * from unnest({arrays}) on conflict do nothing",
            [_array_literal(columns[name]) for name in names],
        )

    def fetch(self, con: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        cur = con.execute(postgres_sql(sql), list(params))
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])

    def execute(self, con: Any, sql: str, params: Sequence[Any] = ()) -> None:
        con.execute(postgres_sql(sql), list(params))

    def append(self, con: Any, table: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """COPY of the frame as CSV."""
        self._copy_into(con, "create table if not exists", table, frame, column_types)

    def stage_frame(self, con: Any, name: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """COPY into a temporary table (gone with the connection), then ANALYZE: the planner sizes the join by it."""
        self._copy_into(con, "create temporary table", name, frame, column_types)
        self.execute(con, f"analyze {name}")

    def _copy_into(
        self, con: Any, create: str, table: str, frame: pd.DataFrame, column_types: Mapping[str, str]
    ) -> None:
        validate_identifier(table, "table")
        columns = ", ".join(validate_identifier(c, "column") for c in column_types)
        frame = frame[list(column_types)]
        ddl = ", ".join(f"{c} {t}" for c, t in column_types.items())
        self.execute(con, f"{create} {table} ({ddl})")
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f")
        with con.cursor().copy(f"copy {table} ({columns}) from stdin with (format csv)") as copy:
            copy.write(buffer.getvalue())

    def dbt_env(self) -> dict[str, str]:
        parts = conninfo_to_dict(self.url)
        return {
            "FEATURE_STORE_DBT_TARGET": "prod",
            "FEATURE_STORE_PG_HOST": str(parts.get("host", "127.0.0.1")),
            "FEATURE_STORE_PG_PORT": str(parts.get("port", "5432")),
            "FEATURE_STORE_PG_USER": str(parts.get("user", "postgres")),
            "FEATURE_STORE_PG_PASSWORD": str(parts.get("password", "")),
            "FEATURE_STORE_PG_DBNAME": str(parts.get("dbname", "postgres")),
            "FEATURE_STORE_PG_SCHEMA": self.schema_name,
            **{f"FEATURE_STORE_PG_{name.upper()}": str(parts[name]) for name in _DBT_PARAMETERS if name in parts},
        }

    def point_in_time_join(
        self,
        reads: Sequence[ViewRead],
        label_time: str,
        labels: str,
        label_columns: Sequence[str],
        pushed: Collection[str] = (),
    ) -> tuple[str, list[Any]]:
        """Per view, a LATERAL probe of the view's (entity key, timestamp) index for the newest snapshot strictly
        before the label time and within the TTL, features included."""
        # Per label row and view, one LATERAL probe of the view's (entity key, timestamp) index (the dbt build
        # creates it; check_join_indexes refuses a view without one, where each probe would scan the whole view):
        # walked backward from the label time, its first entry within the TTL is the snapshot. At 1M labels over
        # 2.7M snapshots this takes about 40% less CPU than merging labels and snapshots on one timeline per view (a
        # window over 3.7M rows, then a probe anyway for the features), and a view with another key needs no re-sort
        # of the labels.
        time, first_key = label_time, reads[0].key
        selected, probes, params = [f"labels.{column}" for column in [LABEL_ROW, *label_columns]], [], []
        for position, read in enumerate(reads):
            view, found = read.view, f"found_{position}"
            # The planner caches probes in a Memoize node, keyed by (key, label time). Where the labels are sorted
            # by the view's key (the first view's), that pays little even when the pairs repeat (the probes walk the
            # index in order) and costs a quarter of the build when they do not (0.85 s of CPU at 1M labels):
            # label_row, unique, in the probe's output makes the cache key unique, so the planner leaves the cache
            # out. Other views keep it: a country view's (key, label time) pairs repeat over most labels, and the
            # cache spares their probes.
            uncached = f"labels.{LABEL_ROW} as uncached_{LABEL_ROW}, " if read.key == first_key else ""
            features = ", ".join(f"snapshot.{f.name}" for f in read.features)
            probe = f"""
            select {uncached}snapshot.{view.timestamp}, {features}
            from {view.name} as snapshot
            where snapshot.{view.entity_key} = labels.{read.key}
                and snapshot.{view.timestamp} < labels.{time} and snapshot.{view.timestamp} >= labels.{time} - ?
            order by snapshot.{view.timestamp} desc
            limit 1"""
            params.append(view.online_ttl)
            if view.name in pushed:
                # The pushed rows' own probe of their (key, computed_at) primary key; a snapshot wins a tie.
                probe = f"""
            select * from (
                (select 0 as pushed, * from ({probe}) as from_snapshots)
                union all
                (select 1, {uncached}snapshot.{view.timestamp}, {features}
                from {view.name}_pushed as snapshot
                where snapshot.{view.entity_key} = labels.{read.key}
                    and snapshot.{view.timestamp} < labels.{time} and snapshot.{view.timestamp} >= labels.{time} - ?
                    and snapshot.loaded_at < labels.{time}
                order by snapshot.{view.timestamp} desc
                limit 1)
            ) as candidates
            order by {view.timestamp} desc, pushed
            limit 1"""
                params.append(view.online_ttl)
            probes.append(f"""
        left join lateral ({probe}
        ) as {found} on true""")
            selected += [
                f"{found}.{view.timestamp} as {snapshot_column(view)}",
                *(f"{found}.{f.name}" for f in read.features),
            ]
        return f"with {labels}\n select {', '.join(selected)}\n from labels{''.join(probes)}", params

    def check_join_indexes(self, con: Any, views: Sequence[FeatureView]) -> None:
        """Refuses a view with no index led by its (entity key, timestamp): the join probes it
        once per label row, and without it each probe scans the whole view (hours at a million labels). The dbt
        build creates it (feature_view_index); a view that does not exist is left to the build's own error."""
        for view in views:
            found = self.fetch(
                con,
                """
            select to_regclass(?) is null as missing, exists (
                select from pg_index as i
                join pg_attribute as key_column
                    on key_column.attrelid = i.indrelid and key_column.attnum = i.indkey[0]
                join pg_attribute as time_column
                    on time_column.attrelid = i.indrelid and time_column.attnum = i.indkey[1]
                where i.indrelid = to_regclass(?) and i.indisvalid and i.indpred is null
                    and key_column.attname = ? and time_column.attname = ?
            ) as indexed""",
                (view.name, view.name, view.entity_key, view.timestamp),
            ).iloc[0]
            if not found["missing"] and not found["indexed"]:
                raise WarehouseError(
                    f"{view.name} has no index on ({view.entity_key}, {view.timestamp}), which the point-in-time "
                    f"join probes once per label row; the dbt build of {view.name} creates it (rebuild the view, or "
                    "create it)"
                )

    @contextmanager
    def read_batches(
        self,
        con: Any,
        sql: str,
        params: Sequence[Any],
        *,
        name: str,
        columns: Sequence[str],
        dtypes: Mapping[str, Any],
        batch_rows: int,
        count_rows: Callable[[], int] | None,
    ) -> Iterator[Iterator[pd.DataFrame]]:
        """A server-side cursor, fetched batch_rows at a time; the rows become typed columns (ints with nulls stay
        ints)."""
        with con.cursor(name=name) as cursor:
            cursor.execute(postgres_sql(sql), list(params))

            def batches() -> Iterator[pd.DataFrame]:
                while rows := cursor.fetchmany(batch_rows):
                    yield _typed(columns, dtypes, rows)

            yield batches()


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f'"{value.isoformat(sep=" ")}"'
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _array_literal(values: Sequence[Any]) -> str:
    """An array in PostgreSQL's text form, cast by the statement: psycopg adapts a list element by element in Python,
    several times slower. Values are quoted and escaped, never spliced into SQL."""
    return "{" + ",".join(map(_element, values)) + "}"


def _typed(columns: Sequence[str], dtypes: Mapping[str, Any], rows: list[tuple]) -> pd.DataFrame:
    values = list(zip(*rows))
    return pd.DataFrame(
        {
            name: pd.array(column, dtype=dtypes[name]) if name in dtypes else pd.array(column)
            for name, column in zip(columns, values)
        }
    )


# PostgreSQL's `create ... if not exists` is not safe against a concurrent creator of the same name (two server
# workers' first pushes to a fresh warehouse): the loser fails on a catalog's unique index, meaning it now exists.
_CREATED_CONCURRENTLY = (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateSchema)


def _create_if_missing(con: psycopg.Connection, sql: str) -> None:
    """Runs a `create ... if not exists` as the first statement of a transaction; when a concurrent creator won, the
    transaction (which held nothing else) is rolled back and the object is there."""
    try:
        con.execute(sql)
    except _CREATED_CONCURRENTLY:
        con.rollback()

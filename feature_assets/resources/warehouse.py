"""The offline store: raw tables and the feature history, in DuckDB (local) or PostgreSQL (prod)."""

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import dagster as dg
import duckdb
import pandas as pd
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from feature_assets.errors import WarehouseError
from feature_assets.postgres import POSTGRES_CONNECT_TIMEOUT_S, connect_postgres, first_line
from feature_assets.settings import validate_identifier

__all__ = ["Warehouse", "POSTGRES_CONNECT_TIMEOUT_S", "POSTGRES_STATEMENT_TIMEOUT_S"]

# The server cancels any statement running longer than this (training builds included).
POSTGRES_STATEMENT_TIMEOUT_S = 3600
# Connection parameters of FEATURE_STORE_POSTGRES_URL that dbt's profile takes as well.
_DBT_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout")


class Warehouse(dg.ConfigurableResource):
    """A connection factory, not a connection: DuckDB locks its file, so every call opens and closes."""

    kind: Literal["duckdb", "postgres"]
    duckdb_path: str = Field(default="", description="DuckDB file (kind=duckdb).")
    postgres_url: str = Field(default="", description="libpq URL (kind=postgres); a secret, pass it as an EnvVar.")
    schema_name: str = Field(default="main", description="Schema holding raw tables and features.")

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A DB-API connection in UTC with the schema selected; commits on success, rolls back on error.

        UTC, whatever the server's or machine's zone: naive times written or read here are UTC, as the dbt models
        compute them; in another zone a timestamptz column would take or give wall times of that zone.
        """
        schema = validate_identifier(self.schema_name, "warehouse schema")
        if self.kind == "duckdb":
            try:
                con = duckdb.connect(self.duckdb_path)
            except duckdb.Error as error:
                # Typically the file's lock, held by a refresh, a sync or the UI: DuckDB admits one writing process.
                raise WarehouseError(f"cannot open the DuckDB warehouse: {first_line(error)}") from None
            try:
                con.execute("set timezone = 'UTC'")
                con.execute("begin")
                yield con
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
            finally:
                con.close()
        else:
            with self._postgres() as con:
                con.execute(f"create schema if not exists {schema}")
                con.execute(f"set search_path to {schema}")
                yield con

    def _postgres(self) -> psycopg.Connection:
        return connect_postgres(
            self.postgres_url,
            "PostgreSQL warehouse",
            WarehouseError,
            options=f"-c timezone=UTC -c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_S * 1000}",
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Runs one query with ? placeholders (values always bound, never spliced)."""
        with self.connect() as con:
            return self.fetch(con, sql, params)

    def fetch(self, con: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        if self.kind == "duckdb":
            return con.execute(sql, list(params)).df()
        cur = con.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])

    def execute(self, con: Any, sql: str, params: Sequence[Any] = ()) -> None:
        if self.kind == "duckdb":
            con.execute(sql, list(params))
        else:
            con.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))

    def table_exists(self, con: Any, table: str) -> bool:
        found = self.fetch(
            con,
            "select count(*) as n from information_schema.tables where table_schema = ? and table_name = ?",
            (self.schema_name, validate_identifier(table, "table")),
        )
        return int(found["n"].iloc[0]) > 0

    def append(self, con: Any, table: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """Appends a frame in bulk, creating the table with the declared SQL types if needed."""
        validate_identifier(table, "table")
        columns = ", ".join(validate_identifier(c, "column") for c in column_types)
        ddl = ", ".join(f"{c} {t}" for c, t in column_types.items())
        self.execute(con, f"create table if not exists {table} ({ddl})")
        frame = frame[list(column_types)]
        if self.kind == "duckdb":
            con.register("incoming_frame", frame)
            con.execute(f"insert into {table} ({columns}) select {columns} from incoming_frame")
            con.unregister("incoming_frame")
        else:
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f")
            with con.cursor().copy(f"copy {table} ({columns}) from stdin with (format csv)") as copy:
                copy.write(buffer.getvalue())

    def dbt_env(self) -> dict[str, str]:
        """Environment for the dbt profile (dbt_features/profiles.yml), so dbt writes where this reads."""
        if self.kind == "duckdb":
            return {"FEATURE_STORE_ENV": "local", "FEATURE_STORE_DUCKDB_PATH": self.duckdb_path}
        parts = conninfo_to_dict(self.postgres_url)
        return {
            "FEATURE_STORE_ENV": "prod",
            "FEATURE_STORE_PG_HOST": str(parts.get("host", "127.0.0.1")),
            "FEATURE_STORE_PG_PORT": str(parts.get("port", "5432")),
            "FEATURE_STORE_PG_USER": str(parts.get("user", "postgres")),
            "FEATURE_STORE_PG_PASSWORD": str(parts.get("password", "")),
            "FEATURE_STORE_PG_DBNAME": str(parts.get("dbname", "postgres")),
            "FEATURE_STORE_PG_SCHEMA": self.schema_name,
            **{f"FEATURE_STORE_PG_{name.upper()}": str(parts[name]) for name in _DBT_PARAMETERS if name in parts},
        }

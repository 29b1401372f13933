"""The offline store: raw tables and the feature history, in DuckDB (local), PostgreSQL or Spark."""

import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import duckdb
import pandas as pd
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from feature_assets.errors import WarehouseError
from feature_assets.local_spark import local_spark_url
from feature_assets.postgres import POSTGRES_CONNECT_TIMEOUT_S, connect_postgres, first_line
from feature_assets.settings import validate_identifier

__all__ = ["POSTGRES_CONNECT_TIMEOUT_S", "POSTGRES_STATEMENT_TIMEOUT_S", "Warehouse"]

# The server cancels any statement running longer than this (training builds included).
POSTGRES_STATEMENT_TIMEOUT_S = 3600
# Connection parameters of FEATURE_STORE_POSTGRES_URL that dbt's profile takes as well.
_DBT_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout")
# Spark SQL spells these two declared types its own way.
_SPARK_TYPES = {"varchar": "string", "double precision": "double"}
# Rows per Spark append (an insert of its own: Spark has no transactions, a failed append raises midway).
SPARK_APPEND_ROWS = 250_000
# dbt's targets (dbt_features/profiles.yml) for Spark: through Spark Connect, or a Thrift server or Databricks SQL.
SPARK_DBT_METHODS = {"session": "spark", "thrift": "spark_thrift", "http": "spark_http"}

# PySpark 4.3 warns on every conversion under pandas 3; the conversions this module uses (Arrow both ways, with
# timestamps, nulls and the str dtype) are covered by the Spark tests.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas >= 3", category=FutureWarning)


class _ClosedSessionReleases(logging.Filter):
    """Spark Connect acknowledges each consumed result in the background; one still in flight when the session is
    closed fails with SESSION_CLOSED, harmlessly (the server drops a closed session's results). Those warnings are
    dropped, any other is kept. (A logging setup with disable_existing_loggers=False re-enables this logger.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("ReleaseExecute failed") and "SESSION_CLOSED" in message)


logging.getLogger("pyspark.sql.connect.logging").addFilter(_ClosedSessionReleases())


class Warehouse(dg.ConfigurableResource):
    """A connection factory, not a connection: DuckDB locks its file, so every call opens and closes.

    On Spark a connection is a Spark Connect session, to the server at spark_remote or else to a local server
    serving spark_folder; each statement commits on its own (Spark has no transactions).
    """

    kind: Literal["duckdb", "postgres", "spark"]
    duckdb_path: str = Field(default="", description="DuckDB file (kind=duckdb).")
    postgres_url: str = Field(default="", description="libpq URL (kind=postgres); a secret, pass it as an EnvVar.")
    spark_remote: str = Field(
        default="",
        description="Spark Connect URL sc://host:port/;token=... (kind=spark); a secret, pass it as an EnvVar.",
    )
    spark_folder: str = Field(
        default="",
        description="Folder of the local Spark server's tables and catalog (kind=spark without spark_remote).",
    )
    spark_dbt_method: Literal["session", "thrift", "http"] = Field(
        default="session",
        description="How dbt reaches Spark (kind=spark): through spark_remote, a Thrift server or HTTP.",
    )
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
        elif self.kind == "spark":
            with self._spark() as session:
                session.sql(f"create database if not exists {schema}")
                session.sql(f"use {schema}")
                yield session
        else:
            with self._postgres() as con:
                con.execute(f"create schema if not exists {schema}")
                con.execute(f"set search_path to {schema}")
                yield con

    def spark_url(self) -> str:
        """The Spark Connect URL: spark_remote, or the local server (started if none runs)."""
        return self.spark_remote or local_spark_url(Path(self.spark_folder))

    @contextmanager
    def _spark(self) -> Iterator[Any]:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession

        try:
            session = SparkSession.builder.remote(self.spark_url()).create()
            session.conf.set("spark.sql.session.timeZone", "UTC")
        except PySparkException as error:
            # Never echo the URL: it may hold a token.
            raise WarehouseError(f"cannot connect to the Spark warehouse: {first_line(error)}") from None
        try:
            yield session
        finally:
            session.stop()

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
        if self.kind == "spark":
            return con.sql(sql, args=_spark_values(params)).toPandas()
        cur = con.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])

    def execute(self, con: Any, sql: str, params: Sequence[Any] = ()) -> None:
        if self.kind == "duckdb":
            con.execute(sql, list(params))
        elif self.kind == "spark":
            con.sql(sql, args=_spark_values(params)).collect()
        else:
            con.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))

    def table_exists(self, con: Any, table: str) -> bool:
        if self.kind == "spark":
            return con.catalog.tableExists(f"{self.schema_name}.{validate_identifier(table, 'table')}")
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
        frame = frame[list(column_types)]
        if self.kind == "spark":
            ddl = ", ".join(f"{c} {_SPARK_TYPES.get(t, t)}" for c, t in column_types.items())
            self.execute(con, f"create table if not exists {table} ({ddl}) using parquet")
            # Arrow carries the frame; the table's own types, by position, decide how its values land. In slices: the
            # server holds each one in memory whole (2.7M rows at once exhaust a 2 GB driver).
            for start in range(0, len(frame), SPARK_APPEND_ROWS):
                con.createDataFrame(frame.iloc[start : start + SPARK_APPEND_ROWS], schema=ddl).write.insertInto(table)
            return
        ddl = ", ".join(f"{c} {t}" for c, t in column_types.items())
        self.execute(con, f"create table if not exists {table} ({ddl})")
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
            return {"FEATURE_STORE_DBT_TARGET": "local", "FEATURE_STORE_DUCKDB_PATH": self.duckdb_path}
        if self.kind == "spark":
            # The session method follows SPARK_REMOTE to the server this resource reads; thrift and http read their
            # host and token from FEATURE_STORE_SPARK_* (profiles.yml).
            remote = {}
            if self.spark_dbt_method == "session":
                # dbt-spark asks for the Hive catalog on every connection; Spark Connect keeps the server's (the one
                # wanted) and warns, twice per dbt node, as PySpark does under pandas 3.
                remote = {
                    "SPARK_REMOTE": self.spark_url(),
                    "PYTHONWARNINGS": "ignore:Failed to set spark.sql.catalogImplementation:UserWarning,"
                    "ignore:PySpark does not yet fully support pandas:FutureWarning",
                }
            return {
                "FEATURE_STORE_DBT_TARGET": SPARK_DBT_METHODS[self.spark_dbt_method],
                "FEATURE_STORE_SPARK_SCHEMA": self.schema_name,
                **remote,
            }
        parts = conninfo_to_dict(self.postgres_url)
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


def _spark_values(params: Sequence[Any]) -> list[Any]:
    """Bound values for Spark: a naive time is UTC here, and PySpark would read it in the process's own zone."""
    return [
        value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value for value in params
    ]

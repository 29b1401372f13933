"""The Spark warehouse, through Spark Connect: the server at a remote URL (a secret: it may hold a token), or a
local server serving a folder of tables. PySpark is imported only when a session is opened."""

import logging
import re
import socket
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from time import time_ns
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from feature_assets.errors import ConfigError, WarehouseError
from feature_assets.local_spark import local_spark_url
from feature_assets.postgres import first_line
from feature_assets.registry import LABEL_ROW, ViewRead, snapshot_column
from feature_assets.settings import validate_identifier
from feature_assets.warehouses.base import Warehouse

__all__ = ["COMPACT_AFTER_APPENDS", "SPARK_APPEND_ROWS", "SPARK_DBT_METHODS", "SparkWarehouse"]

# Spark SQL spells these declared types its own way.
_SPARK_TYPES = {"varchar": "string", "text": "string", "double precision": "double"}
# The partition column of a keyless append table (insert_new_rows): one partition per append, named by a time-ordered
# id, so the first append of a row sorts first.
_APPEND_ID = "append_id"
_APPEND_ID_FORM = re.compile(r"[0-9]{20}-[0-9a-f]{32}")
# Appends past which compact_inserted merges them into one partition; partitions dropped per statement.
COMPACT_AFTER_APPENDS = 100
_DROPS_PER_STATEMENT = 200
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


class SparkWarehouse(Warehouse):
    """A connection is a Spark Connect session, to the server at `remote` or else to a local server serving
    `folder`; each statement commits on its own (Spark has no transactions). dbt reaches Spark by `dbt_method`:
    session (through the same Spark Connect server), thrift (a Spark Thrift server) or http (Databricks SQL)."""

    kind = "spark"

    def __init__(
        self,
        *,
        remote: str = "",
        folder: str | Path = "",
        schema_name: str = "featurestore",
        dbt_method: str = "session",
    ):
        if dbt_method not in SPARK_DBT_METHODS:
            raise ConfigError(f"the Spark dbt method must be one of {', '.join(SPARK_DBT_METHODS)}")
        self.remote = remote
        self.folder = str(folder)
        self.schema_name = schema_name
        self.dbt_method = dbt_method

    def __repr__(self) -> str:
        # Never the remote URL: it may hold a token.
        return f"SparkWarehouse(folder={self.folder!r}, schema_name={self.schema_name!r})"

    def spark_url(self) -> str:
        """The Spark Connect URL: the remote one, or the local server's (started if none runs)."""
        return self.remote or local_spark_url(Path(self.folder))

    @contextmanager
    def connect(self) -> Iterator[Any]:
        schema = validate_identifier(self.schema_name, "warehouse schema")
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession

        url = self.spark_url()
        _check_listening(url)
        try:
            session = SparkSession.builder.remote(url).create()
            session.conf.set("spark.sql.session.timeZone", "UTC")
        except PySparkException as error:
            # Never echo the URL: it may hold a token.
            raise WarehouseError(f"cannot connect to the Spark warehouse: {first_line(error)}") from None
        try:
            session.sql(f"create database if not exists {schema}")
            session.sql(f"use {schema}")
            yield session
        finally:
            session.stop()

    def fetch(self, con: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return con.sql(sql, args=_spark_values(params)).toPandas()

    def execute(self, con: Any, sql: str, params: Sequence[Any] = ()) -> None:
        con.sql(sql, args=_spark_values(params)).collect()

    def table_exists(self, con: Any, table: str) -> bool:
        return con.catalog.tableExists(f"{self.schema_name}.{validate_identifier(table, 'table')}")

    def append(self, con: Any, table: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        validate_identifier(table, "table")
        frame = frame[list(column_types)]
        ddl = _spark_ddl(column_types)
        self.execute(con, f"create table if not exists {table} ({ddl}) using parquet")
        # Arrow carries the frame; the table's own types, by position, decide how its values land. In slices: the
        # server holds each one in memory whole (2.7M rows at once exhaust a 2 GB driver).
        for start in range(0, len(frame), SPARK_APPEND_ROWS):
            con.createDataFrame(frame.iloc[start : start + SPARK_APPEND_ROWS], schema=ddl).write.insertInto(table)

    def insert_new_rows(
        self,
        con: Any,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        column_types: Mapping[str, str],
        unique: Sequence[str],
    ) -> None:
        """Spark tables have no keys, and concurrent appends to one Parquet table share its staging folder (the
        first to finish deletes it under the others). So each call writes its rows as a partition of their own of
        `<table>_appends`, by a dynamic partition overwrite (staged in a folder of its own), and `table` is a view of
        it that keeps each `unique` value's first append: a retried append reads as one."""
        appends = validate_identifier(f"{table}_appends", "table")
        names = list(column_types)
        ddl = f"{_spark_ddl(column_types)}, {_APPEND_ID} string"
        if not self.table_exists(con, table):
            keys = ", ".join(validate_identifier(name, "column") for name in unique)
            first = (
                f"select {', '.join(names)} from (select *, row_number() over (partition by {keys} "
                f"order by {_APPEND_ID}) as nth from {appends}) as appended where nth = 1"
            )
            self._create_if_missing(con, f"create table if not exists {appends} ({ddl}) using parquet "
                                         f"partitioned by ({_APPEND_ID})")  # fmt: skip
            self._create_if_missing(con, f"create view if not exists {table} as {first}")
        append_id = f"{time_ns():020d}-{uuid.uuid4().hex}"
        rows = list(zip(*(_spark_values(columns[name]) for name in names), repeat(append_id), strict=False))
        # Overwrite replaces the partitions the rows fall in, this append's own, and no other (the session's
        # setting, whatever the server's default).
        con.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
        con.createDataFrame(rows, schema=ddl).write.insertInto(appends, overwrite=True)

    def compact_inserted(self, con: Any, table: str, unique: Sequence[str]) -> int:
        """Past COMPACT_AFTER_APPENDS appends, each key's first row of them all goes into the oldest append's partition
        (through a table of their own: Spark does not overwrite a table it reads) and the other appends are dropped.
        The view reads the same rows at every step: a row is in the oldest partition or still in its own, and the
        first of equal rows is the same row. An append written meanwhile is not among those merged, and stays."""
        appends = validate_identifier(f"{table}_appends", "table")
        if not self.table_exists(con, appends):
            return 0
        ids = sorted(str(value).split("=", 1)[1] for value in self.fetch(con, f"show partitions {appends}").iloc[:, 0])
        if len(ids) < COMPACT_AFTER_APPENDS:
            return 0
        if not all(_APPEND_ID_FORM.fullmatch(append_id) for append_id in ids):
            raise WarehouseError(f"{appends} holds a partition this store did not write; it is left as it is")
        keys = ", ".join(validate_identifier(name, "column") for name in unique)
        names = [name for name in self.fetch(con, f"select * from {appends} limit 0").columns if name != _APPEND_ID]
        merging = f"{appends}_merging"
        self.execute(con, f"drop table if exists {merging}")
        self.execute(
            con,
            f"create table {merging} using parquet as select {', '.join(names)} from (select *, row_number() over "
            f"(partition by {keys} order by {_APPEND_ID}) as nth from {appends} where {_APPEND_ID} <= ?) as appended "
            "where nth = 1",
            [ids[-1]],
        )
        con.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
        self.execute(con, f"insert overwrite table {appends} partition ({_APPEND_ID}) "
                          f"select {', '.join(names)}, '{ids[0]}' from {merging}")  # fmt: skip
        for start in range(1, len(ids), _DROPS_PER_STATEMENT):
            specs = ", ".join(f"partition ({_APPEND_ID} = '{i}')" for i in ids[start : start + _DROPS_PER_STATEMENT])
            self.execute(con, f"alter table {appends} drop if exists {specs}")
        self.execute(con, f"drop table {merging}")
        return len(ids)

    def _create_if_missing(self, con: Any, sql: str) -> None:
        """A `create ... if not exists` that tolerates a concurrent creator (the catalog refuses the later one)."""
        from pyspark.errors import AnalysisException

        try:
            self.execute(con, sql)
        except AnalysisException as error:
            if "ALREADY_EXISTS" not in (error.getCondition() or ""):
                raise

    def stage_frame(self, con: Any, name: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """The frame through Arrow, as a temporary view of the session."""
        con.createDataFrame(frame[list(column_types)], schema=_spark_ddl(column_types)).createOrReplaceTempView(
            validate_identifier(name, "relation")
        )

    def stage_query(self, con: Any, name: str, sql: str, params: Sequence[Any] = ()) -> None:
        """A temporary view of the query (Spark computes it where it is read)."""
        con.sql(sql, args=_spark_values(params)).createOrReplaceTempView(validate_identifier(name, "relation"))

    def dbt_env(self) -> dict[str, str]:
        # The session method follows SPARK_REMOTE to the server this warehouse reads; thrift and http read their
        # host and token from FEATURE_STORE_SPARK_* (profiles.yml).
        remote = {}
        if self.dbt_method == "session":
            # dbt-spark asks for the Hive catalog on every connection; Spark Connect keeps the server's (the one
            # wanted) and warns, twice per dbt node, as PySpark does under pandas 3.
            remote = {
                "SPARK_REMOTE": self.spark_url(),
                "PYTHONWARNINGS": "ignore:Failed to set spark.sql.catalogImplementation:UserWarning,"
                "ignore:PySpark does not yet fully support pandas:FutureWarning",
            }
        return {
            "FEATURE_STORE_DBT_TARGET": SPARK_DBT_METHODS[self.dbt_method],
            "FEATURE_STORE_SPARK_SCHEMA": self.schema_name,
            **remote,
        }

    def replace_table(self, con: Any, table: str, sql: str, params: Sequence[Any] = ()) -> None:
        """Spark has no transactions (and its session catalog's Parquet tables no `create or replace`): the rows
        are built under a name of their own first and swapped in only once they are whole."""
        validate_identifier(table, "table")
        building = f"{table}__building"
        self.execute(con, f"drop table if exists {building}")
        self.execute(con, f"create table {building} as {sql}", params)
        self.execute(con, f"drop table if exists {table}")
        self.execute(con, f"alter table {building} rename to {table}")

    def point_in_time_join(
        self,
        reads: Sequence[ViewRead],
        label_time: str,
        labels: str,
        label_columns: Sequence[str],
        pushed: Collection[str] = (),
    ) -> tuple[str, list[Any]]:
        """Per view, a running window over labels and snapshots (and pushed rows) on one timeline per entity."""
        # Spark has no ASOF join, and a range join bounded by the TTL grows with the snapshots per TTL. Per view, the
        # labels and the snapshots go on one timeline per entity (a shuffle by entity key, then a sort within each),
        # ordered by time with a label before a snapshot of the same time (a snapshot stamped t is not available at
        # t). A running last(..., ignore nulls) hands each label row the entity's newest snapshot so far, as one
        # struct of its timestamp and features: the struct is never null, so a feature that is null in that snapshot
        # stays null (last() over the features themselves would reach back to an older value). Older than the TTL,
        # it is dropped.
        # A pushed row joins the timeline when it is both computed and loaded, which can be after a newer snapshot:
        # there the running pick is max_by on (computed_at, snapshot before pushed row), not the last one to arrive.
        time = label_time
        steps, params, joins = [labels], [], []
        selected = [f"labels.{column}" for column in [LABEL_ROW, *label_columns]]
        for position, read in enumerate(reads):
            view, found = read.view, f"found_{position}"
            fields = ", ".join(f"'{name}', {name}" for name in [view.timestamp, *(f.name for f in read.features)])
            with_push = view.name in pushed
            # With pushed rows, each row's rank in the pick: (computed_at, 1 for a snapshot, 0 for a pushed row).
            label_rank, snapshot_rank = (
                (", null as recency", f", struct({view.timestamp}, 1)") if with_push else ("", "")
            )
            timeline = f"""
            select {read.key} as entity, {time} as at_time, 0 as side, {LABEL_ROW}, null as snapshot{label_rank}
            from labels
            where {read.key} is not null
            union all
            select {view.entity_key}, {view.timestamp}, 1, null, named_struct({fields}){snapshot_rank}
            from {view.name}"""
            if with_push:
                timeline += f"""
            union all
            select {view.entity_key}, greatest({view.timestamp}, loaded_at), 1, null, named_struct({fields}),
                struct({view.timestamp}, 0)
            from {view.name}_pushed"""
            newest = "max_by(snapshot, recency)" if with_push else "last(snapshot, true)"
            steps.append(f"""
        timeline_{position} as ({timeline}
        ),
        {found} as (
            select {LABEL_ROW}, case when snapshot.{view.timestamp} >= at_time - ? then snapshot end as snapshot
            from (
                select {LABEL_ROW}, at_time, side, {newest} over (
                    partition by entity order by at_time, side rows between unbounded preceding and current row
                ) as snapshot
                from timeline_{position}
            )
            where side = 0
        )""")
            params.append(view.online_ttl)
            joins.append(f"\n left join {found} on {found}.{LABEL_ROW} = labels.{LABEL_ROW}")
            selected += [
                f"{found}.snapshot.{view.timestamp} as {snapshot_column(view)}",
                *(f"{found}.snapshot.{f.name}" for f in read.features),
            ]
        return f"with {','.join(steps)}\n select {', '.join(selected)}\n from labels{''.join(joins)}", params

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
        """Spark has no cursor: when the rows outnumber a batch, they are staged in a table partitioned by a hash of
        the first column, and each partition is one frame, read alone (partition pruning) through Arrow. The staged
        table is dropped at exit."""
        parts = -(-(count_rows() if count_rows is not None else 0) // batch_rows)
        if parts <= 1:
            yield iter([_typed(self.fetch(con, sql, params), dtypes)])
            return
        staged = validate_identifier(name, "staging table")
        try:
            self.execute(
                con,
                f"create table {staged} using parquet partitioned by (sync_part) as "
                f"select *, pmod(xxhash64({columns[0]}), {parts}) as sync_part from ({sql}) as latest",
                params,
            )
            selected = ", ".join(columns)
            yield (
                _typed(self.fetch(con, f"select {selected} from {staged} where sync_part = {part}"), dtypes)
                for part in range(parts)
            )
        finally:
            self.execute(con, f"drop table if exists {staged}")


# Spark Connect's default port, where a URL names none.
_SPARK_CONNECT_PORT = 15002
_PROBE_TIMEOUT_S = 10


def _check_listening(url: str) -> None:
    """Refuses at once a Spark Connect URL where nothing listens: the client would retry a refused connection for ten
    minutes (its default policy), and a push or a command would hang that long saying nothing. Names the host and
    port, never the rest of the URL (it may hold a token)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or _SPARK_CONNECT_PORT
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise WarehouseError(
            f"cannot connect to the Spark warehouse: nothing answers at {host}:{port} ({reason})"
        ) from None


def _spark_ddl(column_types: Mapping[str, str]) -> str:
    """A schema in Spark's DDL from declared SQL types, the column names validated."""
    return ", ".join(
        f"{validate_identifier(name, 'column')} {_SPARK_TYPES.get(kind, kind)}" for name, kind in column_types.items()
    )


def _typed(frame: pd.DataFrame, dtypes: Mapping[str, Any]) -> pd.DataFrame:
    """Arrow widens an int with nulls to float: the caller's dtypes put it back."""
    return frame.astype(dict(dtypes))


def _spark_values(params: Sequence[Any]) -> list[Any]:
    """Bound values for Spark: a naive time is UTC here, and PySpark would read it in the process's own zone."""
    return [
        value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value for value in params
    ]

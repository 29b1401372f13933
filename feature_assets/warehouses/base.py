"""The offline store's interface: raw tables and the feature history, in DuckDB, PostgreSQL or Spark (one module
each). Plain Python, no Dagster: the pure jobs (training, leakage, online sync) and the CLI use it directly, and the
Dagster resource (feature_assets/resources/warehouse.py) hands assets one of these."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pandas as pd

from feature_assets.registry import FeatureView, ViewRead
from feature_assets.settings import validate_identifier

__all__ = ["Warehouse", "keyed_table_sql"]


class Warehouse(ABC):
    """A connection factory, not a connection: each `connect()` opens one and closes it at the block's end.

    SQL takes ? placeholders on every backend, values always bound, never spliced.
    """

    kind: str
    schema_name: str

    @abstractmethod
    def connect(self) -> AbstractContextManager[Any]:
        """A connection in UTC with the schema selected; commits on success, rolls back on error (where the backend
        has transactions).

        UTC, whatever the server's or machine's zone: naive times written or read here are UTC, as the dbt models
        compute them; in another zone a timestamptz column would take or give wall times of that zone.
        """

    @abstractmethod
    def fetch(self, con: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """The rows of one query as a frame."""

    @abstractmethod
    def execute(self, con: Any, sql: str, params: Sequence[Any] = ()) -> None:
        """Runs one statement."""

    def table_exists(self, con: Any, table: str) -> bool:
        """Whether the schema holds `table`, by the SQL standard's information_schema (Spark asks its catalog)."""
        found = self.fetch(
            con,
            "select count(*) as n from information_schema.tables where table_schema = ? and table_name = ?",
            (self.schema_name, validate_identifier(table, "table")),
        )
        return int(found["n"].iloc[0]) > 0

    @abstractmethod
    def append(self, con: Any, table: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """Appends a frame in bulk, creating the table with the declared SQL types if needed."""

    def pooled(self) -> AbstractContextManager[Any]:
        """A connection as connect() gives it, for many short transactions (a push each): a backend whose
        connections are costly to open keeps them open between uses (here each use opens one)."""
        return self.connect()

    @abstractmethod
    def insert_new_rows(
        self,
        con: Any,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        column_types: Mapping[str, str],
        unique: Sequence[str],
    ) -> None:
        """Appends rows (Python values per column, None for null) whose `unique` columns are not in the table yet,
        creating it with that primary key if needed (create_keyed_table): a retried append writes nothing twice."""

    def compact_inserted(self, con: Any, table: str, unique: Sequence[str]) -> int:
        """Merges what insert_new_rows appended to `table` into fewer files, where a backend keeps a file per append;
        how many appends it merged (none here: a table with a key takes its rows in place)."""
        return 0

    def create_keyed_table(
        self, con: Any, table: str, column_types: Mapping[str, str], unique: Sequence[str]
    ) -> list[str]:
        """Creates the table of insert_new_rows if it does not exist, with `unique` as its primary key; its validated
        column names."""
        sql, names = keyed_table_sql(table, column_types, unique)
        self.execute(con, sql)
        return names

    @abstractmethod
    def dbt_env(self) -> dict[str, str]:
        """Environment for the dbt profile (dbt_features/profiles.yml), so dbt writes where this reads."""

    @abstractmethod
    def point_in_time_join(
        self,
        reads: Sequence[ViewRead],
        label_time: str,
        labels: str,
        label_columns: Sequence[str],
        pushed: Collection[str] = (),
    ) -> tuple[str, list[Any]]:
        """The point-in-time query in this dialect (the rule: feature_assets/training.py): each row of the `labels`
        CTE (numbered rows holding the views' keys and `label_time`) with the features of each read, the label
        columns first. The views named in `pushed` have pushed rows (push.py) that the join reads with their
        snapshots: a pushed row counts from when it was both computed and loaded."""

    @abstractmethod
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
    ) -> AbstractContextManager[Iterator[pd.DataFrame]]:
        """The rows of `sql` (the `columns`, one row per value of the first) in frames of about batch_rows rows,
        never all in memory at once. `dtypes` (pandas dtypes by column name) are the types the caller needs: a
        backend whose driver loses them applies them. `name` names the server-side cursor or staging table;
        count_rows, if given, counts the rows, for a backend that must split them in advance (None: the rows fit in
        one batch). The iterator is read by one thread at a time; the context's exit releases what it holds."""

    @abstractmethod
    def stage_frame(self, con: Any, name: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """Makes a frame readable as the relation `name` for the rest of the connection, in one transfer: a caller's
        rows to join in the warehouse. column_types: the declared SQL type of each column, in order."""

    def stage_query(self, con: Any, name: str, sql: str, params: Sequence[Any] = ()) -> None:
        """Makes a query's rows readable as the relation `name` for the rest of the connection (here a temporary
        table, gone with the connection)."""
        self.execute(con, f"create temporary table {validate_identifier(name, 'relation')} as {sql}", params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Runs one query on a connection of its own."""
        with self.connect() as con:
            return self.fetch(con, sql, params)

    def replace_table(self, con: Any, table: str, sql: str, params: Sequence[Any] = ()) -> None:
        """Replaces `table` with the query's rows, keeping the previous table when the query fails: here a drop and
        a create in the connection's transaction (a backend without transactions overrides this)."""
        validate_identifier(table, "table")
        self.execute(con, f"drop table if exists {table}")
        self.execute(con, f"create table {table} as {sql}", params)

    def check_join_indexes(self, con: Any, views: Sequence[FeatureView]) -> None:  # noqa: B027 (a hook: most need none)
        """Refuses views that lack an index the point-in-time join needs (none by default)."""


def keyed_table_sql(table: str, column_types: Mapping[str, str], unique: Sequence[str]) -> tuple[str, list[str]]:
    """The `create table if not exists` of a table with `unique` as its primary key, and its validated column names."""
    validate_identifier(table, "table")
    names = [validate_identifier(name, "column") for name in column_types]
    ddl = ", ".join(f"{name} {kind}" for name, kind in column_types.items())
    return f"create table if not exists {table} ({ddl}, primary key ({', '.join(unique)}))", names

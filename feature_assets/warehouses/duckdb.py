"""The DuckDB warehouse: one local file, the default in local mode."""

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from feature_assets.errors import WarehouseError
from feature_assets.postgres import first_line
from feature_assets.registry import LABEL_ROW, ViewRead, snapshot_column
from feature_assets.settings import validate_identifier
from feature_assets.warehouses.base import Warehouse

__all__ = ["DuckDBWarehouse"]

# Rows DuckDB hands over per chunk.
_DUCKDB_VECTOR = 2048


class DuckDBWarehouse(Warehouse):
    """DuckDB locks its file, so every `connect()` opens it and closes it again."""

    kind = "duckdb"

    def __init__(self, path: str | Path, schema_name: str = "main"):
        self.path = str(path)
        self.schema_name = schema_name

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        validate_identifier(self.schema_name, "warehouse schema")
        try:
            con = duckdb.connect(self.path)
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

    def fetch(self, con: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return con.execute(sql, list(params)).df()

    def execute(self, con: Any, sql: str, params: Sequence[Any] = ()) -> None:
        con.execute(sql, list(params))

    def append(self, con: Any, table: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        validate_identifier(table, "table")
        columns = ", ".join(validate_identifier(c, "column") for c in column_types)
        frame = frame[list(column_types)]
        ddl = ", ".join(f"{c} {t}" for c, t in column_types.items())
        self.execute(con, f"create table if not exists {table} ({ddl})")
        con.register("incoming_frame", frame)
        con.execute(f"insert into {table} ({columns}) select {columns} from incoming_frame")
        con.unregister("incoming_frame")

    def insert_new_rows(
        self,
        con: Any,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        column_types: Mapping[str, str],
        unique: Sequence[str],
    ) -> None:
        """The rows as a frame DuckDB scans in place (a statement of thousands of parameters parses slowly here)."""
        names = self.create_keyed_table(con, table, column_types, unique)
        con.register("incoming_rows", pd.DataFrame({name: pd.Series(columns[name], dtype=object) for name in names}))
        try:
            casts = ", ".join(f"cast({name} as {kind}) as {name}" for name, kind in column_types.items())
            con.execute(
                f"insert into {table} ({', '.join(names)}) select {casts} from incoming_rows on conflict do nothing"
            )
        finally:
            con.unregister("incoming_rows")

    def stage_frame(self, con: Any, name: str, frame: pd.DataFrame, column_types: Mapping[str, str]) -> None:
        """The frame itself, registered: DuckDB scans it in place, no copy."""
        con.register(validate_identifier(name, "relation"), frame[list(column_types)])

    def dbt_env(self) -> dict[str, str]:
        return {"FEATURE_STORE_DBT_TARGET": "local", "FEATURE_STORE_DUCKDB_PATH": self.path}

    def point_in_time_join(
        self,
        reads: Sequence[ViewRead],
        label_time: str,
        labels: str,
        label_columns: Sequence[str],
        pushed: Collection[str] = (),
    ) -> tuple[str, list[Any]]:
        """One ASOF join per view; for a view with pushed rows, also the newest pushed row computed and loaded
        before the label time (a range join on the key), taken where it is newer than the snapshot."""
        time = label_time
        steps, params, previous, selected = [labels], [], "labels", [LABEL_ROW, *label_columns]
        for position, read in enumerate(reads):
            view, step = read.view, f"matched_{position}"
            candidate = f"candidate_{position}"
            features = ", ".join(f"snapshot.{f.name}" for f in read.features)
            steps.append(f"""
        {step} as (
            select {previous}.*, snapshot.{view.timestamp} as {candidate}, {features}
            from {previous}
            asof left join {view.name} as snapshot
                on {previous}.{read.key} = snapshot.{view.entity_key} and {previous}.{time} > snapshot.{view.timestamp}
        )""")
            if view.name in pushed:
                steps.append(self._with_pushed(read, step, time, candidate))
                params.append(view.online_ttl)
                step = f"{step}_pushed"
            fresh = f"{candidate} >= {time} - ?"
            selected.append(f"case when {fresh} then {candidate} end as {snapshot_column(view)}")
            selected += [f"case when {fresh} then {f.name} end as {f.name}" for f in read.features]
            params += [view.online_ttl] * (1 + len(read.features))
            previous = step
        sql = f"with {','.join(steps)}\n select {', '.join(selected)} from {previous}"
        return sql, params

    @staticmethod
    def _with_pushed(read: ViewRead, step: str, time: str, candidate: str) -> str:
        """The step after `step` that replaces its snapshot by the newest pushed row where that is newer (a snapshot
        wins a tie); one parameter, the view's TTL."""
        view, names = read.view, [f.name for f in read.features]
        newest = f"{step}_newest_push"
        pushed_at = f"{newest}.{view.timestamp}"
        taken = f"{pushed_at} is not null and ({candidate} is null or {pushed_at} > {candidate})"
        return f"""
        {newest} as (
            select {step}.{LABEL_ROW}, pushed.{view.timestamp}, {", ".join(f"pushed.{name}" for name in names)}
            from {step} join {view.name}_pushed as pushed
                on {step}.{read.key} = pushed.{view.entity_key} and pushed.{view.timestamp} < {step}.{time}
                and pushed.loaded_at < {step}.{time} and pushed.{view.timestamp} >= {step}.{time} - ?
            qualify row_number() over (partition by {step}.{LABEL_ROW} order by pushed.{view.timestamp} desc) = 1
        ),
        {step}_pushed as (
            select {step}.* exclude ({candidate}, {", ".join(names)}),
                case when {taken} then {pushed_at} else {candidate} end as {candidate},
                {", ".join(f"case when {taken} then {newest}.{n} else {step}.{n} end as {n}" for n in names)}
            from {step} left join {newest} on {newest}.{LABEL_ROW} = {step}.{LABEL_ROW}
        )"""

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
        """DuckDB's own chunks, a whole number of its vectors each, typed as DuckDB types them."""
        con.execute(sql, list(params))
        vectors = max(1, batch_rows // _DUCKDB_VECTOR)

        def chunks() -> Iterator[pd.DataFrame]:
            while not (frame := con.fetch_df_chunk(vectors)).empty:
                yield frame

        yield chunks()

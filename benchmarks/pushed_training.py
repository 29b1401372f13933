"""What pushed rows cost a point-in-time training-set build, per engine, in one run on the same data (not a test).

    .venv/bin/python benchmarks/pushed_training.py [--users 20000] [--days 29] [--labels 200000]
        [--pushed-share 0.1] [--repeats 3] [--postgres-url postgresql://postgres@127.0.0.1:5432/test] [--skip-spark]

benchmarks/training.py's single-view feature set (user_features over user_id, label_time, churned) on its generated
history and labels, built on DuckDB, PostgreSQL and a local Spark twice: without pushed rows (the baseline), then
with `user_features_pushed` holding pushed rows numbering --pushed-share of the history's (random users of the
history, computed at random times within it, loaded 0 to 8 hours later). The ratio is each engine's own build with
pushed rows over its baseline, so a noisy box shifts both. Every engine's rows with pushed rows are compared with
DuckDB's: a benchmark of wrong answers is worthless. Times are medians of --repeats builds, after one untimed build.
"""

import argparse
import os
import statistics
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import (
    SINGLE_VIEW,
    USER_KEY,
    USERS,
    Case,
    load,
    make_countries,
    make_history,
    make_labels,
    read_result,
    timed_build,
    verdict,
)

from feature_assets.local_spark import stop_local_spark
from feature_assets.push import LOADED_AT, pushed_column_types, pushed_table
from feature_assets.registry import snapshot_column
from feature_assets.training import point_in_time_sql
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, SparkWarehouse, Warehouse


def make_pushes(history: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """Pushed rows of random users of the history at random times within it, one per (user, time), loaded 0 to 8
    hours after they were computed; values drawn from the history's own rows."""
    rows = int(len(history) * share)
    source = history.iloc[rng.integers(0, len(history), rows)].reset_index(drop=True)
    start, end = history[USERS.timestamp].min(), history[USERS.timestamp].max()
    span = int((end - start) / timedelta(seconds=1))
    pushed = source.assign(
        **{
            USER_KEY: source[USER_KEY].to_numpy()[rng.permutation(rows)],
            USERS.timestamp: start + pd.to_timedelta(rng.integers(0, span, rows), unit="s"),
        }
    ).drop_duplicates([USER_KEY, USERS.timestamp], ignore_index=True)
    pushed[LOADED_AT] = pushed[USERS.timestamp] + pd.to_timedelta(rng.integers(0, 8 * 3600, len(pushed)), unit="s")
    return pushed


def python_columns(frame: pd.DataFrame) -> dict[str, list]:
    """A frame as the Python values a push hands insert_new_rows: None for null, datetimes for times."""
    return {
        name: list(column.dt.to_pydatetime())
        if column.dtype.kind == "M"
        else [None if pd.isna(value) else value for value in column.tolist()]
        for name, column in frame.items()
    }


def median_build(warehouse: Warehouse, case: Case, rows: int, pushed: bool, repeats: int) -> float:
    sql, params = point_in_time_sql(warehouse, case.at(rows), {USERS.name} if pushed else ())
    table = f"bench_pushed_{int(pushed)}"
    return statistics.median(timed_build(warehouse, table, sql, params, rows) for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=29)
    parser.add_argument("--labels", type=int, default=200_000)
    parser.add_argument("--pushed-share", type=float, default=0.1, help="pushed rows per history row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip-spark", action="store_true", help="leave out the local Spark (which needs Java 17)")
    args = parser.parse_args()

    rng = np.random.default_rng(11)
    history = make_history(args.users, args.days, rng)
    labels = make_labels(args.labels, args.users, args.days, history, rng)
    case = Case("single view", SINGLE_VIEW, {args.labels: labels}, "bench_pushed_labels")
    countries = make_countries(history, rng)
    pushes = make_pushes(history, args.pushed_share, rng)
    print(f"{len(history):,} snapshots of {args.users:,} users, {len(pushes):,} pushed rows, {args.labels:,} labels")
    with tempfile.TemporaryDirectory() as tmp:
        engines: list[Warehouse] = [
            DuckDBWarehouse(str(Path(tmp) / "bench.duckdb")),
            PostgresWarehouse(args.postgres_url, schema_name="bench_pushed"),
        ]
        if not args.skip_spark:
            engines.append(SparkWarehouse(folder=str(Path(tmp) / "spark"), schema_name="bench_pushed"))
        reference = None
        drop_schema(engines[1])  # what an interrupted run left
        try:
            for warehouse in engines:
                load(warehouse, history, countries, [case])
                median_build(warehouse, case, args.labels, False, 1)  # untimed: a fresh local Spark's JIT is cold
                without = median_build(warehouse, case, args.labels, False, args.repeats)
                with warehouse.connect() as con:  # a fresh file, schema or Spark folder: no pushed table yet
                    warehouse.insert_new_rows(con, pushed_table(USERS), python_columns(pushes),
                                              pushed_column_types(USERS), (USER_KEY, USERS.timestamp))  # fmt: skip
                with_pushed = median_build(warehouse, case, args.labels, True, args.repeats)
                built = read_result(warehouse, case.at(args.labels), "bench_pushed_1", snapshots=True)
                if reference is None:
                    reference = built
                    before = read_result(warehouse, case.at(args.labels), "bench_pushed_0", snapshots=True)
                    taken = int((before[snapshot_column(USERS)] != built[snapshot_column(USERS)]).sum())
                    print(f"{taken:,} label rows take a pushed row (the rest their snapshot, or nothing)")
                agrees = verdict(SINGLE_VIEW, reference, built)
                print(
                    f"{warehouse.kind:>8}: {without:6.2f} s without pushed rows, {with_pushed:6.2f} s with them: "
                    f"{with_pushed / without:.2f}x (rows as DuckDB's: {agrees}; load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        finally:
            for warehouse in engines:
                if isinstance(warehouse, SparkWarehouse):
                    stop_local_spark(Path(warehouse.folder))
            drop_schema(engines[1])
    return 0


def drop_schema(postgres: Warehouse) -> None:
    with postgres.connect() as con:
        postgres.execute(con, f"drop schema if exists {postgres.schema_name} cascade")


if __name__ == "__main__":
    raise SystemExit(main())

"""The feature history built by dbt, checked against the row-by-row reference, on DuckDB and PostgreSQL."""

import json
import math
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import dagster as dg
import pandas as pd
import psycopg
import pytest
from conftest import materialize, read_features, write_raw
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from reference_features import reference_features

from feature_assets.as_of import current_hour
from feature_assets.assets.raw import RAW_COLUMNS
from feature_assets.demo_data import DemoDataSpec, generate
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, Warehouse

# A fixed anchor in the past: these tests build features and labels but never sync them online, and their
# edge rows name dates (a leap-day birthday, the 2026 DST change).
ANCHOR = datetime(2026, 3, 31)

DAY = timedelta(days=1)
EDGE_T = ANCHOR - 2 * DAY
AS_OF = {"as_of_start": "2026-03-27 00:00:00", "as_of_end": "2026-03-31 00:00:00"}
AS_OF_TIMES = [ANCHOR - k * DAY for k in range(4, -1, -1)]
EDGE_USER, LATE_SIGNUP_USER, LEAP_USER = 900_001, 900_002, 900_003


def _edge_rows() -> dict[str, pd.DataFrame]:
    """Hand-made rows on every boundary of the definition, at EDGE_T."""
    t, soon = EDGE_T, timedelta(seconds=5)
    users = pd.DataFrame(
        {
            "user_id": [EDGE_USER, LATE_SIGNUP_USER, LEAP_USER],
            "birthdate": pd.to_datetime(["1990-03-29", "1990-01-01", "2004-02-29"]),
            "signup_at": [t - 60 * DAY, t, t - 90 * DAY],
            "loaded_at": [t - 60 * DAY + soon, t, t - 90 * DAY + soon],
        }
    )
    changes = pd.DataFrame(
        {
            "user_id": [EDGE_USER, EDGE_USER, LATE_SIGNUP_USER, LEAP_USER],
            "changed_at": [t - 60 * DAY, t - timedelta(hours=1), t, t - 90 * DAY],
            "country": ["US", "DE", "FR", "JP"],
            "plan": ["free", "pro", "basic", "basic"],
            # The change to DE/pro happened before T but arrived after it.
            "loaded_at": [t - 60 * DAY + soon, t + timedelta(hours=1), t, t - 90 * DAY + soon],
        }
    )
    event_times = [
        (t - 30 * DAY, t - 30 * DAY + soon),  # exactly T - 30 days: counts
        (t - 30 * DAY - timedelta(microseconds=1), t - 30 * DAY),  # just before the window: does not
        (t - timedelta(hours=1), t + timedelta(hours=2)),  # before T, loaded after T: late, does not
        (t - timedelta(hours=1), t),  # loaded exactly at T: counts
        (t, t),  # exactly at T: does not
    ]
    events = pd.DataFrame(
        {
            "event_id": range(9_000_000_001, 9_000_000_001 + len(event_times)),
            "user_id": EDGE_USER,
            "event_type": "search",
            "created_at": [c for c, _ in event_times],
            "loaded_at": [loaded for _, loaded in event_times],
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": [9_000_000_001, 9_000_000_002, 9_000_000_003],
            "user_id": EDGE_USER,
            "amount": [10.0, 30.0, 1000.0],
            "created_at": [t - 30 * DAY, t - DAY, t],
            "loaded_at": [t - 30 * DAY + soon, t + 2 * DAY, t],
        }
    )
    return {"raw_users": users, "raw_profile_changes": changes, "raw_events": events, "raw_orders": orders}


@pytest.fixture(scope="module")
def raw_frames() -> dict[str, pd.DataFrame]:
    generated = generate(DemoDataSpec(users=250, days=40, origin=ANCHOR - 40 * DAY), None, ANCHOR)
    edges = _edge_rows()
    return {table: pd.concat([frame, edges[table]], ignore_index=True) for table, frame in generated.items()}


@pytest.fixture(scope="module")
def duckdb_build(raw_frames, tmp_path_factory):
    warehouse = DuckDBWarehouse(str(tmp_path_factory.mktemp("pit") / "w.duckdb"))
    write_raw(warehouse, raw_frames)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(warehouse, as_of=AS_OF, instance=instance)
    assert result.success
    return warehouse, result, instance


@pytest.fixture(scope="module")
def duckdb_features(duckdb_build):
    return read_features(duckdb_build[0])


def test_each_as_of_day_shows_its_own_rows_and_snapshots_and_the_run_its_totals_once(duckdb_build):
    warehouse, result, instance = duckdb_build
    events = result.get_asset_materialization_events()
    shown = {(e.asset_key.to_user_string(), e.materialization.partition): e.materialization.metadata for e in events}
    counts = warehouse.query(
        "select cast(computed_at as date) as day, count(*) as n, count(distinct computed_at) as s,"
        " max(computed_at) as newest from user_features group by 1 order by 1"
    )
    assert len(counts) == 5  # 2026-03-27 .. 2026-03-31: a partition each
    for day, n, snapshots, newest in counts.itertuples(index=False):
        day_shown = shown["user_features", day.strftime("%Y-%m-%d")]
        assert day_shown["dagster/row_count"].value == n > 0
        assert day_shown["snapshots"].value == snapshots
        assert day_shown["newest_snapshot"].value == str(newest)
    # The last day holds its midnight only (as_of_end): each day says its own as-of times.
    days = sorted(day for asset, day in shown if asset == "user_features")
    assert [shown["user_features", day]["snapshots"].value for day in days] == [24, 24, 24, 24, 1]
    last = shown["user_features", "2026-03-31"]
    assert last["as_of_times"].value == "2026-03-31 00:00:00 .. 2026-03-31 00:00:00: 1 of the view's cadence"
    assert (last["as_of_times_kept"].value, last["as_of_times_thinned"].value) == (1, 0)
    assert "run_as_of_times" not in last
    # The run's totals, once, in words.
    logged = [e.user_message for e in instance.all_logs(result.run_id) if "user_features: built" in e.user_message]
    assert logged == [
        f"user_features: built 5 days (2026-03-27 .. 2026-03-31): {counts['n'].sum():,} rows, 97 snapshots; 97 as-of "
        "times on the view's cadence from 2026-03-27 00:00:00 to 2026-03-31 00:00:00."
    ]
    assert "dagster/row_count" not in shown["stg_app__events", None]  # a view: counting would run its query


def _expected(raw_frames) -> pd.DataFrame:
    rows = [
        reference_features(raw_frames, int(user_id), as_of)
        for as_of in AS_OF_TIMES
        for user_id in raw_frames["raw_users"]["user_id"]
    ]
    return pd.DataFrame([row for row in rows if row is not None]).sort_values(["computed_at", "user_id"])


def _assert_same_features(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    actual = actual.sort_values(["computed_at", "user_id"]).reset_index(drop=True)
    expected = expected.sort_values(["computed_at", "user_id"]).reset_index(drop=True)
    assert list(zip(actual["user_id"], actual["computed_at"])) == list(
        zip(expected["user_id"], expected["computed_at"])
    )
    for column in ("age", "country", "plan", "events_30d"):
        assert actual[column].tolist() == expected[column].tolist(), column
    for got, want in zip(actual["avg_order_30d"], expected["avg_order_30d"]):
        assert (pd.isna(got) and pd.isna(want)) or math.isclose(got, want, rel_tol=1e-12), (got, want)


def test_feature_values_equal_the_row_by_row_reference(duckdb_features, raw_frames):
    """At the midnights of the range (the reference is slow; the hours between run the same SQL)."""
    _assert_same_features(duckdb_features[duckdb_features["computed_at"].isin(AS_OF_TIMES)], _expected(raw_frames))


def test_window_edges_and_late_rows_follow_the_definition(duckdb_features):
    at_edge = duckdb_features[duckdb_features["computed_at"] == EDGE_T].set_index("user_id")
    edge = at_edge.loc[EDGE_USER]
    assert edge["events_30d"] == 2  # the one at T - 30 days and the one loaded exactly at T
    assert edge["avg_order_30d"] == 10.0  # the order at T is outside, the one loaded after T invisible
    assert (edge["country"], edge["plan"]) == ("US", "free")  # the change to DE/pro arrived after T
    assert edge["age"] == 36  # birthday on T counts
    assert LATE_SIGNUP_USER not in at_edge.index  # signed up exactly at T: does not exist yet
    assert at_edge.loc[LEAP_USER, "age"] == 22  # born 2004-02-29, at 2026-03-29

    a_day_later = duckdb_features[duckdb_features["computed_at"] == EDGE_T + DAY].set_index("user_id")
    assert (a_day_later.loc[EDGE_USER, "country"], a_day_later.loc[EDGE_USER, "plan"]) == ("DE", "pro")
    assert a_day_later.loc[LATE_SIGNUP_USER, "plan"] == "basic"


def test_postgres_builds_the_same_features_as_duckdb(duckdb_features, raw_frames, postgres_warehouse):
    write_raw(postgres_warehouse, raw_frames)
    assert materialize(postgres_warehouse, as_of=AS_OF).success
    _assert_same_features(read_features(postgres_warehouse), duckdb_features)
    # Every feature view gets an index on (entity key, timestamp) for point-in-time lookups and sync scans.
    indexes = postgres_warehouse.query(
        "select tablename, indexdef from pg_indexes where schemaname = ? order by tablename",
        [postgres_warehouse.schema_name],
    )
    assert [(t, d.split(" USING ")[1]) for t, d in zip(indexes["tablename"], indexes["indexdef"])] == [
        ("country_features", "btree (country_code, computed_at)"),
        ("user_features", "btree (user_id, computed_at)"),
    ]


@pytest.fixture
def new_york_postgres(postgres_url) -> Iterator[Warehouse]:
    """A PostgreSQL whose sessions start in America/New_York, as on a server configured so: a role of its own
    with that time zone, and a schema of its own; both dropped afterwards."""
    role, schema = f"fs_test_ny_{uuid.uuid4().hex[:8]}", f"fs_test_{uuid.uuid4().hex[:10]}"
    database = conninfo_to_dict(postgres_url)["dbname"]
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"create role {role} login")
        con.execute(f"alter role {role} set timezone = 'America/New_York'")
        con.execute(f"grant create on database {database} to {role}")
    try:
        yield PostgresWarehouse(make_conninfo(postgres_url, user=role), schema)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")
            con.execute(f"drop owned by {role}")
            con.execute(f"drop role {role}")


def test_timestamptz_raw_columns_on_a_server_in_another_time_zone_give_the_same_features(
    duckdb_features, raw_frames, new_york_postgres
):
    """Production raw tables often hold timestamptz, and a server's default zone is rarely UTC; New York's
    clocks moved on 2026-03-08, inside the history. The raw rows are written as the instants they are."""
    warehouse = new_york_postgres
    writer = PostgresWarehouse(make_conninfo(warehouse.url, options="-c timezone=UTC"), warehouse.schema_name)
    with writer.connect() as con:
        for table, columns in RAW_COLUMNS.items():
            types = {column: "timestamptz" if kind == "timestamp" else kind for column, kind in columns.items()}
            writer.append(con, table, raw_frames[table], types)

    assert materialize(warehouse, as_of=AS_OF).success
    _assert_same_features(read_features(warehouse), duckdb_features)
    # The staging views convert explicitly: read in a session of the server's zone, they still give UTC.
    with psycopg.connect(warehouse.url) as con:
        assert con.execute("show timezone").fetchone()[0] == "America/New_York"
        staged = con.execute(f"select event_id, created_at from {warehouse.schema_name}.stg_app__events").fetchall()
    events = raw_frames["raw_events"]
    assert dict(staged) == dict(zip(events["event_id"], events["created_at"].dt.to_pydatetime()))


def test_a_backfill_equals_hour_by_hour_runs_and_reruns_change_nothing(raw_frames, tmp_path):
    """Each warehouse's first run builds every model; the later hourly runs and the rerun build user_features alone,
    as the hourly schedule does for a due view: the staging views stay, and a dbt start costs more than these rows."""
    hours = [ANCHOR - timedelta(hours=h) for h in (2, 1, 0)]
    backfilled = DuckDBWarehouse(str(tmp_path / "backfill.duckdb"))
    hourly = DuckDBWarehouse(str(tmp_path / "hourly.duckdb"))
    for warehouse in (backfilled, hourly):
        write_raw(warehouse, raw_frames)
    window = {"as_of_start": str(hours[0]), "as_of_end": str(hours[-1])}
    assert materialize(backfilled, as_of=window).success
    assert materialize(hourly, as_of={"as_of_end": str(hours[0])}).success
    for hour in hours[1:]:
        assert materialize(hourly, as_of={"as_of_end": str(hour)}, models=["user_features"]).success
    once = read_features(hourly)
    pd.testing.assert_frame_equal(read_features(backfilled), once)

    assert materialize(hourly, as_of={"as_of_end": str(hours[1])}, models=["user_features"]).success
    pd.testing.assert_frame_equal(read_features(hourly), once)
    assert once.groupby("computed_at").size().tolist() == [len(once) // 3] * 3


def test_bad_raw_input_fails_the_build_naming_each_problem(raw_frames, duckdb_warehouse):
    bad = {table: frame.copy() for table, frame in raw_frames.items()}
    orders = bad["raw_orders"]
    orders.loc[0, "amount"] = -5.0
    orders.loc[1, "amount"] = float("nan")
    orders.loc[2, "amount"] = float("inf")  # passes not_null and non_negative; would make averages inf
    events = bad["raw_events"]
    events.loc[0, "created_at"] = events.loc[0, "loaded_at"] + DAY  # arrived a day before it happened
    bad["raw_users"] = pd.concat([bad["raw_users"], bad["raw_users"].iloc[[0]]], ignore_index=True)
    write_raw(duckdb_warehouse, bad)

    result = materialize(duckdb_warehouse, as_of=AS_OF)

    assert not result.success
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert {
        "non_negative_stg_app__orders_amount",
        "finite_stg_app__orders_amount",
        "not_null_stg_app__orders_amount",
        "not_later_than_stg_app__events_loaded_at__created_at",
        "unique_stg_app__users_user_id",
    } <= failed
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "user_features" not in materialized
    with duckdb_warehouse.connect() as con:
        assert not duckdb_warehouse.table_exists(con, "user_features")


def _build_user_features(warehouse, variables: dict, tmp_path) -> None:
    from feature_assets.definitions import _dbt_executable
    from feature_assets.settings import dbt_project_dir

    project = str(dbt_project_dir())
    subprocess.run(
        [
            _dbt_executable(),
            "build",
            "--select",
            "+user_features",
            "--vars",
            json.dumps(variables),
            "--quiet",
            "--project-dir",
            project,
            "--profiles-dir",
            project,
            "--target-path",
            str(tmp_path / "target"),
        ],
        env={**os.environ, **warehouse.dbt_env()},
        check=True,
        capture_output=True,
    )


def _snapshot_times(warehouse) -> list:
    return sorted(pd.Timestamp(t).to_pydatetime() for t in read_features(warehouse)["computed_at"].unique())


def test_old_snapshots_are_thinned_to_one_a_day_and_dropped_past_the_retention(raw_frames, duckdb_warehouse, tmp_path):
    """The history stays bounded: the retention windows (dbt vars) shortened to 1 and 3 days."""
    write_raw(duckdb_warehouse, raw_frames)
    variables = {
        "as_of_start": str(ANCHOR - 5 * DAY),
        "as_of_end": str(ANCHOR),
        "cadence_hours": 6,
        "hourly_snapshot_retention_days": 1,
        "snapshot_retention_days": 3,
    }
    _build_user_features(duckdb_warehouse, variables, tmp_path)
    kept = _snapshot_times(duckdb_warehouse)
    hour = timedelta(hours=1)
    daily = [ANCHOR - 3 * DAY, ANCHOR - 2 * DAY]  # older than a day: the first snapshot of each day
    recent = [ANCHOR - DAY + k * 6 * hour for k in range(5)]  # the last day: every snapshot
    assert kept == daily + recent


def test_a_snapshot_stamped_in_the_future_does_not_thin_the_real_history(raw_frames, duckdb_warehouse, tmp_path):
    """Retention counts from the newest snapshot, but never from one after the current hour (as a warehouse
    refreshed `--as-of` a future time holds): the last days' snapshots stay, every one of them."""
    write_raw(duckdb_warehouse, raw_frames)
    now = current_hour()
    recent = {"as_of_start": str(now - 2 * DAY), "as_of_end": str(now), "cadence_hours": 6}
    _build_user_features(duckdb_warehouse, recent, tmp_path)
    history = _snapshot_times(duckdb_warehouse)
    assert len(history) == 9
    future = now + 180 * DAY  # more than hourly_snapshot_retention_days (14) ahead
    with duckdb_warehouse.connect() as con:
        duckdb_warehouse.execute(
            con,
            "insert into user_features select user_id, cast(? as timestamp), age, country, plan, events_30d, "
            "avg_order_30d "
            "from user_features where computed_at = ?",
            [future, now],
        )

    _build_user_features(duckdb_warehouse, {"as_of_end": str(now)}, tmp_path)

    assert _snapshot_times(duckdb_warehouse) == [*history, future]

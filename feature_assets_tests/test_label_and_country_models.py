"""The dbt label tables and the country feature view, checked against row-by-row references, on DuckDB and PostgreSQL;
the training sets built on them, equal on both engines.

Each engine gets one real build (demo data and `dbt build` through Dagster, then the training-set assets with their
leakage checks); the references are recomputed in plain Python from the tables read back from that engine's warehouse.
"""

import math
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
import pytest
from conftest import materialize, write_raw

from feature_assets.assets.training import training_set_assets
from feature_assets.registry import load_registry
from feature_assets.settings import dbt_manifest_path
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, Warehouse

# A fixed anchor in the past: these tests build features and labels but never sync them online, and their
# edge rows name dates (a leap-day birthday, the 2026 DST change).
ANCHOR = datetime(2026, 3, 31)

DAY, HOUR, WEEK = timedelta(days=1), timedelta(hours=1), timedelta(days=7)
LATE_ARRIVAL = 3 * DAY  # the dbt var late_arrival_days: raw rows arrive at most this late
RAW = {"users": 300, "days": 150, "anchor": ANCHOR.isoformat()}
AS_OF = {"as_of_start": (ANCHOR - 149 * DAY).isoformat(), "as_of_end": ANCHOR.isoformat()}
ENGINES = ("duckdb", "postgres")

# Each table's columns in contract order and its grain; rows are compared sorted by the grain.
TABLES = {
    "churn_labels": (("user_id", "country_code", "label_time", "churned"), ("user_id", "label_time")),
    "ltv_labels": (("user_id", "label_time", "revenue_90d"), ("user_id", "label_time")),
    "country_features": (
        (
            "country_code",
            "computed_at",
            "country_users",
            "country_active_share_30d",
            "country_paid_share",
            "country_avg_order_30d",
        ),
        ("country_code", "computed_at"),
    ),
}
TRAINING_SETS = ("churn_training_set", "ltv_training_set")
# Every demo user has a country from signup on; these do not: one never, one only once a late change is loaded.
NO_COUNTRY_USER, LATE_COUNTRY_USER = 900_001, 900_002
LATE_USER = 900_003  # only in the test of labels under later loads
SOURCES = ("raw_users", "raw_profile_changes", "raw_events", "raw_orders", "user_features")


def _users_without_a_country() -> dict[str, pd.DataFrame]:
    signup = ANCHOR - 120 * DAY
    users = pd.DataFrame(
        {
            "user_id": [NO_COUNTRY_USER, LATE_COUNTRY_USER],
            "birthdate": pd.to_datetime(["1990-01-01", "1990-01-01"]),
            "signup_at": [signup, signup],
            "loaded_at": [signup, signup],
        }
    )
    changes = pd.DataFrame(
        {
            "user_id": [LATE_COUNTRY_USER],
            "changed_at": [signup],
            "country": ["FR"],
            "plan": ["pro"],
            "loaded_at": [ANCHOR - 60 * DAY],
        }
    )
    events = pd.DataFrame(
        {
            "event_id": [10**15 + 1, 10**15 + 2],  # above the demo ids (day * 10**8 + n)
            "user_id": [NO_COUNTRY_USER, LATE_COUNTRY_USER],
            "event_type": ["search", "search"],
            "created_at": [ANCHOR - 60 * DAY, ANCHOR - 60 * DAY],
            "loaded_at": [ANCHOR - 60 * DAY, ANCHOR - 60 * DAY],
        }
    )
    return {"raw_users": users, "raw_profile_changes": changes, "raw_events": events}


def _plain(value: Any) -> Any:
    """One Python value whichever engine and pandas dtype it came through: datetime, int, float, bool, str or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{column: _plain(value) for column, value in row.items()} for row in frame.to_dict("records")]


def _read(warehouse: Warehouse) -> dict[str, list[dict[str, Any]]]:
    return {table: _records(warehouse.query(f"select * from {table}")) for table in (*SOURCES, *TABLES, *TRAINING_SETS)}


@pytest.fixture(scope="module")
def builds(postgres_url, tmp_path_factory) -> Iterator[dict[str, dict[str, list[dict[str, Any]]]]]:
    """Both engines built once for the module (one build is ~20 s): every source and model table, read back. The
    training sets are built as Dagster builds them, on PostgreSQL through the index each view's dbt build creates."""
    schema = f"fs_test_{uuid.uuid4().hex[:10]}"
    warehouses = {
        "duckdb": DuckDBWarehouse(str(tmp_path_factory.mktemp("labels") / "warehouse.duckdb")),
        "postgres": PostgresWarehouse(postgres_url, schema),
    }
    try:
        read = {}
        for engine, warehouse in warehouses.items():
            assert materialize(warehouse, raw=RAW).success, engine
            write_raw(warehouse, _users_without_a_country())
            assert materialize(warehouse, as_of=AS_OF).success, engine
            training_sets, leakage_checks = training_set_assets(load_registry(dbt_manifest_path()))
            built = dg.materialize(
                [*training_sets, *leakage_checks],
                resources={"warehouse": warehouse},
                instance=dg.DagsterInstance.ephemeral(),
            )
            checked = built.get_asset_check_evaluations()
            assert len(checked) == len(leakage_checks) and all(check.passed for check in checked), engine
            read[engine] = _read(warehouse)
        yield read
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")


def _by_user(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["user_id"]].append(row)
    return grouped


def _reference_labels(raw: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    """The label rows restated from their definition, one user and one label time at a time."""
    window = {"churn": 30 * DAY, "ltv": 90 * DAY}[kind]
    first_event = min(event["created_at"] for event in raw["raw_events"])
    # Every outcome row created before this has been loaded; a label's window must end by then.
    observed_until = (
        max(row["loaded_at"] for row in raw["raw_events" if kind == "churn" else "raw_orders"]) - LATE_ARRIVAL
    )
    last_day = datetime(observed_until.year, observed_until.month, observed_until.day)
    week_ends = [last_day - window - k * WEEK for k in range(1001)]
    week_ends = [week_end for week_end in week_ends if week_end >= first_event + 30 * DAY]
    events, orders, changes = (_by_user(raw[t]) for t in ("raw_events", "raw_orders", "raw_profile_changes"))

    labels = []
    for user in raw["raw_users"]:
        user_id = user["user_id"]
        for week_end in week_ends:
            label_time = week_end - (user_id % 168) * HOUR
            if label_time < first_event + 30 * DAY or not user["signup_at"] < label_time:
                continue
            outcome = events if kind == "churn" else orders
            observed = [row for row in outcome[user_id] if label_time <= row["created_at"] < label_time + window]
            if kind == "ltv":
                labels.append(
                    {
                        "user_id": user_id,
                        "label_time": label_time,
                        "revenue_90d": sum((o["amount"] for o in observed), 0.0),
                    }
                )
                continue
            visible = [c for c in changes[user_id] if c["changed_at"] < label_time and c["loaded_at"] <= label_time]
            latest = max(visible, key=lambda c: (c["changed_at"], c["loaded_at"]), default=None)
            labels.append(
                {
                    "user_id": user_id,
                    "country_code": None if latest is None else latest["country"],
                    "label_time": label_time,
                    "churned": not observed,
                }
            )
    return labels


def _reference_country_features(user_features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (country, computed_at) aggregated from the user snapshots of that country at that time."""
    groups = defaultdict(list)
    for row in user_features:
        if row["country"] is not None:
            groups[(row["country"], row["computed_at"])].append(row)
    rows = []
    for (country, computed_at), users in groups.items():
        orders = [user["avg_order_30d"] for user in users if user["avg_order_30d"] is not None]
        rows.append(
            {
                "country_code": country,
                "computed_at": computed_at,
                "country_users": len(users),
                "country_active_share_30d": sum(1 for user in users if user["events_30d"] > 0) / len(users),
                "country_paid_share": sum(1 for user in users if user["plan"] in ("basic", "pro")) / len(users),
                "country_avg_order_30d": sum(orders) / len(orders) if orders else None,
            }
        )
    return rows


def _assert_same_rows(table: str, actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same columns in contract order, same grain, same values; doubles may differ in the last bits (summation
    order)."""
    columns, grain = TABLES[table]
    assert all(tuple(row) == columns for row in actual), f"{table}: columns differ from the contract"
    actual = sorted(actual, key=lambda row: tuple(row[c] for c in grain))
    expected = sorted(expected, key=lambda row: tuple(row[c] for c in grain))
    assert [tuple(r[c] for c in grain) for r in actual] == [tuple(r[c] for c in grain) for r in expected], table
    for got, want in zip(actual, expected):
        for column in columns:
            a, b = got[column], want[column]
            if isinstance(a, float) and isinstance(b, float):
                assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9), (table, column, got, want)
            else:
                assert a == b and type(a) is type(b), (table, column, got, want)


@pytest.mark.parametrize("engine", ENGINES)
def test_churn_labels_equal_the_row_by_row_reference(builds, engine):
    built = builds[engine]
    expected = _reference_labels(built, "churn")
    _assert_same_rows("churn_labels", built["churn_labels"], expected)
    # The data exercises the definition: several label weeks, both outcomes, known countries.
    assert len({row["label_time"] - (row["user_id"] % 168) * HOUR for row in expected}) >= 10
    assert {row["churned"] for row in expected} == {True, False}
    assert sum(row["country_code"] is not None for row in expected) > 0.9 * len(expected)
    late = {row["country_code"] for row in expected if row["user_id"] == LATE_COUNTRY_USER}
    assert late == {None, "FR"}


@pytest.mark.parametrize("engine", ENGINES)
def test_ltv_labels_equal_the_row_by_row_reference(builds, engine):
    built = builds[engine]
    expected = _reference_labels(built, "ltv")
    _assert_same_rows("ltv_labels", built["ltv_labels"], expected)
    assert len({row["label_time"] - (row["user_id"] % 168) * HOUR for row in expected}) >= 3
    assert any(row["revenue_90d"] == 0 for row in expected) and any(row["revenue_90d"] > 0 for row in expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_country_features_equal_the_aggregation_of_user_features_per_country_and_time(builds, engine):
    built = builds[engine]
    expected = _reference_country_features(built["user_features"])
    _assert_same_rows("country_features", built["country_features"], expected)
    # 150 as-of days: every hour of the newest 14, the first snapshot of each day before (the retention).
    assert len({row["computed_at"] for row in expected}) == 14 * 24 + 1 + 135
    without_country = [row for row in built["user_features"] if row["country"] is None]
    assert {row["user_id"] for row in without_country} == {NO_COUNTRY_USER, LATE_COUNTRY_USER}
    assert sum(row["country_users"] for row in expected) == len(built["user_features"]) - len(without_country)


@pytest.mark.parametrize("table", list(TABLES))
def test_duckdb_and_postgres_produce_the_same_rows(builds, table):
    _assert_same_rows(table, builds["postgres"][table], builds["duckdb"][table])


@pytest.mark.parametrize("table", TRAINING_SETS)
def test_duckdb_and_postgres_build_the_same_training_sets(builds, table):
    """Row for row by label_row, every column; numbers compared as numbers (a nullable integer column reads back as
    floats from one engine), doubles to the last bits (the country view's averages may differ there)."""
    built = {engine: builds[engine][table] for engine in ENGINES}
    assert [list(rows[0]) for rows in built.values()] == [list(built["duckdb"][0])] * 2
    assert [len(rows) for rows in built.values()] == [len(built["duckdb"])] * 2
    assert sum(row["user_features_snapshot_at"] is not None for row in built["duckdb"]) > 0.5 * len(built["duckdb"])
    for duckdb_row, postgres_row in zip(*(sorted(rows, key=lambda row: row["label_row"]) for rows in built.values())):
        for column, a in duckdb_row.items():
            b = postgres_row[column]
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9), (table, column, duckdb_row, postgres_row)
            else:
                assert a == b, (table, column, duckdb_row, postgres_row)


def _late_user_rows(anchor: datetime, late_at: datetime) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """A user active long ago, then once more at late_at with an event and an order that arrive a day after
    anchor: the rows loaded by anchor, and the late ones."""
    signup = anchor - 120 * DAY
    early = {
        "raw_users": pd.DataFrame(
            {
                "user_id": [LATE_USER],
                "birthdate": pd.to_datetime(["1990-01-01"]),
                "signup_at": [signup],
                "loaded_at": [signup],
            }
        ),
        "raw_profile_changes": pd.DataFrame(
            {"user_id": [LATE_USER], "changed_at": [signup], "country": ["FR"], "plan": ["pro"], "loaded_at": [signup]}
        ),
        "raw_events": pd.DataFrame(
            {
                "event_id": [10**15 + 3],
                "user_id": [LATE_USER],
                "event_type": ["search"],
                "created_at": [signup],
                "loaded_at": [signup],
            }
        ),
    }
    late = {
        "raw_events": pd.DataFrame(
            {
                "event_id": [10**15 + 4],
                "user_id": [LATE_USER],
                "event_type": ["search"],
                "created_at": [late_at],
                "loaded_at": [anchor + DAY],
            }
        ),
        "raw_orders": pd.DataFrame(
            {
                "order_id": [10**15 + 1],
                "user_id": [LATE_USER],
                "amount": [50.0],
                "created_at": [late_at],
                "loaded_at": [anchor + DAY],
            }
        ),
    }
    return early, late


def test_labels_once_taken_do_not_change_when_later_rows_arrive(tmp_path):
    """A label is taken only once every row of its outcome window has been loaded (rows arrive up to 3 days
    late), so a week of further loads adds label times but changes none: the newest labels, the validation
    rows, are as honest as the oldest. The late user's event and order fall just inside the outcome windows
    that end on the day of the newest event loaded by the first anchor, a week ago (as-of times after the
    current hour are refused)."""
    warehouse = DuckDBWarehouse(str(tmp_path / "warehouse.duckdb"))
    first = ANCHOR - WEEK
    early, late = _late_user_rows(first, first - DAY - (LATE_USER % 168) * HOUR - HOUR)
    taken = []
    for anchor, rows in ((first, early), (ANCHOR, late)):
        assert materialize(warehouse, raw={**RAW, "anchor": anchor.isoformat()}).success
        write_raw(warehouse, rows)
        assert materialize(warehouse, as_of={"as_of_end": anchor.isoformat()}).success
        taken.append({table: warehouse.query(f"select * from {table}") for table in ("churn_labels", "ltv_labels")})
    for table in ("churn_labels", "ltv_labels"):
        columns, grain = TABLES[table]
        then, later = taken[0][table], taken[1][table]
        assert len(later) > len(then) > 0, table
        kept = then.merge(later, on=list(grain), how="left", suffixes=("", "_later"))
        for column in set(columns) - set(grain):
            changed = kept[
                kept[column].ne(kept[f"{column}_later"]) & ~(kept[column].isna() & kept[f"{column}_later"].isna())
            ]
            assert changed.empty, (table, column, changed)

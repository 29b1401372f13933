"""Point-in-time training sets: the join against a row-by-row reference, on DuckDB and PostgreSQL, and the leakage check."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from conftest import ANCHOR
from feature_assets.leakage import check_leakage
from feature_assets.project import dbt_project
from feature_assets.registry import load_registry
from feature_assets.training import LABEL_ROW, build_table, point_in_time_sql

REGISTRY = load_registry(dbt_project.manifest_path)
CHURN = REGISTRY.feature_set("churn_model")
VIEW = CHURN.view
TTL = VIEW.online_ttl
FEATURE_TYPES = {
    "user_id": "bigint",
    "computed_at": "timestamp",
    **{feature.name: feature.data_type for feature in VIEW.features},
}
LABEL_TYPES = {"user_id": "bigint", "label_time": "timestamp", "churned": "boolean"}
DAY, HOUR = timedelta(days=1), timedelta(hours=1)
LONE_USER, LONE_SNAPSHOT = 999, ANCHOR - 5 * DAY  # a user with one snapshot, to pin each edge on it


def _history(rng: np.random.Generator, users: int = 60) -> pd.DataFrame:
    """Snapshots every 6 hours with gaps (some users skip days), values random, some nulls."""
    times = [ANCHOR - k * 6 * HOUR for k in range(40)]
    rows = [(user, t) for user in range(1, users + 1) for t in times if rng.random() < 0.7]
    frame = pd.DataFrame(rows + [(LONE_USER, LONE_SNAPSHOT)], columns=["user_id", "computed_at"])
    n = len(frame)
    frame["age"] = rng.integers(18, 80, n)
    frame["country"] = rng.choice(["US", "DE", None], n)
    frame["plan"] = rng.choice(["free", "pro"], n)
    frame["events_30d"] = rng.integers(0, 50, n)
    frame["avg_order_30d"] = np.where(rng.random(n) < 0.3, np.nan, rng.random(n) * 100)
    return frame


def _labels(rng: np.random.Generator, history: pd.DataFrame) -> pd.DataFrame:
    """Label times at random hours, and on every edge: exactly at a snapshot, exactly TTL after one, just past
    the TTL, before any snapshot; plus duplicated rows."""
    snapshot = history.sample(30, random_state=1)
    start = history["computed_at"].min()
    rows = [(u, t) for u, t in zip(rng.integers(1, 65, 300), [start + int(h) * HOUR for h in rng.integers(-24, 260, 300)])]
    rows += [(u, t) for u, t in zip(snapshot["user_id"], snapshot["computed_at"])]  # exactly at: excluded
    rows += [(u, t + TTL) for u, t in zip(snapshot["user_id"], snapshot["computed_at"])]  # exactly TTL after: included
    rows += [(u, t + TTL + timedelta(seconds=1)) for u, t in zip(snapshot["user_id"], snapshot["computed_at"])]
    rows += [(u, start - DAY) for u in range(1, 6)]  # before any snapshot
    rows += [(LONE_USER, LONE_SNAPSHOT + delta) for delta in (timedelta(0), TTL, TTL + timedelta(seconds=1), -HOUR)]
    rows += rows[:20]  # duplicates
    labels = pd.DataFrame(rows, columns=["user_id", "label_time"])
    labels["churned"] = rng.random(len(labels)) < 0.2
    return labels


def _reference(history: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Row by row: the greatest computed_at < t with computed_at >= t - TTL, else nothing."""
    by_user = {user: list(group.itertuples(index=False)) for user, group in history.groupby("user_id")}
    out = []
    for label in labels.itertuples(index=False):
        best = None
        for snapshot in by_user.get(label.user_id, []):
            if label.label_time - TTL <= snapshot.computed_at < label.label_time:
                if best is None or snapshot.computed_at > best.computed_at:
                    best = snapshot
        row = {"user_id": label.user_id, "label_time": label.label_time, "churned": label.churned}
        row["snapshot_at"] = None if best is None else best.computed_at
        for name in CHURN.feature_names:
            row[name] = None if best is None else getattr(best, name)
        out.append(row)
    return pd.DataFrame(out)


def _normalized(frame: pd.DataFrame) -> list[tuple]:
    columns = ["user_id", "label_time", "churned", "snapshot_at", *CHURN.feature_names]
    rows = []
    for row in frame[columns].itertuples(index=False):
        rows.append(tuple(None if pd.isna(v) else round(v, 9) if isinstance(v, float) else v for v in row))
    return rows


def test_training_set_matches_row_by_row_reference_on_every_edge(warehouse):
    rng = np.random.default_rng(3)
    history = _history(rng)
    labels = _labels(rng, history)
    with warehouse.connect() as con:
        warehouse.append(con, "user_features", history, FEATURE_TYPES)
        warehouse.append(con, "churn_labels", labels, LABEL_TYPES)
        sql, params = point_in_time_sql(warehouse.kind, CHURN, "churn_labels")
        assert build_table(warehouse, con, "churn_training_set", sql, params) == len(labels)  # duplicates survive
        first = warehouse.fetch(con, f"select * from churn_training_set order by {LABEL_ROW}")
        build_table(warehouse, con, "churn_training_set", sql, params)
        second = warehouse.fetch(con, f"select * from churn_training_set order by {LABEL_ROW}")

    expected = _reference(history, labels).sort_values(["label_time", "user_id", "churned"], kind="stable")
    assert _normalized(first) == _normalized(expected)
    assert _normalized(first) == _normalized(second)  # a rebuild gives the same rows in the same order
    assert list(first[LABEL_ROW]) == list(range(1, len(labels) + 1))
    lone = first[first["user_id"] == LONE_USER].set_index("label_time")["snapshot_at"]
    assert lone[LONE_SNAPSHOT] is pd.NaT  # the snapshot stamped t is not available at t
    assert lone[LONE_SNAPSHOT + TTL] == LONE_SNAPSHOT  # exactly TTL old: still fresh
    assert lone[LONE_SNAPSHOT + TTL + timedelta(seconds=1)] is pd.NaT  # older than the TTL: no features
    assert lone[LONE_SNAPSHOT - HOUR] is pd.NaT  # before any snapshot


@pytest.fixture(scope="module")
def demo_warehouse(trained):
    """Demo data over 150 days with daily snapshots, labels and training sets (the shared trained warehouse)."""
    warehouse, _ = trained
    return warehouse


def test_labels_leave_a_full_outcome_window_and_cover_users_signed_up_before_label_time(demo_warehouse):
    churn = demo_warehouse.query("select * from churn_labels")
    ltv = demo_warehouse.query("select * from ltv_labels")
    last_event = demo_warehouse.query("select max(created_at) as t from raw_events")["t"].iloc[0]
    assert churn["label_time"].max() <= last_event - timedelta(days=30)
    assert ltv["label_time"].max() <= last_event - timedelta(days=90)
    assert 0.05 < churn["churned"].mean() < 0.8  # both classes
    assert (ltv["revenue_90d"] >= 0).all() and ltv["revenue_90d"].gt(0).any()
    assert churn["label_time"].dt.hour.nunique() == 24  # spread over the hours of the day
    users = demo_warehouse.query("select user_id, signup_at from raw_users")
    joined = churn.merge(users, on="user_id")
    assert len(joined) == len(churn) and (joined["signup_at"] < joined["label_time"]).all()


def test_leakage_check_passes_on_the_point_in_time_training_set(demo_warehouse):
    report = check_leakage(demo_warehouse, CHURN, "churn_training_set", sample=150)
    assert report.rows_checked == 150
    assert report.features_recomputed == CHURN.feature_names
    assert report.passed, report.problems[:3]


def test_leakage_check_fails_on_a_training_set_that_sees_the_snapshot_at_label_time(demo_warehouse):
    with demo_warehouse.connect() as con:
        # Labels exactly at snapshot times, joined with <= instead of <: the snapshot stamped t leaks in.
        demo_warehouse.execute(
            con,
            "create or replace table exact_labels as select user_id, computed_at as label_time, false as churned "
            "from user_features where computed_at > (select min(computed_at) from user_features) order by 1, 2 limit 50",
        )
        sql, params = point_in_time_sql("duckdb", CHURN, "exact_labels")
        leaky_sql = sql.replace("labels.label_time > snapshot.computed_at", "labels.label_time >= snapshot.computed_at")
        assert leaky_sql != sql
        build_table(demo_warehouse, con, "leaky_training_set", leaky_sql, params)
        build_table(demo_warehouse, con, "honest_training_set", sql, params)

    leaky = check_leakage(demo_warehouse, CHURN, "leaky_training_set", sample=50)
    assert not leaky.passed
    problem = leaky.problems[0]
    assert problem["feature"] in CHURN.feature_names and problem[LABEL_ROW] >= 1
    assert "at or after the label time" in problem["problem"]
    assert check_leakage(demo_warehouse, CHURN, "honest_training_set", sample=50).passed


def test_leakage_check_names_a_feature_whose_value_does_not_come_from_its_snapshot(demo_warehouse):
    with demo_warehouse.connect() as con:
        demo_warehouse.execute(con, "create or replace table tampered_training_set as select * from churn_training_set")
        demo_warehouse.execute(
            con, "update tampered_training_set set events_30d = events_30d + 1 where label_row = (select min(label_row) "
            "from tampered_training_set where snapshot_at is not null)"
        )
        row = int(demo_warehouse.fetch(con, "select min(label_row) as r from tampered_training_set where snapshot_at is not null")["r"].iloc[0])
    total = int(demo_warehouse.query("select count(*) as n from tampered_training_set")["n"].iloc[0])
    report = check_leakage(demo_warehouse, CHURN, "tampered_training_set", sample=total)
    assert [(p[LABEL_ROW], p["feature"]) for p in report.problems] == [(row, "events_30d")]

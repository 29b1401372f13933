"""Point-in-time training sets: the multi-view join against a row-by-row reference, on DuckDB, PostgreSQL and
Spark, and the leakage check."""

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from conftest import ANCHOR

from feature_assets.errors import WarehouseError
from feature_assets.leakage import check_leakage
from feature_assets.registry import LABEL_ROW, FeatureSet, LabelTable, ViewRead, load_registry, snapshot_column
from feature_assets.settings import dbt_manifest_path
from feature_assets.training import build_table, point_in_time_sql, require_view_indexes

REGISTRY = load_registry(dbt_manifest_path())
CHURN = REGISTRY.feature_set("churn_model")
DAY, HOUR = timedelta(days=1), timedelta(hours=1)
# The demo's two views, with TTLs of their own for this test: users 48 h, countries 10 h.
USERS = REGISTRY.view("user_features")
COUNTRIES = replace(REGISTRY.view("country_features"), online_ttl=10 * HOUR)
LABELS = LabelTable("test_labels", ("user_id", "country_code"), "label_time", "churned", "boolean", timedelta(days=30))
FEATURE_SET = FeatureSet(
    "test_model",
    (
        ViewRead(USERS, USERS.features),
        ViewRead(COUNTRIES, COUNTRIES.features, derived_from=("user_features", "country")),
    ),
    LABELS,
    "classification",
)
LONE_USER, LONE_SNAPSHOT = 999, ANCHOR - 5 * DAY  # a user with one snapshot, to pin each edge on it


def _types(view) -> dict[str, str]:
    return {
        view.entity_key: view.key_data_type,
        view.timestamp: "timestamp",
        **{f.name: f.data_type for f in view.features},
    }


def _user_history(rng: np.random.Generator, users: int = 60) -> pd.DataFrame:
    """Snapshots every 6 hours with gaps (some users skip days), values random, some nulls."""
    times = [ANCHOR - k * 6 * HOUR for k in range(40)]
    rows = [(user, t) for user in range(1, users + 1) for t in times if rng.random() < 0.7]
    frame = pd.DataFrame([*rows, (LONE_USER, LONE_SNAPSHOT)], columns=["user_id", "computed_at"])
    n = len(frame)
    frame["age"] = rng.integers(18, 80, n)
    frame["country"] = rng.choice(["US", "DE", None], n)
    frame["plan"] = rng.choice(["free", "pro"], n)
    frame["events_30d"] = rng.integers(0, 50, n)
    frame["avg_order_30d"] = np.where(rng.random(n) < 0.3, np.nan, rng.random(n) * 100)
    return frame


def _country_history(rng: np.random.Generator) -> pd.DataFrame:
    """Hourly snapshots of two countries with gaps (FR has none at all)."""
    times = [ANCHOR - k * HOUR for k in range(240)]
    frame = pd.DataFrame(
        [(c, t) for c in ("US", "DE") for t in times if rng.random() < 0.4], columns=["country_code", "computed_at"]
    )
    n = len(frame)
    frame["country_users"] = rng.integers(10, 500, n)
    frame["country_active_share_30d"] = rng.random(n)
    frame["country_paid_share"] = rng.random(n)
    frame["country_avg_order_30d"] = np.where(rng.random(n) < 0.2, np.nan, rng.random(n) * 50)
    return frame


def _labels(rng: np.random.Generator, users: pd.DataFrame, countries: pd.DataFrame) -> pd.DataFrame:
    """Label times at random hours, and on every edge of both views: exactly at a snapshot, exactly TTL after one,
    just past the TTL, before any snapshot; countries without any snapshot or null; plus duplicated rows."""
    start = users["computed_at"].min()
    codes = ["US", "DE", "FR", None]
    rows = [
        (u, codes[c], start + int(h) * HOUR)
        for u, c, h in zip(rng.integers(1, 65, 300), rng.integers(0, 4, 300), rng.integers(-24, 260, 300))
    ]
    for view, history in ((USERS, users), (COUNTRIES, countries)):
        snapshot = history.sample(30, random_state=1)
        for delta in (timedelta(0), view.online_ttl, view.online_ttl + timedelta(seconds=1)):
            for _, row in snapshot.iterrows():
                # The other key is random, so each edge of one view meets every situation of the other.
                user = row["user_id"] if view is USERS else int(rng.integers(1, 65))
                country = row["country_code"] if view is COUNTRIES else codes[int(rng.integers(0, 4))]
                rows.append((user, country, row["computed_at"] + delta))
    rows += [(u, "US", start - DAY) for u in range(1, 6)]  # before any snapshot
    rows += [
        (LONE_USER, "DE", LONE_SNAPSHOT + delta)
        for delta in (timedelta(0), USERS.online_ttl, USERS.online_ttl + timedelta(seconds=1), -HOUR)
    ]
    rows += rows[:20]  # duplicates
    labels = pd.DataFrame(rows, columns=["user_id", "country_code", "label_time"])
    labels["churned"] = rng.random(len(labels)) < 0.2
    return labels


def _reference(
    histories: dict[str, pd.DataFrame], labels: pd.DataFrame, pushed: dict[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """Row by row, per view: the row with the greatest timestamp < t among the snapshots and the pushed rows (those
    `pushed` holds, each with its loaded_at) also loaded before t, a snapshot beating a pushed row of the same time;
    kept if its timestamp >= t - that view's TTL, else nothing (each label looks through every row of its entity)."""
    snapshots: dict[str, dict[object, list[dict]]] = {}
    for read in FEATURE_SET.reads:
        by_entity = snapshots[read.view.name] = {}
        rows = histories[read.view.name].assign(loaded_at=None).to_dict("records")
        rows += (pushed or {}).get(read.view.name, pd.DataFrame()).to_dict("records")
        for snapshot in rows:
            by_entity.setdefault(snapshot[read.view.entity_key], []).append(snapshot)
    out = []
    for label in labels.to_dict("records"):
        row = dict(label)
        t = label["label_time"]
        for read in FEATURE_SET.reads:
            view = read.view
            best = None
            for snapshot in snapshots[view.name].get(label[read.key], []):
                seen = snapshot[view.timestamp] < t and (snapshot["loaded_at"] is None or snapshot["loaded_at"] < t)
                if seen and (
                    best is None
                    or (snapshot[view.timestamp], snapshot["loaded_at"] is None)
                    > (best[view.timestamp], best["loaded_at"] is None)
                ):
                    best = snapshot
            if best is not None and best[view.timestamp] < t - view.online_ttl:
                best = None
            row[snapshot_column(view)] = None if best is None else best[view.timestamp]
            for feature in read.features:
                row[feature.name] = None if best is None else best[feature.name]
        out.append(row)
    return pd.DataFrame(out)


def _normalized(frame: pd.DataFrame) -> list[tuple]:
    columns = [
        "user_id",
        "country_code",
        "label_time",
        "churned",
        *(snapshot_column(v) for v in FEATURE_SET.views),
        *FEATURE_SET.feature_names,
    ]
    rows = []
    for row in frame[columns].itertuples(index=False):
        rows.append(tuple(None if pd.isna(v) else round(v, 9) if isinstance(v, float) else v for v in row))
    return rows


def _load(
    warehouse, con, users: pd.DataFrame, countries: pd.DataFrame, labels: pd.DataFrame, indexed: bool = True
) -> None:
    """The views and the labels; on PostgreSQL each view indexed on (key, timestamp) as the dbt build leaves it."""
    for view, history in ((USERS, users), (COUNTRIES, countries)):
        warehouse.append(con, view.name, history, _types(view))
        if warehouse.kind == "postgres" and indexed:
            warehouse.execute(con, f"create index on {view.name} ({view.entity_key}, {view.timestamp})")
    warehouse.append(
        con,
        "test_labels",
        labels,
        {"user_id": "bigint", "country_code": "varchar", "label_time": "timestamp", "churned": "boolean"},
    )


@pytest.fixture(scope="module")
def generated():
    rng = np.random.default_rng(3)
    users, countries = _user_history(rng), _country_history(rng)
    labels = _labels(rng, users, countries)
    expected = _reference({"user_features": users, "country_features": countries}, labels)
    return users, countries, labels, expected


@pytest.mark.parametrize("engine", ["duckdb", "postgres", "spark"])
def test_a_two_view_training_set_matches_the_row_by_row_reference_on_every_edge_of_each_views_ttl(
    engine, generated, request
):
    warehouse = request.getfixturevalue(f"{engine}_warehouse")
    users, countries, labels, expected = generated
    with warehouse.connect() as con:
        _load(warehouse, con, users, countries, labels)
        sql, params = point_in_time_sql(warehouse, FEATURE_SET)
        assert build_table(warehouse, con, "test_training_set", sql, params) == len(labels)  # duplicates survive
        first = warehouse.fetch(con, f"select * from test_training_set order by {LABEL_ROW}")
        build_table(warehouse, con, "test_training_set", sql, params)
        second = warehouse.fetch(con, f"select * from test_training_set order by {LABEL_ROW}")

    # label_row numbers the rows in the first view's (key, time) order, then the other keys and the target.
    expected = expected.sort_values(
        ["user_id", "label_time", "country_code", "churned"], kind="stable", na_position="last"
    )
    assert _normalized(first) == _normalized(expected)
    assert _normalized(first) == _normalized(second)  # a rebuild gives the same rows in the same order
    assert list(first[LABEL_ROW]) == list(range(1, len(labels) + 1))
    lone = first[first["user_id"] == LONE_USER].set_index("label_time")["user_features_snapshot_at"]
    assert lone[LONE_SNAPSHOT] is pd.NaT  # the snapshot stamped t is not available at t
    assert lone[LONE_SNAPSHOT + USERS.online_ttl] == LONE_SNAPSHOT  # exactly TTL old: still fresh
    assert lone[LONE_SNAPSHOT + USERS.online_ttl + timedelta(seconds=1)] is pd.NaT  # older than the TTL: no features
    assert lone[LONE_SNAPSHOT - HOUR] is pd.NaT  # before any snapshot
    no_country = first[first["country_code"].isna() | (first["country_code"] == "FR")]
    assert len(no_country) and no_country["country_features_snapshot_at"].isna().all()
    assert no_country["country_users"].isna().all() and no_country["user_features_snapshot_at"].notna().any()


def test_duckdb_postgres_and_spark_give_identical_two_view_training_sets(
    duckdb_warehouse, postgres_warehouse, spark_warehouse, generated
):
    users, countries, labels, _ = generated
    built = []
    for warehouse in (duckdb_warehouse, postgres_warehouse, spark_warehouse):
        with warehouse.connect() as con:
            _load(warehouse, con, users, countries, labels)
            sql, params = point_in_time_sql(warehouse, FEATURE_SET)
            build_table(warehouse, con, "test_training_set", sql, params)
            built.append(warehouse.fetch(con, f"select * from test_training_set order by {LABEL_ROW}"))
    for other in built[1:]:
        assert list(other.columns) == list(built[0].columns)
        assert _normalized(other) == _normalized(built[0])


@pytest.mark.parametrize("engine", ["duckdb", "postgres", "spark"])
def test_a_training_build_that_fails_while_running_keeps_the_previous_training_set(engine, request):
    warehouse = request.getfixturevalue(f"{engine}_warehouse")
    with warehouse.connect() as con:
        build_table(warehouse, con, "test_training_set", "select 1 as label_row", [])
    with pytest.raises(Exception, match="not a number"), warehouse.connect() as con:
        build_table(warehouse, con, "test_training_set", "select cast(? as integer) as label_row", ["not a number"])
    assert warehouse.query("select * from test_training_set")["label_row"].tolist() == [1]
    with warehouse.connect() as con:
        assert build_table(warehouse, con, "test_training_set", "select 2 as label_row union all select 3", []) == 2
        assert warehouse.fetch(con, "select * from test_training_set order by 1")["label_row"].tolist() == [2, 3]
        assert not warehouse.table_exists(con, "test_training_set__building")


def test_a_postgres_training_build_refuses_a_view_without_its_key_and_timestamp_index(postgres_warehouse, generated):
    users, countries, labels, _ = generated
    with postgres_warehouse.connect() as con:
        _load(postgres_warehouse, con, users, countries, labels, indexed=False)
        postgres_warehouse.execute(con, "create index on user_features (user_id, computed_at)")
        postgres_warehouse.execute(con, "create index on country_features (computed_at, country_code)")  # wrong order
        with pytest.raises(WarehouseError, match=r"country_features has no index on \(country_code, computed_at\)"):
            require_view_indexes(postgres_warehouse, con, FEATURE_SET)
        postgres_warehouse.execute(con, "create index on country_features (country_code, computed_at)")
        require_view_indexes(postgres_warehouse, con, FEATURE_SET)


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
    # Every feature of every view the model reads, the country view's included.
    assert report.features_checked == tuple(f"{r.view.name}.{f.name}" for r in CHURN.reads for f in r.features)
    assert any(name.startswith("country_features.") for name in report.features_checked)
    assert report.passed, report.problems[:3]


def test_leakage_check_fails_on_a_training_set_that_sees_the_snapshot_at_label_time(demo_warehouse):
    with demo_warehouse.connect() as con:
        # Labels exactly at snapshot times, joined with <= instead of <: the snapshot stamped t leaks in.
        demo_warehouse.execute(
            con,
            "create or replace table exact_labels as select user_id, country as country_code, computed_at as "
            "label_time, "
            "false as churned from user_features where computed_at > (select min(computed_at) from user_features) "
            "order by 1, 3 limit 50",
        )
        exact = replace(CHURN, labels=replace(CHURN.labels, name="exact_labels"))
        sql, params = point_in_time_sql(demo_warehouse, exact)
        leaky_sql = sql.replace("labels.label_time > snapshot.computed_at", "labels.label_time >= snapshot.computed_at")
        assert leaky_sql != sql
        build_table(demo_warehouse, con, "leaky_training_set", leaky_sql, params)
        build_table(demo_warehouse, con, "honest_training_set", sql, params)

    leaky = check_leakage(demo_warehouse, CHURN, "leaky_training_set", sample=50)
    assert not leaky.passed
    problem = leaky.problems[0]
    assert problem["feature"] == "user_features.age" and problem[LABEL_ROW] >= 1
    assert "computed at or after the label time" in problem["problem"]
    assert check_leakage(demo_warehouse, CHURN, "honest_training_set", sample=50).passed


def test_leakage_check_names_a_feature_whose_value_does_not_come_from_its_snapshot(demo_warehouse):
    # Every row of the table is checked, each recomputed from the feature history: the training set's first 400
    # rows (label_row stays 1..400), two of them tampered.
    with demo_warehouse.connect() as con:
        demo_warehouse.execute(
            con,
            "create or replace table tampered_training_set as select * from churn_training_set where label_row <= 400",
        )
        demo_warehouse.execute(
            con,
            "update tampered_training_set set events_30d = events_30d + 1 where label_row = (select min(label_row) "
            "from tampered_training_set where user_features_snapshot_at is not null)",
        )
        demo_warehouse.execute(
            con,
            "update tampered_training_set set country_paid_share = country_paid_share / 2 where label_row = (select "
            "max(label_row) "
            "from tampered_training_set where country_features_snapshot_at is not null)",
        )
        row = int(
            demo_warehouse.fetch(
                con, "select min(label_row) as r from tampered_training_set where user_features_snapshot_at is not null"
            )["r"].iloc[0]
        )
        last = int(
            demo_warehouse.fetch(
                con,
                "select max(label_row) as r from tampered_training_set where country_features_snapshot_at is not null",
            )["r"].iloc[0]
        )
    total = int(demo_warehouse.query("select count(*) as n from tampered_training_set")["n"].iloc[0])
    report = check_leakage(demo_warehouse, CHURN, "tampered_training_set", sample=total)
    assert [(p[LABEL_ROW], p["feature"]) for p in report.problems] == [
        (row, "user_features.events_30d"),
        (last, "country_features.country_paid_share"),
    ]

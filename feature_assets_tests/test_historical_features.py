"""FeatureStore.historical_features: a caller's entity rows, each with its features as of its own time, held against
the row-by-row reference of test_training on DuckDB, PostgreSQL and Spark, against the training-set asset's rows,
and every bad input refused by name."""

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from test_training import (
    COUNTRIES,
    FEATURE_SET,
    HOUR,
    LONE_SNAPSHOT,
    LONE_USER,
    REGISTRY,
    USERS,
    _country_history,
    _labels,
    _load,
    _reference,
    _user_history,
)

from feature_assets import FeatureStore
from feature_assets.errors import DataError, FeatureStoreError, RegistryError
from feature_assets.registry import LABEL_ROW, snapshot_column

# The registry of test_training's two views (the country view with its 10 h TTL).
TEST_REGISTRY = replace(REGISTRY, views={**REGISTRY.views, COUNTRIES.name: COUNTRIES})
FEATURES = ["user_features:*", "country_features:*"]


@pytest.fixture(scope="module")
def generated():
    """test_training's generated histories and label rows (the reference is computed where a test needs it)."""
    rng = np.random.default_rng(3)
    users, countries = _user_history(rng), _country_history(rng)
    return users, countries, _labels(rng, users, countries), None


def _store(warehouse) -> FeatureStore:
    return FeatureStore(registry=TEST_REGISTRY, warehouse=warehouse)


def _values(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return [
        tuple(None if pd.isna(v) else round(v, 9) if isinstance(v, float) else v for v in row)
        for row in frame[columns].itertuples(index=False)
    ]


def _expected_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The reference's columns under historical_features' names."""
    return frame.rename(columns={snapshot_column(v): f"{v.name}__computed_at" for v in FEATURE_SET.views})


@pytest.mark.parametrize("engine", ["duckdb", "postgres", "spark"])
def test_historical_features_match_the_row_by_row_reference_in_the_callers_row_order(engine, generated, request):
    warehouse = request.getfixturevalue(f"{engine}_warehouse")
    users, countries, labels, _ = generated
    with warehouse.connect() as con:
        _load(warehouse, con, users, countries, labels)
    # The caller's rows: shuffled, duplicates kept, an index of its own and a column the store never sees.
    rows = labels.sample(frac=1.0, random_state=5).set_index(np.arange(len(labels)) * 10 + 3)
    rows["note"] = [f"row {i}" for i in range(len(rows))]
    expected = _expected_columns(_reference({"user_features": users, "country_features": countries}, rows))

    result = _store(warehouse).historical_features(rows, FEATURES)

    assert list(result.index) == list(rows.index)
    assert list(result.columns[: len(rows.columns)]) == list(rows.columns)
    pd.testing.assert_frame_equal(result[rows.columns], rows)
    columns = [
        "user_features__computed_at",
        *USERS.feature_names,
        "country_features__computed_at",
        *COUNTRIES.feature_names,
    ]
    assert list(result.columns[len(rows.columns) :]) == columns
    assert _values(result, columns) == _values(expected, columns)
    assert str(result["events_30d"].dtype) == "Int64" and str(result["avg_order_30d"].dtype) == "Float64"
    assert str(result["country"].dtype) == "string" and str(result["user_features__computed_at"].dtype).startswith(
        "datetime64"
    )


def test_a_derived_key_is_taken_from_the_other_views_snapshot_as_of_each_row(duckdb_warehouse, generated):
    users, countries, labels, _ = generated
    with duckdb_warehouse.connect() as con:
        _load(duckdb_warehouse, con, users, countries, labels)
    rows = labels[["user_id", "label_time"]]
    # The reference: the user's country as of the row's time, then that country's snapshot as of the same time.
    countries_then = _reference({"user_features": users, "country_features": countries}, rows.assign(country_code=None))
    expected = _reference(
        {"user_features": users, "country_features": countries},
        rows.assign(country_code=countries_then["country"].to_numpy()),
    )

    result = _store(duckdb_warehouse).historical_features(rows, ["country_features:country_users"])

    assert "country_code" not in result.columns
    assert result["country_users"].notna().sum() > 50
    assert _values(result, ["country_users", "country_features__computed_at"]) == _values(
        expected, ["country_users", snapshot_column(COUNTRIES)]
    )


def test_a_model_name_brings_its_declared_features_and_equals_its_training_set_rows(trained):
    warehouse, _ = trained
    training_set = warehouse.query(f"select * from churn_training_set order by {LABEL_ROW}")
    rows = training_set[["user_id", "country_code", "label_time", "churned"]]
    churn = REGISTRY.feature_set("churn_model")

    result = FeatureStore(registry=REGISTRY, warehouse=warehouse).historical_features(rows, "churn")

    assert list(result.columns[4:]) == [
        column
        for read in churn.reads
        for column in (f"{read.view.name}__computed_at", *(f.name for f in read.features))
    ]
    for read in churn.reads:
        assert _values(result, [f"{read.view.name}__computed_at"]) == _values(
            training_set, [snapshot_column(read.view)]
        )
    assert _values(result, list(churn.feature_names)) == _values(training_set, list(churn.feature_names))


def test_shared_names_become_view_prefixed_and_tz_aware_times_are_converted_to_utc(duckdb_warehouse, generated):
    users, countries, labels, _ = generated
    with duckdb_warehouse.connect() as con:
        _load(duckdb_warehouse, con, users, countries, labels)
    store = _store(duckdb_warehouse)
    rows = labels[["user_id", "country_code", "label_time"]].head(50)
    naive = store.historical_features(rows, ["user_features:plan", "user_features:events_30d"])
    zoned = rows.assign(label_time=rows["label_time"].dt.tz_localize("UTC").dt.tz_convert("America/New_York"))
    converted = store.historical_features(zoned, ["user_features:plan", "user_features:events_30d"])
    pd.testing.assert_frame_equal(naive.drop(columns="label_time"), converted.drop(columns="label_time"))

    full = store.historical_features(rows, ["user_features:plan"], full_feature_names=True)
    assert "user_features__plan" in full.columns and "plan" not in full.columns

    empty = store.historical_features(rows.head(0), FEATURES)
    assert empty.empty and "country_users" in empty.columns and str(empty["events_30d"].dtype) == "Int64"


@pytest.mark.parametrize(
    ("rows", "features", "error", "message"),
    [
        (
            lambda r: r.drop(columns="user_id"),
            FEATURES,
            FeatureStoreError,
            "no column user_id, the key of user_features",
        ),
        (lambda r: r, ["user_features:nope"], RegistryError, "user_features has no feature 'nope'; it has age, "),
        (lambda r: r, ["users:age"], RegistryError, "no feature view 'users'"),
        (lambda r: r, ["churny"], RegistryError, "'churny' is neither 'view:feature', 'view:\\*' nor a model"),
        (lambda r: r.drop(columns="label_time"), FEATURES, FeatureStoreError, "no timestamp column 'label_time'"),
        (lambda r: r.assign(label_time=r["label_time"].astype(str)), FEATURES, DataError, "convert it with pd.to_dat"),
        (lambda r: r.assign(label_time=r["label_time"].where(r.index != 3)), FEATURES, DataError, "1 null times"),
        (lambda r: r.assign(user_id=r["user_id"].astype(str)), FEATURES, DataError, "column user_id holds string"),
        (lambda r: r.assign(user_id=r["user_id"] + 0.5), FEATURES, DataError, "column user_id holds floating"),
        (lambda r: r.assign(age=1), FEATURES, FeatureStoreError, "already have the columns age; pass full_feature_na"),
        (lambda r: r, [], FeatureStoreError, "no features requested"),
    ],
)
def test_bad_entity_rows_and_references_are_refused_by_name(
    duckdb_warehouse, generated, rows, features, error, message
):
    _, _, labels, _ = generated
    with pytest.raises(error, match=message):
        _store(duckdb_warehouse).historical_features(rows(labels.head(20).reset_index(drop=True)), features)
    with duckdb_warehouse.connect() as con:
        assert not duckdb_warehouse.table_exists(con, "user_features")  # nothing was written


def test_the_ttl_edges_hold_for_a_callers_rows(duckdb_warehouse, generated):
    users, countries, labels, _ = generated
    with duckdb_warehouse.connect() as con:
        _load(duckdb_warehouse, con, users, countries, labels)
    edges = [timedelta(0), USERS.online_ttl, USERS.online_ttl + timedelta(seconds=1), -HOUR]
    rows = pd.DataFrame({"user_id": LONE_USER, "label_time": [LONE_SNAPSHOT + edge for edge in edges]})

    found = _store(duckdb_warehouse).historical_features(rows, ["user_features:age"])["user_features__computed_at"]

    # Not at its own time, still at exactly the TTL, not a second past it, not before it.
    assert [None if pd.isna(t) else t for t in found] == [None, LONE_SNAPSHOT, None, None]

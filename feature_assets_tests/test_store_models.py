"""Models saved from Python (FeatureStore.save_model): bound to the schema as built-in models are, served like them,
their training rows kept; promotion refused while a view they read has a drift error; bad input refused by name with
nothing written."""

import re
from dataclasses import replace

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from served_models import record, training_rows, write_snapshots
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from feature_assets import FeatureStore
from feature_assets.errors import FeatureStoreError, ModelStoreError, RegistryError
from feature_assets.registry import load_registry
from feature_assets.serving import FolderModelStore, Predictor, SchemaMismatch, SqliteOnlineStore
from feature_assets.serving.predictor import feature_frame
from feature_assets.settings import Settings, dbt_manifest_path
from feature_assets.store import PromotionRefused
from feature_assets.warehouses import DuckDBWarehouse

REGISTRY = load_registry(dbt_manifest_path())
CHURN = REGISTRY.feature_set("churn_model")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store over a DuckDB warehouse, a SQLite online store with every view synced, folder models, and a Dagster
    instance of its own."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    write_snapshots(online, REGISTRY, users=50)
    with FeatureStore(
        Settings.from_env({"FEATURE_STORE_HOME": str(tmp_path)}),
        registry=REGISTRY,
        warehouse=DuckDBWarehouse(tmp_path / "warehouse.duckdb"),
        online_store=online,
        model_store=FolderModelStore(tmp_path / "models"),
    ) as opened:
        yield opened
    online.close()


def _forest(store: FeatureStore, estimator: object = None, reverse: bool = False) -> tuple[object, pd.DataFrame]:
    """A random forest (or `estimator`) fitted on the model input of synthetic churn rows, and those rows."""
    rows = training_rows(CHURN, 600, np.random.default_rng(0))
    features = store.model_input(rows, "churn_model")
    if reverse:
        features = features[list(features.columns)[::-1]]
    strings = [name for name in features.columns if features[name].dtype == object]
    columns = ColumnTransformer(
        [
            ("numbers", SimpleImputer(), [c for c in features.columns if c not in strings]),
            ("strings", make_pipeline(SimpleImputer(strategy="constant", fill_value="none"), OneHotEncoder()), strings),
        ]
    )
    estimator = estimator or RandomForestClassifier(n_estimators=30, min_samples_leaf=10, random_state=0)
    model = make_pipeline(columns, estimator)
    return model.fit(features, rows[CHURN.target]), rows


def test_a_saved_estimator_scores_exactly_as_its_own_predict_proba_on_the_online_vector(store):
    model, rows = _forest(store)
    version = store.save_model("churn_forest", model, "churn_model", "classification", rows, {"auc": 0.7})
    store.promote("churn_forest", version)

    predictor = Predictor(store.online_store, store.model_store)
    card = predictor.served_card("churn_forest")
    assert card.version == version and card.feature_names == list(CHURN.feature_names)
    assert [f["definition_checksum"] for f in card.features] == [f.definition_checksum for f in CHURN.features]
    assert card.trainer["function"] == "notebook" and card.trainer["estimator"].endswith("Pipeline")
    assert card.metrics == {"auc": 0.7} and card.training["rows"] == len(rows)
    assert card.caller_keys == ["user_id"]  # the country is derived from the user's, as churn_model declares
    for user in (1, 17, 50):
        prediction = predictor.predict_one("churn_forest", user)
        online = store.online_features("churn_model", [{"user_id": user}])
        vector = feature_frame({f.name: online[f.name].tolist() for f in CHURN.features}, _declared())
        assert prediction.score == model.predict_proba(vector)[0, 1]
    many = predictor.predict("churn_forest", [1, 17, 999])
    assert many["score"].iloc[:2].tolist() == [predictor.predict_one("churn_forest", u).score for u in (1, 17)]
    assert "user_id 999 has no user_features" in many["error"].iloc[2]
    pd.testing.assert_frame_equal(store.training_set("churn_forest"), rows)


def test_a_saved_model_is_refused_once_a_feature_it_reads_is_defined_anew(store):
    model, rows = _forest(store)
    store.promote("churn_forest", store.save_model("churn_forest", model, "churn_model", "classification", rows))
    view = REGISTRY.view("user_features")
    changed = replace(view, features=tuple(replace(f, definition_checksum="another") for f in view.features))
    frame = store.online_features("user_features:*", [{"user_id": 1}]).drop(columns=["missing"])
    frame = frame.rename(columns={"user_features__computed_at": view.timestamp})[
        [view.entity_key, view.timestamp, *view.feature_names]
    ]
    record(store.online_store, changed, frame)
    with pytest.raises(SchemaMismatch, match=re.escape("reads user_features.age, but its definition (SQL) changed")):
        Predictor(store.online_store, store.model_store).predict_one("churn_forest", 1)


def test_promotion_is_refused_while_a_view_it_reads_has_a_drift_error_unless_forced(store):
    model, rows = _forest(store)
    first = store.save_model("churn_forest", model, "churn_model", "classification", rows)
    store.promote("churn_forest", first)
    second = store.save_model("churn_forest", model, "churn_model", "classification", rows)
    with store.warehouse.connect() as con:
        store.warehouse.execute(
            con,
            "create table country_features_skew "
            "(report_at timestamp, feature varchar, severity varchar, reasons varchar)",
        )
        store.warehouse.execute(
            con,
            "insert into country_features_skew values (timestamp '2026-01-01', 'country_paid_share', 'error', "
            "'psi 0.41 >= 0.25'), (timestamp '2026-01-02', 'country_paid_share', 'ok', '')",
        )
    store.promote("churn_forest", second)  # the newest report is clean
    third = store.save_model("churn_forest", model, "churn_model", "classification", rows)
    with store.warehouse.connect() as con:
        store.warehouse.execute(
            con,
            "insert into country_features_skew values (timestamp '2026-01-03', 'country_paid_share', 'error', "
            "'psi 0.41 >= 0.25')",
        )
    message = (
        f"churn_forest {third} not promoted: drift error on country_paid_share \\(country_features: psi 0.41 >= "
        f"0.25\\); churn_forest {second} keeps serving"
    )
    with pytest.raises(PromotionRefused, match=message):
        store.promote("churn_forest", third)
    assert store.model_store.current("churn_forest") == second
    store.promote("churn_forest", third, force=True)
    assert store.model_store.current("churn_forest") == third
    history = store.model_store.card("churn_forest", third).history
    assert [event["note"] for event in history] == [
        "forced past drift error on country_paid_share (country_features: psi 0.41 >= 0.25)"
    ]


def test_a_registry_model_under_its_validation_floor_is_not_promoted_unless_forced(store):
    model, rows = _forest(store)
    weak = store.save_model("churn_model", model, "churn_model", "classification", rows, metrics={"auc": 0.55})
    unmeasured = store.save_model("churn_model", model, "churn_model", "classification", rows)
    with pytest.raises(PromotionRefused, match=f"churn_model {weak} not promoted: validation auc 0.5500 is under its "):
        store.promote("churn_model", weak)
    with pytest.raises(PromotionRefused, match=re.escape("validation auc is not recorded (its floor is 0.6)")):
        store.promote("churn_model", unmeasured)
    store.promote("churn_model", weak, force=True)
    assert store.model_store.current("churn_model") == weak
    [event] = store.model_store.card("churn_model", weak).history
    assert event["note"] == "forced past validation auc 0.5500 is under its floor 0.6"
    # A model the registry does not declare has no floor.
    store.promote("churn_forest", store.save_model("churn_forest", model, "churn_model", "classification", rows))


def test_a_saved_model_shows_in_the_dagster_ui_as_an_observation_of_its_asset(store):
    model, rows = _forest(store)
    version = store.save_model("churn_forest", model, "churn_model", "classification", rows)
    instance = dg.DagsterInstance.get()
    observation = instance.fetch_observations(dg.AssetKey("churn_forest"), limit=1).records[0]
    metadata = observation.asset_observation.metadata
    assert metadata["version"].value == version and metadata["training_rows"].value == len(rows)


class _NoPredict:
    def fit(self, *args: object) -> "_NoPredict":
        return self


@pytest.mark.parametrize(
    ("name", "model", "features", "task", "message"),
    [
        ("churn_forest", _NoPredict(), "churn_model", "classification", "has no predict"),
        ("churn_forest", "a string", "churn_model", "classification", "has no predict"),
        ("ChurnForest", None, "churn_model", "classification", "model 'ChurnForest' is not snake_case"),
        ("churn_forest", None, "churn_model", "ranking", "task must be one of classification, regression"),
        ("churn_forest", None, ["user_features:agee"], "classification", "user_features has no feature 'agee'"),
        ("churn_forest", "reordered", "churn_model", "classification", "in another order than the model's input"),
        ("churn_forest", "regressor", "churn_model", "classification", "predict_proba"),
    ],
)
def test_bad_models_are_refused_by_name_and_nothing_is_written(store, name, model, features, task, message):
    fitted, rows = _forest(store)
    model = {
        None: fitted,
        "reordered": _forest(store, reverse=True)[0],
        "regressor": _forest(store, LinearRegression())[0],
    }.get(model, model)
    with pytest.raises((FeatureStoreError, RegistryError), match=message):
        store.save_model(name, model, features, task, rows)
    assert store.model_store.versions(name) == []
    with pytest.raises(ModelStoreError):
        store.training_set(name)


def _declared() -> list[dict[str, str]]:
    return [{"name": f.name, "dtype": f.dtype} for f in CHURN.features]

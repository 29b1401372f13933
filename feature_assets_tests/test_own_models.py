"""A team's own model: a trainer declared in the YAML (meta.feature_set.trainer: "package.module:function"), found
on the path as the team's own package is, fitted on the model input form, validated like the built-in ones, and
served like any other version."""

import importlib
import sys
from dataclasses import replace

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from served_models import training_rows

from feature_assets.assets.models import model_assets, train
from feature_assets.errors import ModelError
from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.resources.model_store import ModelStoreResource
from feature_assets.serving import FolderModelStore, Predictor, SqliteOnlineStore
from feature_assets.serving.predictor import feature_frame
from feature_assets.settings import dbt_manifest_path

REGISTRY = load_registry(dbt_manifest_path())
CHURN, LTV = REGISTRY.feature_set("churn_model"), REGISTRY.feature_set("ltv_model")

TEAM_MODELS = '''
"""A team's own trainers: each takes the model input and the target and returns a fitted estimator."""
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

SEEN = {}


def _columns(features):
    strings = [name for name, dtype in features.dtypes.items() if dtype == object]
    numbers = [name for name in features.columns if name not in strings]
    return ColumnTransformer(
        [("numbers", SimpleImputer(), numbers), ("strings", OneHotEncoder(handle_unknown="ignore"), strings)]
    )


def forest(features, target):
    SEEN["features"], SEEN["target"] = features, target
    model = RandomForestClassifier(n_estimators=40, min_samples_leaf=20, random_state=0)
    return make_pipeline(_columns(features), model).fit(features, target)


def ridge(features, target):
    SEEN["target"] = target
    return make_pipeline(_columns(features), Ridge(alpha=1.0)).fit(features, target)


def regression_for_churn(features, target):
    return make_pipeline(_columns(features), LinearRegression()).fit(features, target)


def unfitted(features, target):
    return RandomForestClassifier()


def reordered(features, target):
    return forest(features[list(features.columns)[::-1]], target)


def failing(features, target):
    raise ValueError("the team's bug")
'''


@pytest.fixture
def team_models(tmp_path, monkeypatch):
    """The team's package, outside this project, importable as an installed package is."""
    package = tmp_path / "team" / "team_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "trainers.py").write_text(TEAM_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path / "team"))
    for name in ("team_models", "team_models.trainers"):  # imported anew from this test's folder
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("team_models.trainers")


def test_a_declared_trainer_is_materialized_validated_and_served_like_a_built_in_model(trained, team_models, tmp_path):
    warehouse, _ = trained
    spec = "team_models.trainers:forest"
    registry = replace(REGISTRY, feature_sets={**REGISTRY.feature_sets, CHURN.model: replace(CHURN, trainer=spec)})
    [asset] = [asset for asset in model_assets(registry) if asset.key.to_user_string() == CHURN.model]
    result = dg.materialize(
        [asset],
        resources={"warehouse": warehouse, "model_store": ModelStoreResource(root=str(tmp_path / "models"))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    models = FolderModelStore(tmp_path / "models")
    card, pipeline = models.load(CHURN.model, metadata["version"].value)
    assert card.trainer["function"] == metadata["trainer"].value == spec
    assert card.trainer["estimator"] == metadata["estimator"].value == "sklearn.pipeline.Pipeline"
    assert 0.5 < card.metrics["auc"] <= 1.0 and metadata["auc"].value == round(card.metrics["auc"], 4)

    # The trainer got the fit rows in the model input form: features by name in card order, numbers as floats,
    # strings as objects; the target as booleans.
    features, target = team_models.SEEN["features"], team_models.SEEN["target"]
    assert list(features.columns) == card.feature_names and len(features) == len(target) == card.rows["fit"]
    assert {f["name"]: str(features[f["name"]].dtype) for f in card.features} == {
        f["name"]: "object" if f["dtype"] == "string" else "float64" for f in card.features
    }
    assert target.dtype == bool
    kept = models.training_set(CHURN.model, card.version)
    fit = kept[kept["split"] == "fit"]
    pd.testing.assert_frame_equal(
        features, feature_frame({name: fit[name].tolist() for name in card.feature_names}, card.features)
    )

    # Served like any version: the score is the estimator's own predict_proba on the online vector.
    models.promote(CHURN.model, card.version)
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    for view in REGISTRY.views.values():
        sync_online_store(warehouse, online, view, full_resync=True)
    users = warehouse.query(
        "select user_id from user_features where computed_at = (select max(computed_at) from user_features) "
        "and country is not null order by user_id limit 20"
    )["user_id"].tolist()
    predictor = Predictor(online, models)
    served = [predictor.predict_one(CHURN.model, int(user)) for user in users]
    vectors = feature_frame({name: [p.features[name] for p in served] for name in card.feature_names}, card.features)
    own = pipeline.predict_proba(vectors)[:, 1]
    assert [p.version for p in served] == [card.version] * len(users)
    np.testing.assert_allclose([p.score for p in served], own, rtol=0, atol=1e-12)
    np.testing.assert_allclose(predictor.predict(CHURN.model, users)["score"].to_numpy(float), own, rtol=0, atol=1e-12)
    assert len(set(np.round(own, 6))) > 1


def test_a_declared_regression_trainer_gets_a_float_target_and_is_validated_by_mae(team_models):
    trained = train(
        replace(LTV, trainer="team_models.trainers:ridge"), training_rows(LTV, 600, np.random.default_rng(0))
    )
    assert team_models.SEEN["target"].dtype == np.float64
    assert trained.trainer["function"] == "team_models.trainers:ridge" and trained.trainer["estimator"].endswith(
        "Pipeline"
    )
    assert trained.metrics["mae"] < trained.metrics["mae_of_mean_baseline"]


@pytest.mark.parametrize(
    "trainer, message",
    [
        (
            "team_models.absent:fit",
            "cannot import trainer team_models.absent:fit for model churn_model: ModuleNotFoundError: No module named "
            "'team_models.absent'",
        ),
        (
            "team_models.trainers:fit",
            "cannot import trainer team_models.trainers:fit for model churn_model: module team_models.trainers has no "
            "attribute fit",
        ),
        (
            "team_models.trainers:regression_for_churn",
            "model churn_model: trainer team_models.trainers:regression_for_churn returned sklearn.pipeline.Pipeline, "
            "which has no predict_proba",
        ),
        (
            "team_models.trainers:unfitted",
            "model churn_model: trainer team_models.trainers:unfitted returned "
            "sklearn.ensemble._forest.RandomForestClassifier, which is not fitted",
        ),
        (
            "team_models.trainers:reordered",
            "model churn_model: trainer team_models.trainers:reordered returned sklearn.pipeline.Pipeline, which was "
            "fitted on the features in another order than the model's input: country_avg_order_30d, ",
        ),
        (
            "team_models.trainers:failing",
            "trainer team_models.trainers:failing failed for model churn_model: ValueError: the team's bug",
        ),
    ],
)
def test_a_trainer_that_cannot_give_a_servable_model_is_refused_naming_it(team_models, trainer, message):
    with pytest.raises(ModelError) as refused:
        train(replace(CHURN, trainer=trainer), training_rows(CHURN, 600, np.random.default_rng(0)))
    assert str(refused.value).startswith(message)

"""Any scikit-learn-compatible estimator can be served: what the store checks of it, how it describes it, how a
declared trainer is imported, and the one input form it gets at training and serving alike."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from feature_assets.errors import ModelError
from feature_assets.serving.estimators import check_estimator, describe_estimator, import_trainer
from feature_assets.serving.predictor import feature_frame, feature_matrix, model_scorer

FEATURES = [{"name": "age", "dtype": "int64"}, {"name": "plan", "dtype": "string"}, {"name": "paid", "dtype": "bool"}]
NAMES = [f["name"] for f in FEATURES]
COLUMNS = {
    "age": [30, None, 41, 25] * 10,
    "plan": ["free", "pro", None, "pro"] * 10,
    "paid": [True, False, None, True] * 10,
}
TARGET = pd.Series([False, True, True, False] * 10)


def frame_pipeline():
    """A team's own pipeline, fitted on the DataFrame feature_frame gives (so it has feature_names_in_)."""
    columns = ColumnTransformer(
        [("numbers", "passthrough", ["age", "paid"]), ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])]
    )
    return make_pipeline(columns, RandomForestClassifier(n_estimators=10, random_state=0)).fit(
        feature_frame(COLUMNS, FEATURES), TARGET
    )


def test_the_feature_frame_is_the_matrix_by_name_numbers_as_floats_strings_as_objects_nulls_as_nan():
    frame = feature_frame(COLUMNS, FEATURES)
    assert list(frame.columns) == NAMES
    assert [str(dtype) for dtype in frame.dtypes] == ["float64", "object", "float64"]
    assert frame.iloc[:4].to_dict("list") == {
        "age": [30.0, pytest.approx(np.nan, nan_ok=True), 41.0, 25.0],
        "plan": ["free", "pro", pytest.approx(np.nan, nan_ok=True), "pro"],
        "paid": [1.0, 0.0, pytest.approx(np.nan, nan_ok=True), 1.0],
    }
    matrix = feature_matrix(COLUMNS, FEATURES)  # the same values, cell by cell
    for position, name in enumerate(NAMES):
        assert all(a == b or (a != a and b != b) for a, b in zip(frame[name], matrix[:, position])), name


def test_an_estimator_fitted_on_the_frame_is_scored_on_the_frame_and_one_fitted_on_numbers_on_floats():
    pipeline = frame_pipeline()
    matrix = feature_matrix(COLUMNS, FEATURES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns when a frame-fitted estimator is given other names
        scores = model_scorer(pipeline, FEATURES, classifier=True)(matrix)
        one = model_scorer(pipeline, FEATURES, classifier=True)(matrix[:1])
    np.testing.assert_array_equal(scores, pipeline.predict_proba(feature_frame(COLUMNS, FEATURES))[:, 1])
    assert one[0] == scores[0]

    numbers = [FEATURES[0], FEATURES[2]]
    filled = {"age": [30, 52, 41, 25] * 10, "paid": [True, False, False, True] * 10}
    regression = LinearRegression().fit(feature_matrix(filled, numbers).astype(float), np.arange(40.0))
    assert not hasattr(regression, "feature_names_in_")
    predicted = model_scorer(regression, numbers, classifier=False)(feature_matrix(filled, numbers))
    np.testing.assert_allclose(predicted, regression.predict(np.array([filled["age"], filled["paid"]], float).T))


class _NoProba:
    def predict(self, rows):
        return np.zeros(len(rows))


@pytest.mark.parametrize(
    "estimator, task, message",
    [
        (object(), "regression", "model m: saved builtins.object, which has no predict method"),
        (
            _NoProba(),
            "classification",
            "model m: saved test_estimators._NoProba, which has no predict_proba; a classification model serves the "
            "probability of its positive class",
        ),
        (
            LinearRegression().fit(np.ones((4, 3)), np.arange(4.0)),
            "classification",
            "sklearn.linear_model._base.LinearRegression, which has no predict_proba",
        ),
        (
            RandomForestClassifier(),
            "classification",
            "RandomForestClassifier, which is not fitted; call its fit before saving or returning it",
        ),
        (
            LogisticRegression().fit(pd.DataFrame({"plan": [1, 0, 1], "age": [1, 2, 3], "paid": [0, 1, 0]}), [0, 1, 0]),
            "classification",
            "LogisticRegression, which was fitted on the features in another order than the model's input: plan, age, "
            "paid; the model's input is age, plan, paid",
        ),
        (
            LogisticRegression().fit(pd.DataFrame({"age": [1, 2, 3], "country": [0, 1, 0]}), [0, 1, 0]),
            "classification",
            "which was fitted on other features than the model's input (missing plan, paid; extra country); the "
            "model's input is age, plan, paid",
        ),
    ],
)
def test_an_estimator_that_cannot_serve_is_refused_naming_why(estimator, task, message):
    with pytest.raises(ModelError) as refused:
        check_estimator(estimator, task, NAMES, "model m: saved")
    assert message in str(refused.value)


def test_a_fitted_estimator_taking_the_model_input_passes():
    check_estimator(frame_pipeline(), "classification", NAMES, "model m: saved")
    check_estimator(LinearRegression().fit(np.ones((4, 3)), np.arange(4.0)), "regression", NAMES, "model m: saved")


def test_an_estimator_is_described_by_its_class_and_own_parameters_in_json():
    described = describe_estimator(RandomForestClassifier(n_estimators=5, max_features=np.nan))
    assert described["estimator"] == "sklearn.ensemble._forest.RandomForestClassifier"
    assert described["params"]["n_estimators"] == 5 and described["params"]["max_features"] == "nan"
    pipeline = describe_estimator(frame_pipeline())
    assert pipeline["estimator"] == "sklearn.pipeline.Pipeline"
    assert pipeline["params"]["steps"].startswith("[('columntransformer', ColumnTransformer(")  # its repr
    json.dumps([described, pipeline], allow_nan=False)
    assert describe_estimator(_NoProba()) == {"estimator": "test_estimators._NoProba", "params": {}}


def test_a_declared_trainer_is_imported_from_the_path_or_refused_saying_why(tmp_path, monkeypatch):
    team = tmp_path / "team_models"
    team.mkdir()
    (team / "__init__.py").write_text("")
    (team / "churn.py").write_text("NOT_A_FUNCTION = 3\n\ndef fit(features, target):\n    return None\n")
    (team / "broken.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_trainer("team_models.churn:fit", "churn_model").__name__ == "fit"
    refusals = {
        "team_models.churn": "write it as 'package.module:function'",
        "team_models.absent:fit": "ModuleNotFoundError: No module named 'team_models.absent'",
        "team_models.broken:fit": "ModuleNotFoundError: No module named 'no_such_dependency'",
        "team_models.churn:train": "module team_models.churn has no attribute train",
        "team_models.churn:NOT_A_FUNCTION": "NOT_A_FUNCTION is a int, not a function",
    }
    for spec, reason in refusals.items():
        with pytest.raises(ModelError) as refused:
            import_trainer(spec, "churn_model")
        assert str(refused.value).startswith(f"cannot import trainer {spec} for model churn_model: ")
        assert reason in str(refused.value)

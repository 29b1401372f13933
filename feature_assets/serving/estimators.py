"""What the store asks of an estimator it serves, whoever trained it: the built-in pipelines, a team's own trainer
declared in the YAML (meta.feature_set.trainer), or a model saved from a notebook.

An estimator is any fitted object with `predict` (and `predict_proba` for classification, whose second column is
the positive class) taking the card's feature columns in card order: as the DataFrame `feature_frame` builds when
it was fitted on one (it has `feature_names_in_`, as every scikit-learn estimator fitted on a DataFrame does), as
the plain matrix `feature_matrix` builds otherwise.
"""

import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from feature_assets.errors import ModelError
from feature_assets.registry import TRAINER_FORM

__all__ = ["check_estimator", "describe_estimator", "estimator_name", "import_trainer"]


def estimator_name(estimator: object) -> str:
    """The estimator's class as module.QualName, e.g. sklearn.ensemble._forest.RandomForestClassifier."""
    kind = type(estimator)
    return f"{kind.__module__}.{kind.__qualname__}"


def check_estimator(estimator: object, task: str, feature_names: Sequence[str], what: str) -> None:
    """Raises ModelError naming why `estimator` cannot serve a `task` model reading `feature_names` in that order.

    `what` introduces the estimator in the message, which reads "{what} {module.QualName}, which ...", e.g.
    what="model churn_model: trainer teams.churn:fit returned".
    """
    described = f"{what} {estimator_name(estimator)}, which"
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(f"{described} has no predict method")
    if task == "classification" and not callable(getattr(estimator, "predict_proba", None)):
        raise ModelError(
            f"{described} has no predict_proba; a classification model serves the probability of its positive class"
        )
    if callable(getattr(estimator, "fit", None)):  # scikit-learn's check applies to estimators, which have fit
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(estimator)
        except NotFittedError:
            raise ModelError(f"{described} is not fitted; call its fit before saving or returning it") from None
    fitted_on = getattr(estimator, "feature_names_in_", None)
    if fitted_on is None:
        return
    names, expected = [str(name) for name in fitted_on], list(feature_names)
    if names == expected:
        return
    if sorted(names) == sorted(expected):
        raise ModelError(
            f"{described} was fitted on the features in another order than the model's input: "
            f"{', '.join(names)}; the model's input is {', '.join(expected)}"
        )
    missing = [name for name in expected if name not in names]
    extra = [name for name in names if name not in expected]
    parts = [f"missing {', '.join(missing)}" if missing else "", f"extra {', '.join(extra)}" if extra else ""]
    raise ModelError(
        f"{described} was fitted on other features than the model's input ({'; '.join(p for p in parts if p)}); "
        f"the model's input is {', '.join(expected)}"
    )


def describe_estimator(estimator: object) -> dict[str, Any]:
    """The estimator's class and its own parameters (get_params(deep=False)), JSON-safe: a value JSON cannot hold
    as it is (an estimator, a callable, NaN) is kept as its repr."""
    get_params = getattr(estimator, "get_params", None)
    params: dict[str, Any] = get_params(deep=False) if callable(get_params) else {}
    return {"estimator": estimator_name(estimator), "params": {str(k): _json_safe(v) for k, v in params.items()}}


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def import_trainer(spec: str, model: str) -> Callable[..., Any]:
    """The function a model's trainer "package.module:function" names, imported as any module on sys.path is (a
    team's own installed package, say); ModelError saying why it cannot be."""
    if not isinstance(spec, str) or not TRAINER_FORM.fullmatch(spec):
        raise ModelError(f"cannot import trainer {spec} for model {model}: write it as 'package.module:function'")
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # whatever its import raises (ImportError, SyntaxError, its own code's errors)
        raise ModelError(f"cannot import trainer {spec} for model {model}: {type(error).__name__}: {error}") from error
    function = getattr(module, function_name, None)
    if function is None:
        raise ModelError(
            f"cannot import trainer {spec} for model {model}: module {module_name} has no attribute {function_name}"
        )
    if not callable(function):
        raise ModelError(
            f"cannot import trainer {spec} for model {model}: {function_name} is a {type(function).__name__}, "
            "not a function"
        )
    return function  # type: ignore[no-any-return]  # callable() narrows to a Callable without its signature

"""Model artifacts: one fitted estimator per model declared in the registry (the built-in pipeline of its task, or
what its declared trainer returns), stored with its card and the rows it was fitted and validated on."""

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from feature_assets.errors import DataError, ModelError
from feature_assets.registry import LABEL_ROW, VALIDATION_FLOOR_CHECK, FeatureSet, Registry, snapshot_column
from feature_assets.resources.model_store import ModelStoreResource
from feature_assets.serving.estimators import check_estimator, describe_estimator, import_trainer
from feature_assets.serving.predictor import ModelCard, feature_frame, feature_matrix, model_scorer
from feature_assets.serving.training_rows import encode_training_rows
from feature_assets.training import with_request_features
from feature_assets.warehouses import Warehouse

__all__ = ["Trained", "build_pipeline", "model_assets", "train"]

VALIDATION_SHARE = 0.2  # the latest label times, so validation is a look into the future, as serving is


def build_pipeline(feature_set: FeatureSet, non_negative_target: bool = False) -> Pipeline:
    """Numbers: median-imputed with a null indicator, scaled. Strings: one-hot, null and unseen values included.

    Classification is a logistic regression: a one-row prediction takes well under a millisecond. Regression is
    gradient boosting; a target that is never negative (revenue, counts) gets a Poisson loss, so no prediction
    is negative either.
    """
    numeric = [i for i, f in enumerate(feature_set.inputs) if f.dtype != "string"]
    categorical = [i for i, f in enumerate(feature_set.inputs) if f.dtype == "string"]
    columns = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    if feature_set.task == "classification":
        return make_pipeline(columns, LogisticRegression(max_iter=2000))
    loss = "poisson" if non_negative_target else "squared_error"
    return make_pipeline(columns, HistGradientBoostingRegressor(loss=loss, max_iter=200, random_state=0))


@dataclass(frozen=True)
class Trained:
    """A fitted model, what its card records of the fit, and the rows it was fitted and validated on."""

    pipeline: Any  # the built-in Pipeline, or the estimator a declared trainer returned
    metrics: dict[str, float]
    rows: dict[str, int]  # fit, validation
    window: dict[str, str]  # first and last label times of fit and validation
    kept: pd.DataFrame  # the fit and validation rows as the training set holds them, and their split
    trainer: dict[str, Any]  # the card's trainer: function, estimator, params


def train(feature_set: FeatureSet, frame: pd.DataFrame) -> Trained:
    """Validates on the latest VALIDATION_SHARE of the label times and fits on those at least one outcome window
    earlier: a fit label's outcome then ends before the first validation label time, so the fit targets have not
    seen the period validation predicts. Fits the built-in pipeline of the task, or calls the declared trainer;
    either is validated by scoring as serving scores (model_scorer)."""
    label_time = feature_set.labels.label_time
    frame = frame.sort_values([label_time, LABEL_ROW], kind="stable")
    if frame.empty:
        raise DataError(f"{feature_set.model}: no training rows with features")
    times = frame[label_time]
    validation_start = times.iloc[int(len(frame) * (1 - VALIDATION_SHARE))]
    validation = frame[times >= validation_start]
    fit = frame[times <= validation_start - feature_set.labels.outcome_window]
    if len(fit) < 20 or len(validation) < 5:
        raise DataError(
            f"{feature_set.model}: {len(fit)} fit and {len(validation)} validation rows with features (fit label times "
            f"end {feature_set.labels.outcome_window} before validation ones); need at least 20 and 5: a longer history"
        )
    features = [{"name": f.name, "dtype": f.dtype} for f in feature_set.inputs]

    def matrix(part: pd.DataFrame) -> np.ndarray:
        return feature_matrix({f["name"]: part[f["name"]].tolist() for f in features}, features)

    target, classifier = feature_set.target, feature_set.task == "classification"
    y_fit = fit[target].astype(bool if classifier else float).to_numpy()
    y_validation = validation[target].astype(bool if classifier else float).to_numpy()
    if classifier and (y_fit.all() or not y_fit.any() or y_validation.all() or not y_validation.any()):
        raise DataError(f"{feature_set.model}: {target} has a single class in the fit or validation rows")
    if feature_set.trainer is None:
        pipeline = build_pipeline(feature_set, non_negative_target=not classifier and bool((y_fit >= 0).all()))
        pipeline.fit(matrix(fit), y_fit)
        trainer = {"function": "builtin", **describe_estimator(pipeline.steps[-1][1])}
    else:
        inputs = feature_frame({f["name"]: fit[f["name"]].tolist() for f in features}, features)
        pipeline = _fit_declared(feature_set, inputs, pd.Series(y_fit, name=target))
        trainer = {"function": feature_set.trainer, **describe_estimator(pipeline)}
    scores = model_scorer(pipeline, features, classifier)(matrix(validation))
    if classifier:
        metrics = {"auc": float(roc_auc_score(y_validation, scores)), "positive_rate": float(y_validation.mean())}
    else:
        mae = float(mean_absolute_error(y_validation, scores))
        baseline = float(np.abs(y_validation - y_fit.mean()).mean())
        metrics = {"mae": mae, "mae_of_mean_baseline": baseline, "mae_skill": 1 - mae / baseline if baseline else 0.0}
    window = {
        "first_label_time": str(fit[label_time].min()),
        "last_fit_label_time": str(fit[label_time].max()),
        "first_validation_label_time": str(validation[label_time].min()),
        "last_label_time": str(validation[label_time].max()),
    }
    kept = pd.concat([fit.assign(split="fit"), validation.assign(split="validation")], ignore_index=True)
    return Trained(pipeline, metrics, {"fit": len(fit), "validation": len(validation)}, window, kept, trainer)


def _fit_declared(feature_set: FeatureSet, features: pd.DataFrame, target: pd.Series) -> Any:
    """The fitted estimator the feature set's trainer returns for the fit rows, checked as serving needs it."""
    spec = str(feature_set.trainer)
    function = import_trainer(spec, feature_set.model)
    try:
        estimator = function(features, target)
    except Exception as error:  # the team's own code: whatever it raises, named with the trainer and the model
        raise ModelError(
            f"trainer {spec} failed for model {feature_set.model}: {type(error).__name__}: {error}"
        ) from error
    check_estimator(
        estimator,
        feature_set.task,
        [f.name for f in feature_set.inputs],
        f"model {feature_set.model}: trainer {spec} returned",
    )
    return estimator


def _floors_text(feature_set: FeatureSet) -> str:
    """The declared floors in words, e.g. "auc >= 0.6"."""
    return ", ".join(f"{metric} >= {floor:g}" for metric, floor in feature_set.min_validation)


def _model_description(feature_set: FeatureSet) -> str:
    what = feature_set.description.strip() or f"The {feature_set.task} model of {feature_set.target}."
    floors = _floors_text(feature_set)
    return (
        f"{what} It predicts {feature_set.target} ({feature_set.task}) and is trained on {feature_set.training_set}: "
        "each materialization is a new version in the model store, bound to the feature schema it was trained on, "
        "with the rows it was fitted and validated on. served_models promotes it"
        + (f" when its validation metrics reach their floors ({floors})" if floors else "")
        + " and no drift error holds it back."
    )


def _floor_check(feature_set: FeatureSet, metrics: dict[str, float], version: str) -> dg.AssetCheckResult:
    shortfalls = feature_set.validation_shortfalls(metrics)
    floors = dict(feature_set.min_validation)
    description = (
        f"version {version} not promoted: {'; '.join(shortfalls)}"
        if shortfalls
        else f"version {version} may be promoted: "
        + ", ".join(f"{metric} {metrics[metric]:.4f} >= {floor:g}" for metric, floor in floors.items())
    )
    return dg.AssetCheckResult(
        check_name=VALIDATION_FLOOR_CHECK,
        passed=not shortfalls,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "version": version,
            **{f"{metric}_floor": floor for metric, floor in floors.items()},
            **{metric: round(metrics[metric], 4) for metric in floors if metric in metrics},
        },
    )


def _schema_markdown(card: ModelCard) -> dg.MetadataValue:
    """The card's features, one wrapping line each (a table is cut off in the UI's metadata column)."""
    lines = [
        f"- {f['view']}.{f['name']}: {f['dtype']}, definition {f['definition_checksum'][:16]}" for f in card.features
    ]
    return dg.MetadataValue.md("\n".join([*lines, "", "Checksums: their first 16 hex digits (whole in `card`)."]))


def _model_asset(feature_set: FeatureSet) -> dg.AssetsDefinition:
    table = feature_set.training_set
    checks = (
        [
            dg.AssetCheckSpec(
                VALIDATION_FLOOR_CHECK,
                asset=feature_set.model,
                description="Holds back promotion (the run goes on: Dagster calls such a check non-blocking): a new "
                f"version is served only when its validation {_floors_text(feature_set)} (the "
                "floors declared in its YAML, meta.feature_set.min_validation); otherwise the previous version keeps "
                "serving.",
            )
        ]
        if feature_set.min_validation
        else []
    )

    @dg.asset(
        name=feature_set.model,
        deps=[table],
        group_name="models",
        kinds={"scikitlearn"},
        description=_model_description(feature_set),
        check_specs=checks,
    )
    def model(warehouse: dg.ResourceParam[Warehouse], model_store: ModelStoreResource) -> dg.MaterializeResult:
        rows = warehouse.query(f"select * from {table} order by {LABEL_ROW}")
        complete = np.logical_and.reduce([rows[snapshot_column(view)].notna().to_numpy() for view in feature_set.views])
        frame = with_request_features(feature_set, rows[complete])
        skipped = len(rows) - len(frame)
        trained = train(feature_set, frame)
        kept = encode_training_rows(trained.kept)
        trained_at = datetime.now(UTC)
        card = ModelCard.for_feature_set(
            feature_set,
            version=trained_at.strftime("%Y%m%dT%H%M%S%fZ"),
            trained_at=trained_at.isoformat(),
            training_window=trained.window,
            rows={**trained.rows, "without_features": skipped},
            metrics=trained.metrics,
            trainer=trained.trainer,
            training=kept.summary,
        )
        with model_store.store() as store:
            location = store.save(card, trained.pipeline, kept.data)
        return dg.MaterializeResult(
            check_results=[_floor_check(feature_set, card.metrics, card.version)] if checks else None,
            metadata={
                "version": card.version,
                "schema_version": card.schema_version,
                "features": ", ".join(card.feature_names),
                "feature_schema": _schema_markdown(card),
                **{name: round(value, 4) for name, value in card.metrics.items()},
                **{f"rows_{name}": count for name, count in card.rows.items()},
                **card.training_window,
                "trainer": trained.trainer["function"],
                "estimator": trained.trainer["estimator"],
                "estimator_params": dg.MetadataValue.json(trained.trainer["params"]),
                "training_rows": dg.MetadataValue.json(kept.summary),
                "stored_in": location,
                "card": dg.MetadataValue.json(asdict(card)),
            },
        )

    return model


def model_assets(registry: Registry) -> list[dg.AssetsDefinition]:
    return [_model_asset(feature_set) for feature_set in registry.feature_sets.values()]

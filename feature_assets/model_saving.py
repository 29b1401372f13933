"""Models fitted outside the pipeline (a notebook, a team's own training code), stored as versions bound to the
feature schema exactly as built-in models are, and shown in the Dagster UI as observations of their asset."""

import math
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from feature_assets.errors import FeatureStoreError
from feature_assets.registry import ViewRead
from feature_assets.serving.estimators import check_estimator, describe_estimator
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.model_store import ModelStore
from feature_assets.serving.training_rows import encode_training_rows
from feature_assets.settings import Settings

__all__ = ["observe_in_dagster", "save_model"]


def save_model(
    model_store: ModelStore,
    name: str,
    estimator: Any,
    reads: Sequence[ViewRead],
    task: str,
    training: pd.DataFrame | None,
    metrics: dict[str, Any],
) -> tuple[ModelCard, str]:
    """Checks the estimator against the features (in its input order) and stores it as a new version of `name`,
    with the training rows as given; returns its card and where it went. Nothing is written when a check fails."""
    seen: dict[str, str] = {}
    for read in reads:
        for feature in read.features:
            if feature.name in seen:
                raise FeatureStoreError(
                    f"model {name} would read a feature named {feature.name} from both {seen[feature.name]} and "
                    f"{read.view.name}; feature names must be unique within a model"
                )
            seen[feature.name] = read.view.name
    check_estimator(estimator, task, list(seen), f"model {name}")
    for metric, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise FeatureStoreError(f"metric {metric} of model {name} must be a finite number, got {value!r}")
    if training is not None and not isinstance(training, pd.DataFrame):
        raise FeatureStoreError(f"training must be the DataFrame the model was fit on, not {type(training).__name__}")
    rows = None if training is None else encode_training_rows(training)
    trained_at = datetime.now(UTC)
    card = ModelCard.for_reads(
        name,
        task,
        "",
        "",
        reads,
        version=trained_at.strftime("%Y%m%dT%H%M%S%fZ"),
        trained_at=trained_at.isoformat(),
        training_window={},
        rows={} if training is None else {"training": len(training)},
        metrics={metric: float(value) for metric, value in metrics.items()},
        trainer={"function": "notebook", **describe_estimator(estimator)},
        training=None if rows is None else rows.summary,
    )
    location = model_store.save(card, estimator, None if rows is None else rows.data)
    return card, location


def observe_in_dagster(settings: Settings, card: ModelCard, location: str) -> None:
    """Records the new version as an observation of the model's asset, so the UI's lineage shows models saved from
    Python beside those its runs train. A Dagster instance that cannot be reached is a warning: the version is
    stored and servable either way."""
    try:
        import dagster as dg

        from feature_assets.cli_runs import dagster_instance

        dagster_instance(settings).report_runless_asset_event(
            dg.AssetObservation(
                asset_key=card.model,
                description=f"version {card.version} saved from Python ({(card.trainer or {}).get('estimator')})",
                metadata={
                    "version": card.version,
                    "schema_version": card.schema_version,
                    "features": ", ".join(card.feature_names),
                    "trainer": dg.MetadataValue.json(card.trainer or {}),
                    "training_rows": (card.training or {}).get("rows", 0),
                    "stored_in": location,
                    **{name: round(value, 4) for name, value in card.metrics.items()},
                },
            )
        )
    except Exception as error:
        warnings.warn(f"{card.model} {card.version} is saved, but the Dagster UI was not told: {error}", stacklevel=3)

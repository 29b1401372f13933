"""Served models with real features in an online store, in about a second: the registry's own views and models,
trained by the models' own `train` on synthetic rows, and snapshots written and recorded as a sync writes them
(no dbt build, no Dagster run). For tests of what serves them, not of what builds them."""

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from feature_assets.as_of import current_hour, utc_now
from feature_assets.assets.models import train
from feature_assets.registry import LABEL_ROW, FeatureSet, FeatureView, Registry
from feature_assets.serving import ModelCard, ModelStore, OnlineStore, SyncRecord, encode_batch
from feature_assets.serving.codec import view_schema
from feature_assets.training import with_request_features

COUNTRIES = ["DE", "FR", "US", "BR", "IN", "JP", "GB"]
PLANS = ["free", "pro", "team"]


def user_rows(ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """user_features' values for these users (some averages null: users without orders)."""
    n = len(ids)
    average = rng.gamma(2.0, 15.0, n)
    return pd.DataFrame(
        {
            "user_id": pd.array(ids, dtype="int64"),
            "age": pd.array(rng.integers(18, 80, n), dtype="Int64"),
            "country": pd.array(rng.choice(COUNTRIES, n), dtype="string"),
            "plan": pd.array(rng.choice(PLANS, n), dtype="string"),
            "events_30d": pd.array(rng.poisson(12, n), dtype="Int64"),
            "avg_order_30d": pd.array(np.where(rng.random(n) < 0.2, np.nan, average), dtype="Float64"),
        }
    )


def country_rows(rng: np.random.Generator) -> pd.DataFrame:
    n = len(COUNTRIES)
    return pd.DataFrame(
        {
            "country_code": pd.array(COUNTRIES, dtype="string"),
            "country_users": pd.array(rng.integers(50, 500, n), dtype="Int64"),
            "country_active_share_30d": pd.array(rng.random(n), dtype="Float64"),
            "country_paid_share": pd.array(rng.random(n), dtype="Float64"),
            "country_avg_order_30d": pd.array(rng.gamma(2.0, 15.0, n), dtype="Float64"),
        }
    )


def write_snapshots(store: OnlineStore, registry: Registry, users: int = 500, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Users 1..users and every country, snapshotted at the current hour, written to `store` and recorded as a
    full sync of each view records itself. Returns each view's rows as written."""
    rng = np.random.default_rng(seed)
    computed_at = current_hour()
    frames = {
        "user_features": user_rows(np.arange(1, users + 1), rng),
        "country_features": country_rows(rng),
    }
    for name, frame in frames.items():
        view = registry.view(name)
        frame.insert(1, view.timestamp, pd.Series([computed_at] * len(frame), dtype="datetime64[us]"))
        record(store, view, frame)
    return frames


def record(store: OnlineStore, view: FeatureView, frame: pd.DataFrame) -> None:
    """Writes a view's rows and the sync record a full sync would leave."""
    with store.writer(view, replace=True) as writer:
        writer.write(encode_batch(view, frame))
    definitions = tuple((f.name, f.definition_checksum) for f in view.features)
    newest = frame[view.timestamp].max().to_pydatetime()
    store.record_sync(
        view, SyncRecord(view.version, view_schema(view), definitions, newest, utc_now(), len(frame), True)
    )


def training_rows(feature_set: FeatureSet, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Label rows over 400 days (fit and validation stay an outcome window apart), with features that predict the
    target, so both tasks train as they do on real data."""
    users = user_rows(np.arange(rows), rng)
    countries = country_rows(rng).set_index("country_code")
    frame = users.drop(columns="user_id").join(countries, on="country")
    frame[LABEL_ROW] = np.arange(rows)
    frame[feature_set.labels.label_time] = pd.Timestamp(current_hour()) - pd.to_timedelta(
        rng.integers(0, 400, rows), unit="D"
    )
    events = frame["events_30d"].to_numpy(dtype=float)
    if feature_set.task == "classification":
        frame[feature_set.target] = rng.random(rows) < 1 / (1 + np.exp((events - 12) / 3))
    else:
        frame[feature_set.target] = 4.0 * events + rng.gamma(2.0, 5.0, rows)
    for field in feature_set.request:  # numbers, as the demo's order amount is
        frame[field.name] = rng.gamma(2.0, 15.0, rows)
    return with_request_features(feature_set, frame)


def train_and_save(
    models: ModelStore, feature_set: FeatureSet, version: str, seed: int = 0, rows: int = 1000
) -> ModelCard:
    """A new version of the model, trained on synthetic rows and saved (not promoted)."""
    # One OpenMP thread: gradient boosting's threads spin against whatever else runs on a small busy box (60 s
    # instead of 2 s for ltv_model on 2 loaded cores).
    with threadpool_limits(1):
        trained = train(feature_set, training_rows(feature_set, rows, np.random.default_rng(seed)))
    card = ModelCard.for_feature_set(
        feature_set,
        version=version,
        trained_at=(datetime(2026, 1, 1) + timedelta(seconds=seed)).isoformat(),
        training_window=trained.window,
        rows={**trained.rows, "without_features": 0},
        metrics=trained.metrics,
    )
    models.save(card, trained.pipeline)
    return card


def serve_models(models: ModelStore, registry: Registry, version: str = "v1", seed: int = 0) -> None:
    """Every model of the registry trained, saved as `version` and promoted."""
    for feature_set in registry.feature_sets.values():
        train_and_save(models, feature_set, version, seed)
        models.promote(feature_set.model, version)

"""Online serving: the online stores, typed reads, the model stores, predictions and the served-vector log.
Imports neither Dagster nor dbt, so a model server stays light."""

from feature_assets.backends import open_model_store
from feature_assets.serving.codec import EncodedBatch, encode_batch
from feature_assets.serving.folder_model_store import FolderModelStore
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.model_store import ModelStore
from feature_assets.serving.online_store import (
    OnlineStore,
    OnlineWriter,
    RedisOnlineStore,
    SqliteOnlineStore,
    SyncRecord,
)
from feature_assets.serving.postgres_model_store import PostgresModelStore
from feature_assets.serving.predictor import Prediction, Predictor, SchemaMismatch
from feature_assets.serving.reads import FeatureReader
from feature_assets.serving.served_log import RedisServedLog, ServedLog, SqliteServedLog

__all__ = [
    "EncodedBatch",
    "FeatureReader",
    "FolderModelStore",
    "ModelCard",
    "ModelStore",
    "OnlineStore",
    "OnlineWriter",
    "PostgresModelStore",
    "Prediction",
    "Predictor",
    "RedisOnlineStore",
    "RedisServedLog",
    "SchemaMismatch",
    "ServedLog",
    "SqliteOnlineStore",
    "SqliteServedLog",
    "SyncRecord",
    "encode_batch",
    "open_model_store",
]

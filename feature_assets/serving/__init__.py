"""Online serving: the online stores and typed reads. Imports neither Dagster nor dbt, so a model server stays light."""

from feature_assets.serving.codec import EncodedBatch, encode_batch
from feature_assets.serving.online_store import (
    OnlineStore,
    OnlineWriter,
    RedisOnlineStore,
    SqliteOnlineStore,
    SyncRecord,
)
from feature_assets.serving.reads import FeatureReader

__all__ = [
    "EncodedBatch",
    "encode_batch",
    "OnlineStore",
    "OnlineWriter",
    "RedisOnlineStore",
    "SqliteOnlineStore",
    "SyncRecord",
    "FeatureReader",
]

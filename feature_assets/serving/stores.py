"""Opening the stores serving reads from, from the settings and the environment alone (no Dagster): the CLI, the
HTTP server and the Dagster resources all open them here (the model store's choice lives in model_store.py)."""

import os

from feature_assets.serving.model_store import open_model_store
from feature_assets.serving.online_store import OnlineStore, RedisOnlineStore, SqliteOnlineStore
from feature_assets.serving.served_log import RedisServedLog, ServedLog, SqliteServedLog
from feature_assets.settings import Settings

__all__ = ["open_model_store", "open_online_store", "open_served_log"]


def open_online_store(settings: Settings) -> OnlineStore:
    """Redis at FEATURE_STORE_REDIS_URL (read here, never kept in settings: it holds the password), or the SQLite file."""
    if settings.online == "redis":
        return RedisOnlineStore.from_url(os.environ.get("FEATURE_STORE_REDIS_URL", ""))
    return SqliteOnlineStore(settings.online_sqlite_path)


def open_served_log(settings: Settings) -> ServedLog:
    """The served-vector log next to the online store, sampling FEATURE_STORE_SERVED_LOG_RATE of the vectors."""
    if settings.online == "redis":
        return RedisServedLog(os.environ.get("FEATURE_STORE_REDIS_URL", ""), sample_rate=settings.served_log_rate)
    return SqliteServedLog(settings.served_log_path, sample_rate=settings.served_log_rate)

"""The online store: the contract (base.py) and one module per backend (redis.py, sqlite.py)."""

from feature_assets.serving.online_store.base import OnlineStore, OnlineWriter, SyncRecord
from feature_assets.serving.online_store.redis import RedisOnlineStore
from feature_assets.serving.online_store.sqlite import SqliteOnlineStore

__all__ = ["OnlineStore", "OnlineWriter", "RedisOnlineStore", "SqliteOnlineStore", "SyncRecord"]

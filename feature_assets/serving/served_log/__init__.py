"""The served-vector log: the contract (base.py) and one module per backend (redis.py, sqlite.py)."""

from feature_assets.serving.served_log.base import ServedLog, ServedLogError, ServedLogStats
from feature_assets.serving.served_log.redis import RedisServedLog
from feature_assets.serving.served_log.sqlite import SqliteServedLog

__all__ = ["RedisServedLog", "ServedLog", "ServedLogError", "ServedLogStats", "SqliteServedLog"]

"""Where served feature vectors are logged: a Redis stream next to the online store, or an SQLite file locally."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.errors import ConfigError
from feature_assets.serving.served_log import RedisServedLog, ServedLog, SqliteServedLog
from feature_assets.settings import Settings

__all__ = ["ServedLogResource", "served_log_for"]


class ServedLogResource(dg.ConfigurableResource):
    """Read by the skew report; the same store `featurestore predict` and model servers log to."""

    kind: Literal["redis", "sqlite"]
    redis_url: str = Field(
        default="", description="redis:// or rediss:// URL (kind=redis); a secret, pass it as an EnvVar."
    )
    sqlite_path: str = Field(default="", description="SQLite file (kind=sqlite).")

    @contextmanager
    def open(self) -> Iterator[ServedLog]:
        if self.kind == "redis":
            if not self.redis_url:
                raise ConfigError("the redis served log needs a URL (FEATURE_STORE_REDIS_URL)")
            log: ServedLog = RedisServedLog(self.redis_url)
        else:
            log = SqliteServedLog(self.sqlite_path)
        try:
            yield log
        finally:
            log.close()


def served_log_for(settings: Settings) -> ServedLogResource:
    if settings.online == "redis":
        return ServedLogResource(kind="redis", redis_url=dg.EnvVar("FEATURE_STORE_REDIS_URL"))
    return ServedLogResource(kind="sqlite", sqlite_path=str(settings.served_log_path))

"""The online store as a Dagster resource: Redis in production, an SQLite file by default in local mode."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.errors import ConfigError
from feature_assets.serving.online_store import OnlineStore, RedisOnlineStore, SqliteOnlineStore
from feature_assets.settings import Settings

__all__ = ["OnlineStoreResource", "online_store_for"]


class OnlineStoreResource(dg.ConfigurableResource):
    """Builds a store per use and closes it afterwards, like the warehouse: no connection outlives a step."""

    kind: Literal["redis", "sqlite"]
    redis_url: str = Field(
        default="", description="redis:// or rediss:// URL (kind=redis); a secret, pass it as an EnvVar."
    )
    sqlite_path: str = Field(default="", description="SQLite file (kind=sqlite).")

    def build(self) -> OnlineStore:
        if self.kind == "redis":
            if not self.redis_url:
                raise ConfigError("the redis online store needs a URL (FEATURE_STORE_REDIS_URL)")
            return RedisOnlineStore.from_url(self.redis_url)
        if not self.sqlite_path:
            raise ConfigError("the sqlite online store needs a file path")
        return SqliteOnlineStore(self.sqlite_path)

    @contextmanager
    def open(self) -> Iterator[OnlineStore]:
        store = self.build()
        try:
            yield store
        finally:
            store.close()


def online_store_for(settings: Settings) -> OnlineStoreResource:
    if settings.online == "redis":
        return OnlineStoreResource(kind="redis", redis_url=dg.EnvVar("FEATURE_STORE_REDIS_URL"))
    return OnlineStoreResource(kind="sqlite", sqlite_path=str(settings.online_sqlite_path))

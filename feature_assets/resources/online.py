"""The online store as a Dagster resource: Redis in production, an SQLite file by default in local mode."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.backends import make_online_store, online_store_choice
from feature_assets.serving.online_store import OnlineStore
from feature_assets.settings import Settings

__all__ = ["OnlineStoreResource", "online_store_for"]


class OnlineStoreResource(dg.ConfigurableResource):
    """Builds a store per use and closes it afterwards: no connection outlives a step."""

    kind: Literal["redis", "sqlite"]
    redis_url: str = Field(
        default="", description="redis:// or rediss:// URL (kind=redis); a secret, pass it as an EnvVar."
    )
    sqlite_path: str = Field(default="", description="SQLite file (kind=sqlite).")

    def build(self) -> OnlineStore:
        return make_online_store(self.kind, self.redis_url, path=self.sqlite_path)

    @contextmanager
    def open(self) -> Iterator[OnlineStore]:
        store = self.build()
        try:
            yield store
        finally:
            store.close()


def online_store_for(settings: Settings) -> OnlineStoreResource:
    choice = online_store_choice(settings)
    if choice.url_variable:
        return OnlineStoreResource(kind=choice.kind, redis_url=dg.EnvVar(choice.url_variable))
    return OnlineStoreResource(kind=choice.kind, sqlite_path=choice.options["path"])

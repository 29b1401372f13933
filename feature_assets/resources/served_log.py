"""Where served feature vectors are logged: a Redis stream next to the online store, or an SQLite file locally."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.backends import make_served_log, served_log_choice
from feature_assets.serving.served_log import ServedLog
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
        log = make_served_log(self.kind, self.redis_url, path=self.sqlite_path)
        try:
            yield log
        finally:
            log.close()


def served_log_for(settings: Settings) -> ServedLogResource:
    choice = served_log_choice(settings)
    if choice.url_variable:
        return ServedLogResource(kind=choice.kind, redis_url=dg.EnvVar(choice.url_variable))
    return ServedLogResource(kind=choice.kind, sqlite_path=choice.options["path"])

"""The one place that chooses a backend of each kind (warehouse, online store, served log, model store) from the
settings, and the one place that maps a kind to its class. The CLI, the HTTP server and the Dagster resources all
open their backends here.

Secrets (FEATURE_STORE_POSTGRES_URL, FEATURE_STORE_SPARK_REMOTE, FEATURE_STORE_REDIS_URL, the model store's URL)
are never held in settings: a choice names the environment variable holding its URL, read when a backend is
opened (the Dagster resources pass it as an EnvVar instead, hidden in the UI). No Dagster here, and the backends'
modules are imported only when one is opened, so serving stays light.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from feature_assets.errors import ConfigError
from feature_assets.settings import Settings

if TYPE_CHECKING:
    from feature_assets.serving.model_store import ModelStore
    from feature_assets.serving.online_store import OnlineStore
    from feature_assets.serving.served_log import ServedLog
    from feature_assets.warehouses.base import Warehouse

__all__ = [
    "BackendChoice",
    "make_model_store",
    "make_online_store",
    "make_served_log",
    "make_warehouse",
    "model_store_choice",
    "online_store_choice",
    "open_model_store",
    "open_online_store",
    "open_served_log",
    "open_warehouse",
    "served_log_choice",
    "warehouse_choice",
]

REDIS_URL_VARIABLE = "FEATURE_STORE_REDIS_URL"


_Kind = TypeVar("_Kind", bound=str)
_WarehouseKind = Literal["duckdb", "postgres", "spark"]
_OnlineKind = Literal["redis", "sqlite"]  # the online store's, and the served log's next to it
_ModelStoreKind = Literal["folder", "postgres"]


@dataclass(frozen=True)
class BackendChoice(Generic[_Kind]):
    """A backend the settings choose: its kind, the environment variable holding its URL ("" for none: the URL is
    a secret, so a choice names where it is), and the rest of its make_* arguments."""

    kind: _Kind
    url_variable: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def url(self, environ: Mapping[str, str] = os.environ) -> str:
        return environ.get(self.url_variable, "") if self.url_variable else ""


# --- the warehouse ---------------------------------------------------------------------------------------------


def warehouse_choice(settings: Settings) -> BackendChoice[_WarehouseKind]:
    if settings.warehouse == "duckdb":
        return BackendChoice("duckdb", options={"path": str(settings.duckdb_path), "schema_name": "main"})
    if settings.warehouse == "spark":
        return BackendChoice(
            "spark",
            "FEATURE_STORE_SPARK_REMOTE" if settings.spark_remote else "",
            {
                "path": str(settings.spark_folder),
                "schema_name": settings.spark_schema,
                "spark_dbt_method": settings.spark_dbt_method,
            },
        )
    return BackendChoice("postgres", "FEATURE_STORE_POSTGRES_URL", {"schema_name": settings.postgres_schema})


def make_warehouse(
    kind: str, url: str = "", *, path: str = "", schema_name: str = "main", spark_dbt_method: str = "session"
) -> "Warehouse":
    """url: PostgreSQL's libpq URL, or Spark's Connect URL (else a local Spark server serves the folder `path`);
    path: DuckDB's file."""
    if kind == "duckdb":
        from feature_assets.warehouses.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(path, schema_name)
    if kind == "postgres":
        from feature_assets.warehouses.postgres import PostgresWarehouse

        return PostgresWarehouse(url, schema_name)
    if kind == "spark":
        from feature_assets.warehouses.spark import SparkWarehouse

        return SparkWarehouse(remote=url, folder=path, schema_name=schema_name, dbt_method=spark_dbt_method)
    raise ConfigError(f"no warehouse of kind {kind!r}")


def open_warehouse(settings: Settings, environ: Mapping[str, str] = os.environ) -> "Warehouse":
    choice = warehouse_choice(settings)
    return make_warehouse(choice.kind, choice.url(environ), **choice.options)


# --- the online store and the served-vector log next to it ------------------------------------------------------


def online_store_choice(settings: Settings) -> BackendChoice[_OnlineKind]:
    if settings.online == "redis":
        return BackendChoice("redis", REDIS_URL_VARIABLE)
    return BackendChoice("sqlite", options={"path": str(settings.online_sqlite_path)})


def make_online_store(kind: str, url: str = "", *, path: str = "") -> "OnlineStore":
    """url: Redis's redis:// or rediss:// URL (password included); path: SQLite's file."""
    if kind == "redis":
        from feature_assets.serving.online_store.redis import RedisOnlineStore

        if not url:
            raise ConfigError(f"the redis online store needs a URL ({REDIS_URL_VARIABLE})")
        return RedisOnlineStore.from_url(url)
    if kind == "sqlite":
        from feature_assets.serving.online_store.sqlite import SqliteOnlineStore

        if not path:
            raise ConfigError("the sqlite online store needs a file path")
        return SqliteOnlineStore(path)
    raise ConfigError(f"no online store of kind {kind!r}")


def open_online_store(settings: Settings, environ: Mapping[str, str] = os.environ) -> "OnlineStore":
    choice = online_store_choice(settings)
    return make_online_store(choice.kind, choice.url(environ), **choice.options)


def served_log_choice(settings: Settings) -> BackendChoice[_OnlineKind]:
    """Next to the online store, sampling FEATURE_STORE_SERVED_LOG_RATE of the vectors."""
    if settings.online == "redis":
        return BackendChoice("redis", REDIS_URL_VARIABLE, {"sample_rate": settings.served_log_rate})
    return BackendChoice(
        "sqlite", options={"path": str(settings.served_log_path), "sample_rate": settings.served_log_rate}
    )


def make_served_log(kind: str, url: str = "", *, path: str = "", sample_rate: float = 1.0) -> "ServedLog":
    if kind == "redis":
        from feature_assets.serving.served_log.redis import RedisServedLog

        if not url:
            raise ConfigError(f"the redis served log needs a URL ({REDIS_URL_VARIABLE})")
        return RedisServedLog(url, sample_rate=sample_rate)
    if kind == "sqlite":
        from feature_assets.serving.served_log.sqlite import SqliteServedLog

        return SqliteServedLog(path, sample_rate=sample_rate)
    raise ConfigError(f"no served log of kind {kind!r}")


def open_served_log(settings: Settings, environ: Mapping[str, str] = os.environ) -> "ServedLog":
    choice = served_log_choice(settings)
    return make_served_log(choice.kind, choice.url(environ), **choice.options)


# --- the model store -----------------------------------------------------------------------------------------


def model_store_choice(settings: Settings) -> BackendChoice[_ModelStoreKind]:
    """PostgreSQL at the URL in the variable settings.model_store_url_variable names (FEATURE_STORE_MODEL_STORE_URL,
    or in prod by default the warehouse's FEATURE_STORE_POSTGRES_URL), in the schema FEATURE_STORE_POSTGRES_SCHEMA;
    else the folders under FEATURE_STORE_HOME/models."""
    if settings.model_store_url_variable:
        return BackendChoice("postgres", settings.model_store_url_variable, {"schema_name": settings.postgres_schema})
    return BackendChoice("folder", options={"path": str(settings.models_path)})


def make_model_store(kind: str, url: str = "", *, path: str = "", schema_name: str = "public") -> "ModelStore":
    if kind == "postgres":
        from feature_assets.serving.postgres_model_store import PostgresModelStore

        return PostgresModelStore(url, schema_name)
    if kind == "folder":
        from feature_assets.serving.folder_model_store import FolderModelStore

        return FolderModelStore(path)
    raise ConfigError(f"no model store of kind {kind!r}")


def open_model_store(settings: Settings, environ: Mapping[str, str] = os.environ) -> "ModelStore":
    choice = model_store_choice(settings)
    return make_model_store(choice.kind, choice.url(environ), **choice.options)

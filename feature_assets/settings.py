"""The one environment switch, FEATURE_STORE_ENV, and the settings it implies.

local (default): embedded DuckDB file under FEATURE_STORE_HOME, demo data generated.
prod: PostgreSQL from FEATURE_STORE_POSTGRES_URL; raw tables are the user's own.
FEATURE_STORE_WAREHOUSE picks the offline store: duckdb (default in local), postgres (default in prod) or spark.
Spark is reached through Spark Connect at FEATURE_STORE_SPARK_REMOTE (sc://host:port/;token=..., a secret), else (local
only) a Spark server started under FEATURE_STORE_HOME/spark; its tables live in the database FEATURE_STORE_SPARK_SCHEMA
(default featurestore). dbt reaches it by FEATURE_STORE_SPARK_DBT_METHOD: session (default: dbt-spark's session
method through the same Spark Connect server), thrift (a Spark Thrift server) or http (Databricks SQL), the latter two
at FEATURE_STORE_SPARK_HOST and _PORT (see dbt_features/profiles.yml).
FEATURE_STORE_ONLINE picks the online store: sqlite (default in local, a file under FEATURE_STORE_HOME)
or redis (default in prod, at FEATURE_STORE_REDIS_URL: redis:// or rediss://, password included).
Served feature vectors are logged next to it (a Redis stream, or served_log.sqlite), sampling
FEATURE_STORE_SERVED_LOG_RATE of them (default 1: all).
Model versions and the served-version pointers live in PostgreSQL at FEATURE_STORE_MODEL_STORE_URL when it is
set (postgresql://, password included), else in prod in the warehouse's PostgreSQL (FEATURE_STORE_POSTGRES_URL),
so every server host and training run sees the same models; in both cases in the schema
FEATURE_STORE_POSTGRES_SCHEMA. Locally, without the URL, they are folders under FEATURE_STORE_HOME/models.

`featurestore serve` takes at most FEATURE_STORE_SERVE_MAX_ENTITIES entities (default 1000) in a request body of at
most FEATURE_STORE_SERVE_MAX_BODY_BYTES (default 1 MiB), and answers only the callers whose API keys are in
FEATURE_STORE_API_KEYS_FILE when it is set (the file holds their SHA-256 digests, not the keys).
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from feature_assets.errors import ConfigError

__all__ = ["Settings", "dbt_manifest_path", "dbt_project_dir", "seconds_from_milliseconds", "validate_identifier"]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_Env = Literal["local", "prod"]
_Warehouse = Literal["duckdb", "postgres", "spark"]
_SparkDbtMethod = Literal["session", "thrift", "http"]
_Online = Literal["redis", "sqlite"]


def validate_identifier(name: str, what: str) -> str:
    """SQL identifiers from config are spliced into SQL, so only plain lowercase names pass."""
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigError(f"{what} {name!r} is not a plain lowercase SQL identifier")
    return name


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {value!r}")


def _rate(value: str, name: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{name} must be a share between 0 and 1, got {value!r}")
    return rate


def dbt_project_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The dbt project of the feature definitions: dbt_features next to this package (resolved from this file, never
    the working directory), or the folder FEATURE_STORE_DBT_PROJECT names."""
    return Path(
        environ.get("FEATURE_STORE_DBT_PROJECT") or Path(__file__).resolve().parent.parent / "dbt_features"
    ).resolve()


def dbt_manifest_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where `dbt parse` writes the manifest the registry is read from; found without importing dbt or Dagster."""
    return dbt_project_dir(environ) / "target" / "manifest.json"


def _home(value: str) -> Path:
    # An empty value (`FEATURE_STORE_HOME=$UNSET_VARIABLE`) would resolve to the current folder, silently.
    if not value.strip():
        raise ConfigError("FEATURE_STORE_HOME is set but empty: name a folder, or unset it for .featurestore")
    return Path(value).resolve()


def _api_keys_file(value: str | None) -> Path | None:
    # Set but empty (`FEATURE_STORE_API_KEYS_FILE=$UNSET_VARIABLE`) means keys were meant: never serve without them.
    if value is not None and not value.strip():
        raise ConfigError(
            "FEATURE_STORE_API_KEYS_FILE is set but empty: name the keys file, or unset it to serve without keys"
        )
    return None if value is None else Path(value).resolve()


def _count(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= 1_000_000_000:
        raise ConfigError(f"{name} must be a whole positive number, got {value[:20]!r}")
    return int(value)


def seconds_from_milliseconds(name: str, default_ms: int, environ: Mapping[str, str] = os.environ) -> float:
    """A wait bounded by the environment variable `name`, given in whole milliseconds (1 to 600000)."""
    text = environ.get(name, str(default_ms))
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= 600_000:
        raise ConfigError(f"{name} must be a whole number of milliseconds (1 to 600000), got {text[:20]!r}")
    return int(text) / 1000


@dataclass(frozen=True)
class Settings:
    env: _Env
    home: Path
    postgres_schema: str
    demo_data: bool
    warehouse: _Warehouse = "duckdb"
    spark_schema: str = "featurestore"
    # Whether FEATURE_STORE_SPARK_REMOTE names the Spark Connect server (else a local one): the URL may hold a token,
    # so settings say whether it is there and never hold it.
    spark_remote: bool = False
    spark_dbt_method: _SparkDbtMethod = "session"
    online: _Online = "sqlite"
    served_log_rate: float = 1.0
    # The environment variable holding the model store's PostgreSQL URL, "" for the folder store: the URL is a
    # secret, so settings name where it is and never hold it.
    model_store_url_variable: str = ""
    serve_max_entities: int = 1000
    serve_max_body_bytes: int = 1_048_576
    serve_api_keys_file: Path | None = None
    dbt_project_dir: Path = field(default_factory=lambda: dbt_project_dir({}))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        env = environ.get("FEATURE_STORE_ENV", "local")
        if env not in ("local", "prod"):
            raise ConfigError(f"FEATURE_STORE_ENV must be 'local' or 'prod', got {env!r}")
        warehouse = environ.get("FEATURE_STORE_WAREHOUSE", "duckdb" if env == "local" else "postgres")
        if warehouse not in ("duckdb", "postgres", "spark"):
            raise ConfigError(f"FEATURE_STORE_WAREHOUSE must be 'duckdb', 'postgres' or 'spark', got {warehouse!r}")
        if warehouse == "postgres" and not environ.get("FEATURE_STORE_POSTGRES_URL"):
            raise ConfigError(
                "FEATURE_STORE_WAREHOUSE=postgres (the default with FEATURE_STORE_ENV=prod) needs "
                "FEATURE_STORE_POSTGRES_URL"
            )
        spark_remote = bool(environ.get("FEATURE_STORE_SPARK_REMOTE"))
        if spark_remote and not environ["FEATURE_STORE_SPARK_REMOTE"].startswith("sc://"):
            # Never echo the URL: it may hold a token.
            raise ConfigError("FEATURE_STORE_SPARK_REMOTE must be a Spark Connect URL (sc://host:port)")
        if warehouse == "spark" and env == "prod" and not spark_remote:
            raise ConfigError(
                "FEATURE_STORE_WAREHOUSE=spark in prod needs FEATURE_STORE_SPARK_REMOTE (a local Spark is for local "
                "use)"
            )
        spark_dbt_method = environ.get("FEATURE_STORE_SPARK_DBT_METHOD", "session")
        if spark_dbt_method not in ("session", "thrift", "http"):
            raise ConfigError(
                f"FEATURE_STORE_SPARK_DBT_METHOD must be 'session', 'thrift' or 'http', got {spark_dbt_method!r}"
            )
        if env == "prod" and not (
            environ.get("FEATURE_STORE_POSTGRES_URL") or environ.get("FEATURE_STORE_MODEL_STORE_URL")
        ):
            raise ConfigError(
                "FEATURE_STORE_ENV=prod needs FEATURE_STORE_POSTGRES_URL or FEATURE_STORE_MODEL_STORE_URL for the "
                "model store"
            )
        online = environ.get("FEATURE_STORE_ONLINE", "sqlite" if env == "local" else "redis")
        if online not in ("redis", "sqlite"):
            raise ConfigError(f"FEATURE_STORE_ONLINE must be 'redis' or 'sqlite', got {online!r}")
        if online == "redis" and not environ.get("FEATURE_STORE_REDIS_URL", "").startswith(("redis://", "rediss://")):
            # Never echo the URL: it holds the password.
            raise ConfigError(
                "FEATURE_STORE_ONLINE=redis needs FEATURE_STORE_REDIS_URL set to a redis:// or rediss:// URL"
            )
        if environ.get("FEATURE_STORE_MODEL_STORE_URL"):
            if not environ["FEATURE_STORE_MODEL_STORE_URL"].startswith(("postgresql://", "postgres://")):
                # Never echo the URL: it holds the password.
                raise ConfigError("FEATURE_STORE_MODEL_STORE_URL must be a postgresql:// URL")
            model_store_url_variable = "FEATURE_STORE_MODEL_STORE_URL"
        else:
            model_store_url_variable = "FEATURE_STORE_POSTGRES_URL" if env == "prod" else ""
        # Each choice was checked against its literals above (`in` on a tuple of strings does not narrow a str).
        return cls(
            env=cast(_Env, env),
            home=_home(environ.get("FEATURE_STORE_HOME", ".featurestore")),
            postgres_schema=validate_identifier(
                environ.get("FEATURE_STORE_POSTGRES_SCHEMA", "public"), "FEATURE_STORE_POSTGRES_SCHEMA"
            ),
            demo_data=_flag(
                environ.get("FEATURE_STORE_DEMO_DATA", "1" if env == "local" else "0"), "FEATURE_STORE_DEMO_DATA"
            ),
            online=cast(_Online, online),
            warehouse=cast(_Warehouse, warehouse),
            spark_schema=validate_identifier(
                environ.get("FEATURE_STORE_SPARK_SCHEMA", "featurestore"), "FEATURE_STORE_SPARK_SCHEMA"
            ),
            spark_remote=spark_remote,
            spark_dbt_method=cast(_SparkDbtMethod, spark_dbt_method),
            served_log_rate=_rate(environ.get("FEATURE_STORE_SERVED_LOG_RATE", "1"), "FEATURE_STORE_SERVED_LOG_RATE"),
            model_store_url_variable=model_store_url_variable,
            dbt_project_dir=dbt_project_dir(environ),
            serve_max_entities=_count(
                environ.get("FEATURE_STORE_SERVE_MAX_ENTITIES", "1000"), "FEATURE_STORE_SERVE_MAX_ENTITIES"
            ),
            serve_max_body_bytes=_count(
                environ.get("FEATURE_STORE_SERVE_MAX_BODY_BYTES", "1048576"), "FEATURE_STORE_SERVE_MAX_BODY_BYTES"
            ),
            serve_api_keys_file=_api_keys_file(environ.get("FEATURE_STORE_API_KEYS_FILE")),
        )

    @property
    def dbt_manifest_path(self) -> Path:
        return self.dbt_project_dir / "target" / "manifest.json"

    @property
    def duckdb_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def spark_folder(self) -> Path:
        """The local Spark server's tables and catalog."""
        return self.home / "spark"

    @property
    def served_log_path(self) -> Path:
        return self.home / "served_log.sqlite"

    @property
    def models_path(self) -> Path:
        return self.home / "models"

    @property
    def online_sqlite_path(self) -> Path:
        return self.home / "online.sqlite"

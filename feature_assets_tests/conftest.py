"""Fixtures shared by the suite: real DuckDB files, real PostgreSQL schemas, and feature builds through Dagster."""

import atexit
import inspect
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
import pytest
from dagster_dbt import DbtCliResource
from filelock import FileLock

from feature_assets.assets.features import DbtAssets, dbt_assets_for, dbt_model_key
from feature_assets.assets.raw import RAW_COLUMNS, demo_raw_data, record_demo_first_day
from feature_assets.automation import as_of_days_tags
from feature_assets.definitions import _dbt_executable
from feature_assets.project import dbt_project
from feature_assets.registry import load_registry
from feature_assets.settings import dbt_manifest_path, dbt_project_dir
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, SparkWarehouse, Warehouse

# Settings.from_env() (the definitions, the CLI) resolves FEATURE_STORE_HOME: keep everything the suite writes out of
# the tree.
os.environ["FEATURE_STORE_HOME"] = tempfile.mkdtemp(prefix="featurestore-tests-")
atexit.register(shutil.rmtree, os.environ["FEATURE_STORE_HOME"], ignore_errors=True)
os.environ.pop("DAGSTER_HOME", None)

POSTGRES_URL = os.environ.get("FEATURE_STORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Generated data is reproducible relative to the anchor: the start of the current UTC day, so that snapshots
# computed at it are within their online TTL (older ones are neither synced nor served) and not in the future.
ANCHOR = datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)


# What a test needs, decided here for the whole suite (pyproject.toml lists the markers): the fixtures it uses, and
# whether its body (or a helper of its module it calls) runs the pipeline. `make check` leaves out e2e, spark and ui.
NEEDS_OF_FIXTURES = {
    "postgres": {"postgres_url", "postgres_warehouse", "new_york_postgres"},
    "redis": {"redis_client", "online_store", "redis_cluster", "tls_redis", "tls_ca", "acl_redis", "monitored"},
    "spark": {"spark_folder", "spark_warehouse"},
    "e2e": {"trained", "trained_once", "monitored"},
}
NEEDS_OF_PARAMETERS = {"postgres": {"postgres"}, "redis": {"redis", "cluster", "tls"}, "spark": {"spark"}}
# Calls that run dbt (in process, or its executable) or a Dagster job.
PIPELINE_CALLS = {"materialize", "train_models", "run_demo", "featurestore", "_dbt_executable"}
MODULES_OF = {"test_spark": {"spark", "e2e"}, "test_ui": {"ui", "e2e"}, "test_add_a_view_and_model": {"e2e"}}


def _calls_pipeline(function: Any, modules: list[Any], seen: set[str]) -> bool:
    """Whether a function, or a function of the test's module or of this file that it calls (transitively), runs
    the pipeline."""
    names = set(getattr(getattr(function, "__code__", None), "co_names", ()))
    if names & PIPELINE_CALLS:
        return True
    for name in names - seen:
        seen.add(name)
        for module in modules:
            helper = getattr(module, name, None)
            own = inspect.isfunction(helper) and helper.__module__ == module.__name__
            if own and _calls_pipeline(helper, modules, seen):
                return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        modules = [item.module, sys.modules[__name__]]
        needs = set(MODULES_OF.get(item.module.__name__, ()))
        fixtures = set(getattr(item, "fixturenames", ()))
        needs |= {need for need, names in NEEDS_OF_FIXTURES.items() if fixtures & names}
        # A parameter that names a backend (`engine`, `kind`, `warehouse`...: "postgres", "spark", "cluster") needs it.
        params = {str(value) for value in getattr(getattr(item, "callspec", None), "params", {}).values()}
        needs |= {need for need, values in NEEDS_OF_PARAMETERS.items() if params & values}
        # The test itself, and every fixture it uses (transitively) that this file or its module defines.
        functions = [getattr(item, "function", None)]
        functions += [inspect.unwrap(getattr(m, name)) for name in fixtures for m in modules if hasattr(m, name)]
        if any(_calls_pipeline(function, modules, set()) for function in functions):
            needs.add("e2e")
        for need in sorted(needs) or ["unit"]:
            item.add_marker(need)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Waits for something another thread or process does; the deadline only turns a hang into a failure, so it is
    far above what the wait takes on a loaded machine."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.01)


def without_password(url: str) -> str:
    """A server URL fit for a test's output: the password (and a user before it) replaced."""
    return re.sub(r"//[^/@]*@", "//***@", url)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        # libpq's message names host and port, never the password.
        pytest.fail(
            f"PostgreSQL at {without_password(POSTGRES_URL)} is not reachable ({error}); `make test` starts one"
        )
    return POSTGRES_URL


@pytest.fixture
def duckdb_warehouse(tmp_path) -> Warehouse:
    return DuckDBWarehouse(str(tmp_path / "warehouse.duckdb"))


@pytest.fixture
def postgres_warehouse(postgres_url) -> Iterator[Warehouse]:
    """A warehouse in a schema of its own, dropped afterwards."""
    schema = f"fs_test_{uuid.uuid4().hex[:10]}"
    yield PostgresWarehouse(postgres_url, schema)
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"drop schema if exists {schema} cascade")


@pytest.fixture(params=["folder", "postgres"])
def environment(request, tmp_path) -> dict[str, str]:
    """The environment of a deployment using one kind of model store: FEATURE_STORE_HOME's folder, or PostgreSQL in
    a schema of its own (dropped afterwards)."""
    environ = {"FEATURE_STORE_HOME": str(tmp_path / "home")}
    if request.param == "folder":
        yield environ
        return
    url, schema = request.getfixturevalue("postgres_url"), f"fs_test_{uuid.uuid4().hex[:10]}"
    yield {**environ, "FEATURE_STORE_MODEL_STORE_URL": url, "FEATURE_STORE_POSTGRES_SCHEMA": schema}
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"drop schema if exists {schema} cascade")


@pytest.fixture
def open_store(environment):
    """Opens the store the environment chooses, as each host of a deployment would: every call a new object."""
    from feature_assets.serving import open_model_store
    from feature_assets.settings import Settings

    opened = []

    def open_one():
        store = open_model_store(Settings.from_env(environment), environment)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture(scope="session")
def spark_folder(tmp_path_factory) -> Iterator[str]:
    """The folder of a local Spark server shared by the session (it starts on first use, in about 20 s, and is
    stopped at the end)."""
    from feature_assets.local_spark import stop_local_spark

    folder = tmp_path_factory.mktemp("spark")
    yield str(folder)
    stop_local_spark(folder)


@pytest.fixture
def spark_warehouse(spark_folder) -> Iterator[Warehouse]:
    """A warehouse in a database of its own on the session's local Spark, dropped afterwards."""
    warehouse = SparkWarehouse(folder=spark_folder, schema_name=f"fs_test_{uuid.uuid4().hex[:10]}")
    yield warehouse
    with warehouse.connect() as con:
        warehouse.execute(con, "use default")
        warehouse.execute(con, f"drop database if exists {warehouse.schema_name} cascade")


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request) -> Warehouse:
    return request.getfixturevalue(f"{request.param}_warehouse")


@cache
def dbt_assets() -> DbtAssets:
    """The dbt assets of the project the environment names, built once."""
    return dbt_assets_for(load_registry(dbt_manifest_path()), dbt_manifest_path())


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project(dbt_project_dir()), dbt_executable=_dbt_executable())


def write_raw(warehouse: Warehouse, frames: dict[str, pd.DataFrame]) -> None:
    with warehouse.connect() as con:
        for table, columns in RAW_COLUMNS.items():
            warehouse.append(con, table, frames.get(table, pd.DataFrame(columns=list(columns))), columns)


def materialize(
    warehouse: Warehouse,
    raw: dict | None = None,
    as_of: dict | None = None,
    models: Sequence[str] = (),
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """Runs the real assets in process: the demo generator (if raw config is given) and/or the dbt build of every
    model (or of the named ones and their tests), the feature views over the as-of days from as_of_start (default:
    as_of_end) to as_of_end, computing the hours from one to the other (the config of dbt_feature_views)."""
    assets, ops, tags = [], {}, {}
    if raw is not None:
        assets.append(demo_raw_data)
        ops["demo_raw_data"] = {"config": raw}
    if as_of is not None:
        assets += dbt_assets()
        first, last = (str(as_of.get(name) or as_of["as_of_end"]) for name in ("as_of_start", "as_of_end"))
        ops["dbt_feature_views"] = {"config": {"as_of_start": first, "as_of_end": last}}
        tags = as_of_days_tags(datetime.fromisoformat(first), datetime.fromisoformat(last))
    return dg.materialize(
        assets,
        resources={"warehouse": warehouse, "dbt": dbt_resource()},
        run_config={"ops": ops},
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        tags=tags,
        selection=[dbt_model_key(name) for name in models] or None,
    )


def read_features(warehouse: Warehouse) -> pd.DataFrame:
    return warehouse.query("select * from user_features order by computed_at, user_id")


def _redis_url_of_this_worker(base: str) -> str:
    """A database of this test process's own on the shared Redis: database 15 (or the URL's) for a serial run, and
    15 - N for pytest-xdist's worker gwN, so that parallel workers never flush each other's keys."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        return base
    head, _, database = base.rpartition("/")
    return f"{head}/{int(database or 0) - int(worker.removeprefix('gw'))}"


# Online store: a real Redis, a database of its own, flushed before each test.
REDIS_URL = _redis_url_of_this_worker(os.environ.get("FEATURE_STORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))


@pytest.fixture
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(
            f"Redis at {REDIS_URL} is not reachable ({error}); start redis-server or set FEATURE_STORE_TEST_REDIS_URL"
        )
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A local 3-master Redis Cluster on loopback ports, for the session."""
    from redis_servers import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory):
    """A local TLS-only Redis with a CA of its own, for the session."""
    from redis_servers import start_tls_redis

    server = start_tls_redis(tmp_path_factory.mktemp("tls"))
    yield server
    server.stop()


@pytest.fixture
def tls_ca(tls_redis, monkeypatch):
    """The environment a TLS deployment sets: the CA certificate to verify the server with."""
    monkeypatch.setenv("FEATURE_STORE_REDIS_CA_CERT", str(tls_redis.ca_cert))
    return tls_redis


def empty_redis_store(kind: str, request):
    """An empty RedisOnlineStore on a single Redis ("redis"), the local cluster ("cluster") or TLS Redis ("tls")."""
    from feature_assets.serving import RedisOnlineStore
    from feature_assets.serving.redis_io import primaries

    request.getfixturevalue("redis_client")  # fails clearly when no Redis runs at all
    url = {
        "redis": lambda: REDIS_URL,
        "cluster": lambda: request.getfixturevalue("redis_cluster").url,
        "tls": lambda: request.getfixturevalue("tls_ca").url,
    }[kind]()
    store = RedisOnlineStore.from_url(url)
    for node in primaries(store.client):
        node.flushdb()
    return store


# The store contract runs against every kind: a single Redis, a Redis Cluster, a TLS Redis and SQLite.
@pytest.fixture(params=["redis", "cluster", "tls", "sqlite"])
def online_store(request, tmp_path):
    """Each online store implementation, empty."""
    from feature_assets.serving import SqliteOnlineStore

    if request.param == "sqlite":
        store = SqliteOnlineStore(tmp_path / "online.sqlite")
    else:
        store = empty_redis_store(request.param, request)
    yield store
    store.close()


# Training: 1,000 users over 300 days with daily snapshots (enough that PSI noise stays well under the 0.1
# warning threshold, and that LTV's fit label times end 90 days before its validation ones); the dbt build
# makes the label tables too; every model trained once per run.
def train_models(
    warehouse: Warehouse, models_root, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    from feature_assets.assets.models import model_assets
    from feature_assets.assets.training import training_set_assets
    from feature_assets.resources.model_store import ModelStoreResource
    from feature_assets.serving import FolderModelStore

    registry = load_registry(dbt_manifest_path())
    training_sets, _ = training_set_assets(registry)
    result = dg.materialize(
        [*training_sets, *model_assets(registry)],
        resources={"warehouse": warehouse, "model_store": ModelStoreResource(root=str(models_root))},
        instance=instance or dg.DagsterInstance.ephemeral(),
    )
    store = FolderModelStore(models_root)
    for model in registry.feature_sets:
        store.promote(model, store.versions(model)[-1])
    return result


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory) -> Path:
    """The trained folder, built once per test run (the first worker to need it builds it, under a lock, for all
    pytest-xdist workers): a DuckDB warehouse with demo data, daily snapshots of both views, labels, training sets,
    and every model served; and the Dagster instance it was built on (dagster/: every as-of day, training set and
    model materialized), the local instance a FEATURE_STORE_HOME keeps. Never used directly: `trained` hands each
    module a copy to change."""
    from datetime import timedelta

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    folder = shared / "trained"
    with FileLock(str(shared / "trained.lock")):
        if not (folder / "built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            warehouse = DuckDBWarehouse(str(folder / "warehouse.duckdb"))
            start = ANCHOR - timedelta(days=299)
            # On the persistent instance a FEATURE_STORE_HOME keeps, as `featurestore demo` builds: each as-of day
            # materialized (no partition shows as missing in the UI), the training sets and models too.
            (folder / "dagster").mkdir()
            with dg.DagsterInstance.local_temp(str(folder / "dagster")) as instance:
                result = materialize(
                    warehouse,
                    raw={"users": 1000, "days": 300, "anchor": ANCHOR.isoformat()},
                    as_of={"as_of_start": start.isoformat(), "as_of_end": ANCHOR.isoformat()},
                    instance=instance,
                )
                assert result.success
                # As `featurestore demo` does: the store's as-of days (partitions) begin at its demo data's first day.
                record_demo_first_day(folder, warehouse)
                assert train_models(warehouse, folder / "models", instance).success
            (folder / "built").touch()
    return folder


@pytest.fixture(scope="module")
def trained(trained_once, tmp_path_factory):
    """A module's own copy of the trained folder (warehouse.duckdb, models/ and dagster/), so that what one module
    promotes or writes never reaches another."""
    folder = tmp_path_factory.mktemp("trained")
    shutil.copytree(trained_once, folder, ignore=shutil.ignore_patterns("built"), dirs_exist_ok=True)
    return DuckDBWarehouse(str(folder / "warehouse.duckdb")), folder / "models"


@pytest.fixture
def monitored(trained, redis_client, tmp_path):
    """The trained warehouse with every view's latest snapshots synced to Redis, and the resources the skew
    report needs."""
    from feature_assets.online_sync import sync_online_store
    from feature_assets.resources.model_store import ModelStoreResource
    from feature_assets.resources.online import OnlineStoreResource
    from feature_assets.resources.served_log import ServedLogResource
    from feature_assets.serving import RedisOnlineStore

    warehouse, models_root = trained
    store = RedisOnlineStore(redis_client)
    for view in load_registry(dbt_manifest_path()).views.values():
        sync_online_store(warehouse, store, view, full_resync=True)
    resources = {
        "warehouse": warehouse,
        "online_store": OnlineStoreResource(kind="redis", redis_url=REDIS_URL),
        "served_log": ServedLogResource(kind="sqlite", sqlite_path=str(tmp_path / "served_log.sqlite")),
        "model_store": ModelStoreResource(root=str(models_root)),
    }
    return warehouse, store, models_root, resources

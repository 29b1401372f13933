"""Fixtures shared by the suite: real DuckDB files, real PostgreSQL schemas, and feature builds through Dagster."""

import atexit
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

# The definitions resolve FEATURE_STORE_HOME when imported: keep everything the suite writes out of the tree.
os.environ["FEATURE_STORE_HOME"] = tempfile.mkdtemp(prefix="featurestore-tests-")
atexit.register(shutil.rmtree, os.environ["FEATURE_STORE_HOME"], ignore_errors=True)
os.environ.pop("DAGSTER_HOME", None)


import dagster as dg
import pandas as pd
import psycopg
import pytest
from dagster_dbt import DbtCliResource

from feature_assets.assets.features import all_dbt_assets, dbt_model_key
from feature_assets.assets.raw import RAW_COLUMNS, demo_raw_data
from feature_assets.automation import as_of_days_tags
from feature_assets.definitions import _dbt_executable
from feature_assets.project import dbt_project
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, SparkWarehouse, Warehouse

POSTGRES_URL = os.environ.get("FEATURE_STORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Generated data is reproducible relative to the anchor: the start of the current UTC day, so that snapshots
# computed at it are within their online TTL (older ones are neither synced nor served) and not in the future.
ANCHOR = datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Waits for something another thread or process does; the deadline only turns a hang into a failure, so it is
    far above what the wait takes on a loaded machine."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.01)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable ({error}); `make test` starts one")
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


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project, dbt_executable=_dbt_executable())


def write_raw(warehouse: Warehouse, frames: dict[str, pd.DataFrame]) -> None:
    with warehouse.connect() as con:
        for table, columns in RAW_COLUMNS.items():
            warehouse.append(con, table, frames.get(table, pd.DataFrame(columns=list(columns))), columns)


def materialize(
    warehouse: Warehouse, raw: dict | None = None, as_of: dict | None = None, models: Sequence[str] = ()
) -> dg.ExecuteInProcessResult:
    """Runs the real assets in process: the demo generator (if raw config is given) and/or the dbt build of every
    model (or of the named ones and their tests), the feature views over the as-of days from as_of_start (default:
    as_of_end) to as_of_end, computing the hours from one to the other (the config of dbt_feature_views)."""
    assets, ops, tags = [], {}, {}
    if raw is not None:
        assets.append(demo_raw_data)
        ops["demo_raw_data"] = {"config": raw}
    if as_of is not None:
        assets += all_dbt_assets
        first, last = (str(as_of.get(name) or as_of["as_of_end"]) for name in ("as_of_start", "as_of_end"))
        ops["dbt_feature_views"] = {"config": {"as_of_start": first, "as_of_end": last}}
        tags = as_of_days_tags(datetime.fromisoformat(first), datetime.fromisoformat(last))
    return dg.materialize(
        assets,
        resources={"warehouse": warehouse, "dbt": dbt_resource()},
        run_config={"ops": ops},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        tags=tags,
        selection=[dbt_model_key(name) for name in models] or None,
    )


def read_features(warehouse: Warehouse) -> pd.DataFrame:
    return warehouse.query("select * from user_features order by computed_at, user_id")


# Online store: a real Redis, a database of its own, flushed before each test.
REDIS_URL = os.environ.get("FEATURE_STORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


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
# makes the label tables too; both models trained once per module.
def train_models(warehouse: Warehouse, models_root) -> dg.ExecuteInProcessResult:
    from feature_assets.assets.models import model_assets
    from feature_assets.assets.training import training_set_assets
    from feature_assets.registry import load_registry
    from feature_assets.resources.model_store import ModelStoreResource
    from feature_assets.serving import FolderModelStore

    registry = load_registry(dbt_project.manifest_path)
    training_sets, _ = training_set_assets(registry)
    result = dg.materialize(
        [*training_sets, *model_assets(registry)],
        resources={"warehouse": warehouse, "model_store": ModelStoreResource(root=str(models_root))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    store = FolderModelStore(models_root)
    for model in registry.feature_sets:
        store.promote(model, store.versions(model)[-1])
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DuckDB warehouse with demo data, daily snapshots of both views, labels, training sets, and both models served."""
    from datetime import timedelta

    folder = tmp_path_factory.mktemp("trained")
    warehouse = DuckDBWarehouse(str(folder / "warehouse.duckdb"))
    start = ANCHOR - timedelta(days=299)
    result = materialize(
        warehouse,
        raw={"users": 1000, "days": 300, "anchor": ANCHOR.isoformat()},
        as_of={"as_of_start": start.isoformat(), "as_of_end": ANCHOR.isoformat()},
    )
    assert result.success
    assert train_models(warehouse, folder / "models").success
    return warehouse, folder / "models"


@pytest.fixture
def monitored(trained, redis_client, tmp_path):
    """The trained warehouse with every view's latest snapshots synced to Redis, and the resources the skew
    report needs."""
    from feature_assets.online_sync import sync_online_store
    from feature_assets.registry import load_registry
    from feature_assets.resources.model_store import ModelStoreResource
    from feature_assets.resources.online import OnlineStoreResource
    from feature_assets.resources.served_log import ServedLogResource
    from feature_assets.serving import RedisOnlineStore

    warehouse, models_root = trained
    store = RedisOnlineStore(redis_client)
    for view in load_registry(dbt_project.manifest_path).views.values():
        sync_online_store(warehouse, store, view, full_resync=True)
    resources = {
        "warehouse": warehouse,
        "online_store": OnlineStoreResource(kind="redis", redis_url=REDIS_URL),
        "served_log": ServedLogResource(kind="sqlite", sqlite_path=str(tmp_path / "served_log.sqlite")),
        "model_store": ModelStoreResource(root=str(models_root)),
    }
    return warehouse, store, models_root, resources

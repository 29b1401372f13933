"""The PostgreSQL warehouse connection: bounded waits, a clear message, and the URL's parameters reaching dbt; and
the one choice of warehouse from the settings, in and outside Dagster."""

import socket
import subprocess
import sys
import time

import dagster as dg
import pytest

from feature_assets.backends import open_warehouse
from feature_assets.errors import WarehouseError
from feature_assets.resources.warehouse import warehouse_for
from feature_assets.settings import Settings
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, SparkWarehouse


def test_a_server_that_accepts_and_never_answers_fails_within_the_connect_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts TCP (the kernel completes the handshake) and never says a word
    port = silent.getsockname()[1]
    warehouse = PostgresWarehouse(f"postgresql://postgres:s3cret@127.0.0.1:{port}/test?connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(WarehouseError) as error, warehouse.connect():
        pass
    assert time.monotonic() - started < 10, "the connect timeout did not bound the wait"
    assert f"cannot connect to the PostgreSQL warehouse at 127.0.0.1:{port}/test" in str(error.value)
    assert "s3cret" not in str(error.value)
    silent.close()


def test_sessions_have_a_statement_timeout(postgres_warehouse):
    with postgres_warehouse.connect() as con:
        assert con.execute("show statement_timeout").fetchone()[0] == "1h"


def test_ssl_and_timeout_parameters_of_the_url_reach_dbt():
    url = "postgresql://fs:pw@db.internal:6432/features?sslmode=verify-full&sslrootcert=/etc/ssl/pg-ca.pem&connect_timeout=3"
    env = PostgresWarehouse(url, "feats").dbt_env()
    assert env["FEATURE_STORE_PG_SSLMODE"] == "verify-full"
    assert env["FEATURE_STORE_PG_SSLROOTCERT"] == "/etc/ssl/pg-ca.pem"
    assert env["FEATURE_STORE_PG_CONNECT_TIMEOUT"] == "3"
    assert (env["FEATURE_STORE_PG_HOST"], env["FEATURE_STORE_PG_PORT"], env["FEATURE_STORE_PG_DBNAME"]) == (
        "db.internal",
        "6432",
        "features",
    )


def test_the_settings_choose_each_warehouse_and_the_url_comes_from_the_environment(tmp_path):
    home = {"FEATURE_STORE_HOME": str(tmp_path)}
    duckdb = open_warehouse(Settings.from_env(home))
    assert isinstance(duckdb, DuckDBWarehouse) and duckdb.path == str(tmp_path / "warehouse.duckdb")
    url = "postgresql://fs:s3cret@db.internal:5432/features"
    prod = {**home, "FEATURE_STORE_ENV": "prod", "FEATURE_STORE_ONLINE": "sqlite", "FEATURE_STORE_POSTGRES_URL": url}
    settings = Settings.from_env(prod)
    assert "s3cret" not in repr(settings)
    postgres = open_warehouse(settings, prod)
    assert isinstance(postgres, PostgresWarehouse) and (postgres.url, postgres.schema_name) == (url, "public")
    assert "s3cret" not in repr(postgres)
    spark = open_warehouse(Settings.from_env({**home, "FEATURE_STORE_WAREHOUSE": "spark"}))
    assert isinstance(spark, SparkWarehouse) and spark.folder == str(tmp_path / "spark")


def test_the_dagster_resource_hands_assets_the_warehouse_the_settings_choose(tmp_path, monkeypatch):
    url = "postgresql://fs:s3cret@db.internal:5432/features"
    monkeypatch.setenv("FEATURE_STORE_POSTGRES_URL", url)
    prod = {"FEATURE_STORE_HOME": str(tmp_path), "FEATURE_STORE_ENV": "prod", "FEATURE_STORE_ONLINE": "sqlite"}
    settings = Settings.from_env({**prod, "FEATURE_STORE_POSTGRES_URL": url})
    resource = warehouse_for(settings)
    assert "s3cret" not in str(resource.model_dump())  # an EnvVar, resolved at launch and hidden in the UI
    with dg.build_resources({"warehouse": resource}) as resources:
        assert isinstance(resources.warehouse, PostgresWarehouse) and resources.warehouse.url == url


def test_the_training_leakage_and_sync_jobs_import_no_dagster():
    code = (
        "import sys, feature_assets.training, feature_assets.leakage, feature_assets.online_sync, "
        "feature_assets.backends, feature_assets.warehouses; assert 'dagster' not in sys.modules, 'dagster imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

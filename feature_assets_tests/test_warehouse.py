"""The PostgreSQL warehouse connection: bounded waits, a clear message, and the URL's parameters reaching dbt."""

import socket
import time

import pytest

from feature_assets.errors import WarehouseError
from feature_assets.resources.warehouse import Warehouse


def test_a_server_that_accepts_and_never_answers_fails_within_the_connect_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts TCP (the kernel completes the handshake) and never says a word
    port = silent.getsockname()[1]
    warehouse = Warehouse(
        kind="postgres", postgres_url=f"postgresql://postgres:s3cret@127.0.0.1:{port}/test?connect_timeout=1"
    )
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
    env = Warehouse(kind="postgres", postgres_url=url, schema_name="feats").dbt_env()
    assert env["FEATURE_STORE_PG_SSLMODE"] == "verify-full"
    assert env["FEATURE_STORE_PG_SSLROOTCERT"] == "/etc/ssl/pg-ca.pem"
    assert env["FEATURE_STORE_PG_CONNECT_TIMEOUT"] == "3"
    assert (env["FEATURE_STORE_PG_HOST"], env["FEATURE_STORE_PG_PORT"], env["FEATURE_STORE_PG_DBNAME"]) == (
        "db.internal",
        "6432",
        "features",
    )

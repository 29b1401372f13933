"""The Spark warehouse on a local Spark: the dbt project builds there row for row as on DuckDB, an as-of time built
again is replaced (never duplicated), and the online sync reads Spark in batches.

One Spark server and one build per engine for the module, a small data set of its own: on Spark every dbt node
costs round trips, so the data set's size matters little and the number of builds a lot.
"""

import math
import signal
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from conftest import materialize, write_raw
from test_label_and_country_models import TABLES, _assert_same_rows, _records, _users_without_a_country

from feature_assets.assets.raw import RAW_COLUMNS
from feature_assets.local_spark import local_spark_url
from feature_assets.warehouses import DuckDBWarehouse, SparkWarehouse, Warehouse

ANCHOR = datetime(2026, 3, 31)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)
# 130 days: the first label a month after the first event, and LTV's 90-day outcome window before the last load.
RAW = {"users": 40, "days": 130, "anchor": ANCHOR.isoformat()}
# Six as-of hours over two as-of days (partitions): the evening before the anchor and the anchor's midnight.
AS_OF = {"as_of_start": (ANCHOR - 5 * HOUR).isoformat(), "as_of_end": ANCHOR.isoformat()}
# And past as-of times, built after them (once staging is there): two days of hours before the first churn and LTV
# labels, thinned to each day's first (midnight), which those labels match.
PAST = {"as_of_start": (ANCHOR - 99 * DAY).isoformat(), "as_of_end": (ANCHOR - 97 * DAY).isoformat()}
VIEWS = ["user_features", "country_features"]
COMPARED = {
    **TABLES,
    "user_features": (
        ("user_id", "computed_at", "age", "country", "plan", "events_30d", "avg_order_30d"),
        ("user_id", "computed_at"),
    ),
}


def _read(warehouse: Warehouse) -> dict[str, list[dict[str, Any]]]:
    """Every compared table in contract order (Spark keeps a partition column last)."""
    return {
        table: _records(warehouse.query(f"select {', '.join(columns)} from {table}"))
        for table, (columns, _) in COMPARED.items()
    }


@pytest.fixture(scope="module")
def builds(tmp_path_factory, spark_folder) -> Iterator[dict[str, Any]]:
    """One build per engine from the same raw rows (generated on DuckDB, copied to Spark), and the compared tables
    as built; the local Spark starts while DuckDB builds."""
    duckdb = DuckDBWarehouse(str(tmp_path_factory.mktemp("duckdb") / "warehouse.duckdb"))
    spark = SparkWarehouse(folder=spark_folder, schema_name=f"fs_test_{uuid.uuid4().hex[:10]}")
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(local_spark_url, Path(spark_folder))
        assert materialize(duckdb, raw=RAW).success
        write_raw(duckdb, _users_without_a_country())
        assert materialize(duckdb, as_of=AS_OF).success
        assert materialize(duckdb, as_of=PAST, models=VIEWS).success
        started.result()
    write_raw(spark, {table: duckdb.query(f"select * from {table}") for table in RAW_COLUMNS})
    assert materialize(spark, as_of=AS_OF).success
    assert materialize(spark, as_of=PAST, models=VIEWS).success
    yield {"duckdb": duckdb, "spark": spark, "built": {"duckdb": _read(duckdb), "spark": _read(spark)}}


def test_spark_builds_the_same_feature_views_and_labels_as_duckdb(builds):
    spark, duckdb = builds["built"]["spark"], builds["built"]["duckdb"]
    for table in COMPARED:
        assert spark[table], table
        _assert_same_rows_of(table, spark[table], duckdb[table])
    assert len({row["computed_at"] for row in spark["user_features"]}) == 3 + 6


def _assert_same_rows_of(table: str, actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    if table in TABLES:
        _assert_same_rows(table, actual, expected)
        return
    _columns, grain = COMPARED[table]
    key = lambda row: tuple(row[c] for c in grain)  # noqa: E731
    assert sorted(actual, key=key) == sorted(expected, key=key), table


def test_an_as_of_time_built_again_is_replaced_never_duplicated(builds):
    """A late event loaded before the newest as-of time; building that time of user_features again (that model and
    its tests only) updates its snapshots in place: the same rows, one event more for that user only."""
    spark = builds["spark"]
    user = min(row["user_id"] for row in builds["built"]["spark"]["user_features"])
    late = pd.DataFrame(
        {
            "event_id": [10**15 + 99],
            "user_id": [user],
            "event_type": ["search"],
            "created_at": [ANCHOR - 2 * DAY],
            "loaded_at": [ANCHOR - HOUR],
        }
    )
    newest = "select user_id, computed_at, events_30d from user_features where computed_at = ?"
    before = spark.query(newest, [ANCHOR])
    write_raw(spark, {"raw_events": late})
    assert materialize(spark, as_of={"as_of_end": ANCHOR.isoformat()}, models=["user_features"]).success
    after = spark.query(newest, [ANCHOR])
    assert len(after) == len(before) > 0 and not after.duplicated(["user_id"]).any()
    changed = after.merge(before, on=["user_id", "computed_at"], suffixes=("", "_before"))
    assert (changed["events_30d"] - changed["events_30d_before"]).tolist() == [
        int(u == user) for u in changed["user_id"]
    ]
    assert spark.query("select count(*) as n from user_features")["n"].iat[0] == len(
        builds["built"]["spark"]["user_features"]
    )


@pytest.mark.parametrize("view_name", ["user_features", "country_features"])
def test_the_sync_reads_each_entitys_latest_snapshot_from_spark_in_bounded_batches(builds, view_name):
    from feature_assets.online_sync import iter_latest_snapshots
    from feature_assets.registry import load_registry
    from feature_assets.settings import dbt_manifest_path

    view = load_registry(dbt_manifest_path()).views[view_name]
    until = ANCHOR - HOUR
    with builds["duckdb"].connect() as con:
        [expected] = list(iter_latest_snapshots(builds["duckdb"], con, view, until=until))
    with builds["spark"].connect() as con:
        # About three batches, whatever the number of entities.
        batch_rows = -(-len(expected) // 3)
        batches = list(iter_latest_snapshots(builds["spark"], con, view, until=until, batch_rows=batch_rows))
        staged = [
            t.name
            for t in con.catalog.listTables(builds["spark"].schema_name)
            if t.name.startswith("featurestore_sync")
        ]
        [sample] = list(iter_latest_snapshots(builds["spark"], con, view, until=until, sample=3))
    assert len(batches) > 1 and max(map(len, batches)) <= 3 * batch_rows
    assert not staged
    got = pd.concat(batches).sort_values(view.entity_key, ignore_index=True)
    want = expected.sort_values(view.entity_key, ignore_index=True)
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()), check_exact=False, rtol=1e-12)
    assert set(got[view.timestamp]) == {until}
    assert len(sample) == 3 and sample.merge(got).shape[0] == 3


def test_spark_builds_the_same_training_sets_as_duckdb_and_their_leakage_checks_pass(builds):
    """The models' training sets over the views and labels each engine built: row for row the same, label_row too."""
    from feature_assets.assets.training import training_set_assets
    from feature_assets.registry import LABEL_ROW, load_registry
    from feature_assets.settings import dbt_manifest_path

    registry = load_registry(dbt_manifest_path())
    assets, checks = training_set_assets(registry)
    built = {}
    for engine in ("duckdb", "spark"):
        result = dg.materialize(
            [*assets, *checks], resources={"warehouse": builds[engine]}, instance=dg.DagsterInstance.ephemeral()
        )
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == len(registry.feature_sets) and all(e.passed for e in evaluations), engine
        assert all(e.metadata["rows_checked"].value > 0 for e in evaluations), engine
        built[engine] = {
            fs.training_set: _records(builds[engine].query(f"select * from {fs.training_set} order by {LABEL_ROW}"))
            for fs in registry.feature_sets.values()
        }
    for table, expected in built["duckdb"].items():
        actual = built["spark"][table]
        assert expected and any(row["user_features_snapshot_at"] is not None for row in expected), table
        assert len(actual) == len(expected) and all(row.keys() == expected[0].keys() for row in actual), table
        for got, want in zip(actual, expected):
            for column, value in want.items():
                if isinstance(value, float) and got[column] is not None:
                    assert math.isclose(got[column], value, rel_tol=1e-12, abs_tol=1e-9), (table, column, got, want)
                else:
                    assert got[column] == value, (table, column, got, want)


def test_the_warehouse_switch_names_spark_and_refuses_what_cannot_work(tmp_path):
    from feature_assets.backends import open_warehouse
    from feature_assets.errors import ConfigError
    from feature_assets.settings import Settings

    local = {"FEATURE_STORE_HOME": str(tmp_path), "FEATURE_STORE_WAREHOUSE": "spark"}
    warehouse = open_warehouse(Settings.from_env(local))
    assert (warehouse.kind, warehouse.folder, warehouse.schema_name) == (
        "spark",
        str(tmp_path / "spark"),
        "featurestore",
    )
    session = SparkWarehouse(remote="sc://spark:15002/;token=t0k3n").dbt_env()
    assert (session["FEATURE_STORE_DBT_TARGET"], session["SPARK_REMOTE"]) == ("spark", "sc://spark:15002/;token=t0k3n")
    thrift = SparkWarehouse(remote="sc://spark:15002/;token=t0k3n", dbt_method="thrift").dbt_env()
    assert thrift["FEATURE_STORE_DBT_TARGET"] == "spark_thrift" and "t0k3n" not in str(thrift)
    prod = {**local, "FEATURE_STORE_ENV": "prod", "FEATURE_STORE_MODEL_STORE_URL": "postgresql://u@h/m"}
    with pytest.raises(ConfigError, match="needs FEATURE_STORE_SPARK_REMOTE"):
        Settings.from_env(prod)
    with pytest.raises(ConfigError, match="must be a Spark Connect URL") as error:
        Settings.from_env({**prod, "FEATURE_STORE_SPARK_REMOTE": "https://u:s3cret@spark"})
    assert "s3cret" not in str(error.value)
    with pytest.raises(ConfigError, match="FEATURE_STORE_WAREHOUSE must be"):
        Settings.from_env({**local, "FEATURE_STORE_WAREHOUSE": "sparks"})


def test_a_spark_server_that_is_down_is_named_at_once_not_waited_for_ten_minutes():
    from feature_assets.errors import WarehouseError

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    warehouse = SparkWarehouse(remote=f"sc://127.0.0.1:{port}/;token=t0k3n")
    refused = f"nothing answers at 127.0.0.1:{port} \\(Connection refused\\)"
    with pytest.raises(WarehouseError, match=refused) as error, warehouse.connect():
        pass
    assert "t0k3n" not in str(error.value)


def test_a_large_frame_lands_on_spark_whole_in_slices(spark_warehouse, monkeypatch):
    """Appends go in slices (the server holds each one in memory): every row lands once, with its values."""
    from feature_assets.warehouses import spark as warehouse_module

    monkeypatch.setattr(warehouse_module, "SPARK_APPEND_ROWS", 2)
    frame = pd.DataFrame(
        {
            "user_id": [1, 2, 3, 4, 5],
            "computed_at": [ANCHOR - k * HOUR for k in range(5)],
            "score": [0.5, None, 1.5, 2.5, 3.5],
        }
    )
    with spark_warehouse.connect() as con:
        spark_warehouse.append(
            con, "sliced", frame, {"user_id": "bigint", "computed_at": "timestamp", "score": "double"}
        )
        landed = spark_warehouse.fetch(con, "select * from sliced order by user_id")
    pd.testing.assert_frame_equal(landed, frame, check_dtype=False)


def test_featurestore_stop_spark_ends_the_server_the_home_left_running_gracefully_and_says_when_none_runs(
    tmp_path, monkeypatch, capsys
):
    """Started by a process that ignores SIGTERM, as Dagster in a background job does: the server still stops on it,
    closing its SparkContext rather than being killed."""
    from feature_assets.cli import main

    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    for name in ("FEATURE_STORE_ENV", "FEATURE_STORE_WAREHOUSE", "FEATURE_STORE_SPARK_REMOTE"):
        monkeypatch.delenv(name, raising=False)
    ignored = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        port = int(local_spark_url(tmp_path / "spark").rsplit(":", 1)[1])
    finally:
        signal.signal(signal.SIGTERM, ignored)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert main(["stop-spark"]) == 0
    assert capsys.readouterr().out == f"stopped the local Spark server of {tmp_path / 'spark'}\n"
    assert "Successfully stopped SparkContext" in (tmp_path / "spark" / "server.log").read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert main(["stop-spark"]) == 0
    assert capsys.readouterr().out == f"no local Spark server runs for {tmp_path / 'spark'}\n"


@pytest.mark.parametrize("recorded", ['{"pid": "x", "port": 1}', '["pid"]', "{}", "not json"])
def test_stop_spark_reads_a_server_record_it_did_not_write_as_no_server(tmp_path, monkeypatch, capsys, recorded):
    from feature_assets.cli import main

    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    (tmp_path / "spark").mkdir()
    (tmp_path / "spark" / "server.json").write_text(recorded)
    assert main(["stop-spark"]) == 0
    assert capsys.readouterr().out == f"no local Spark server runs for {tmp_path / 'spark'}\n"

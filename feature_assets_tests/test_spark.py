"""The Spark warehouse on a local Spark: the dbt project builds there row for row as on DuckDB, an as-of time built
again is replaced (never duplicated), old snapshots are thinned, and the online sync reads Spark in batches.

One Spark server for the module (its start-up is most of a build's cost), a small data set of its own.
"""

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from conftest import materialize, write_raw
from feature_assets.local_spark import local_spark_url, stop_local_spark
from feature_assets.resources.warehouse import Warehouse
from test_label_and_country_models import TABLES, _assert_same_rows, _records, _users_without_a_country

ANCHOR = datetime(2026, 3, 31)
DAY = timedelta(days=1)
# 130 days: the first label a month after the first event, and LTV's 90-day outcome window before the last load.
RAW = {"users": 40, "days": 130, "anchor": ANCHOR.isoformat()}
AS_OF = {"as_of_start": (ANCHOR - 9 * DAY).isoformat(), "as_of_end": ANCHOR.isoformat(), "cadence_hours": 24}
COMPARED = {
    **TABLES,
    "user_features": (
        ("user_id", "computed_at", "age", "country", "plan", "events_30d", "avg_order_30d"),
        ("user_id", "computed_at"),
    ),
}


@pytest.fixture(scope="module")
def spark_folder(tmp_path_factory) -> Iterator:
    folder = tmp_path_factory.mktemp("spark")
    local_spark_url(folder)
    yield folder
    stop_local_spark(folder)


def _read(warehouse: Warehouse) -> dict[str, list[dict[str, Any]]]:
    """Every compared table in contract order (Spark keeps a partition column last)."""
    return {table: _records(warehouse.query(f"select {', '.join(columns)} from {table}")) for table, (columns, _) in COMPARED.items()}


def _build(warehouse: Warehouse) -> None:
    assert materialize(warehouse, raw=RAW).success
    write_raw(warehouse, _users_without_a_country())
    assert materialize(warehouse, as_of=AS_OF).success


@pytest.fixture(scope="module")
def builds(spark_folder, tmp_path_factory) -> Iterator[dict[str, Warehouse]]:
    warehouses = {
        "duckdb": Warehouse(kind="duckdb", duckdb_path=str(tmp_path_factory.mktemp("duckdb") / "warehouse.duckdb")),
        "spark": Warehouse(kind="spark", spark_folder=str(spark_folder), schema_name=f"fs_test_{uuid.uuid4().hex[:10]}"),
    }
    for warehouse in warehouses.values():
        _build(warehouse)
    yield warehouses
    with warehouses["spark"].connect() as session:
        session.sql(f"drop database if exists {warehouses['spark'].schema_name} cascade")


def test_spark_builds_the_same_feature_views_and_labels_as_duckdb(builds):
    spark, duckdb = _read(builds["spark"]), _read(builds["duckdb"])
    for table in COMPARED:
        assert spark[table], table
        _assert_same_rows_of(table, spark[table], duckdb[table])
    assert len({row["computed_at"] for row in spark["user_features"]}) == 10


def _assert_same_rows_of(table: str, actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    if table in TABLES:
        _assert_same_rows(table, actual, expected)
        return
    columns, grain = COMPARED[table]
    key = lambda row: tuple(row[c] for c in grain)  # noqa: E731
    assert sorted(actual, key=key) == sorted(expected, key=key), table


def test_an_as_of_time_built_again_is_replaced_never_duplicated(builds):
    """A late event loaded before the newest as-of time; building that time again updates its snapshots in place."""
    user = int(builds["duckdb"].query("select min(user_id) as u from user_features")["u"].iat[0])
    late = pd.DataFrame(
        {
            "event_id": [10**15 + 99],
            "user_id": [user],
            "event_type": ["search"],
            "created_at": [ANCHOR - 2 * DAY],
            "loaded_at": [ANCHOR - timedelta(hours=1)],
        }
    )
    before = builds["spark"].query("select user_id, computed_at, events_30d from user_features where computed_at = ?", [ANCHOR])
    for warehouse in builds.values():
        write_raw(warehouse, {"raw_events": late})
        assert materialize(warehouse, as_of={"as_of_end": ANCHOR.isoformat()}).success
    after = builds["spark"].query("select user_id, computed_at, events_30d from user_features where computed_at = ?", [ANCHOR])
    assert len(after) == len(before) and not after.duplicated(["user_id"]).any()
    changed = after.merge(before, on=["user_id", "computed_at"], suffixes=("", "_before"))
    assert (changed["events_30d"] - changed["events_30d_before"]).tolist() == [int(u == user) for u in changed["user_id"]]
    spark, duckdb = _read(builds["spark"]), _read(builds["duckdb"])
    for table in ("user_features", "country_features"):
        _assert_same_rows_of(table, spark[table], duckdb[table])


@pytest.mark.parametrize("view_name", ["user_features", "country_features"])
def test_the_sync_reads_each_entitys_latest_snapshot_from_spark_in_bounded_batches(builds, view_name):
    from feature_assets.online_sync import iter_latest_snapshots
    from feature_assets.project import dbt_project
    from feature_assets.registry import load_registry

    view = load_registry(dbt_project.manifest_path).views[view_name]
    until = ANCHOR - DAY
    with builds["duckdb"].connect() as con:
        [expected] = list(iter_latest_snapshots(builds["duckdb"], con, view, until=until))
    with builds["spark"].connect() as con:
        batches = list(iter_latest_snapshots(builds["spark"], con, view, until=until, batch_rows=4))
        staged = [t.name for t in con.catalog.listTables(builds["spark"].schema_name) if t.name.startswith("featurestore_sync")]
        [sample] = list(iter_latest_snapshots(builds["spark"], con, view, until=until, sample=3))
    assert len(batches) > 1 and max(map(len, batches)) <= 3 * 4
    assert not staged
    got = pd.concat(batches).sort_values(view.entity_key, ignore_index=True)
    want = expected.sort_values(view.entity_key, ignore_index=True)
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()), check_exact=False, rtol=1e-12)
    assert set(got[view.timestamp]) == {until}
    assert len(sample) == 3 and sample.merge(got).shape[0] == 3


def test_a_training_set_on_spark_is_refused_with_a_clear_error_until_it_is_built_there():
    from feature_assets.errors import WarehouseError
    from feature_assets.project import dbt_project
    from feature_assets.registry import load_registry
    from feature_assets.training import point_in_time_sql

    feature_set = next(iter(load_registry(dbt_project.manifest_path).feature_sets.values()))
    with pytest.raises(WarehouseError, match="not built on the Spark warehouse yet"):
        point_in_time_sql("spark", feature_set)


def test_the_warehouse_switch_names_spark_and_refuses_what_cannot_work(tmp_path):
    from feature_assets.definitions import warehouse_for
    from feature_assets.errors import ConfigError
    from feature_assets.settings import Settings

    local = {"FEATURE_STORE_HOME": str(tmp_path), "FEATURE_STORE_WAREHOUSE": "spark"}
    warehouse = warehouse_for(Settings.from_env(local))
    assert (warehouse.kind, warehouse.spark_folder, warehouse.schema_name) == ("spark", str(tmp_path / "spark"), "featurestore")
    session = Warehouse(kind="spark", spark_remote="sc://spark:15002/;token=t0k3n").dbt_env()
    assert (session["FEATURE_STORE_DBT_TARGET"], session["SPARK_REMOTE"]) == ("spark", "sc://spark:15002/;token=t0k3n")
    thrift = Warehouse(kind="spark", spark_remote="sc://spark:15002/;token=t0k3n", spark_dbt_method="thrift").dbt_env()
    assert thrift["FEATURE_STORE_DBT_TARGET"] == "spark_thrift" and "t0k3n" not in str(thrift)
    prod = {**local, "FEATURE_STORE_ENV": "prod", "FEATURE_STORE_MODEL_STORE_URL": "postgresql://u@h/m"}
    with pytest.raises(ConfigError, match="needs FEATURE_STORE_SPARK_REMOTE"):
        Settings.from_env(prod)
    with pytest.raises(ConfigError, match="must be a Spark Connect URL") as error:
        Settings.from_env({**prod, "FEATURE_STORE_SPARK_REMOTE": "https://u:s3cret@spark"})
    assert "s3cret" not in str(error.value)
    with pytest.raises(ConfigError, match="FEATURE_STORE_WAREHOUSE must be"):
        Settings.from_env({**local, "FEATURE_STORE_WAREHOUSE": "sparks"})

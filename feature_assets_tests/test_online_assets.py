"""The online snapshot as Dagster runs it: after a real dbt build, with its parity check, automation and CLI."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest
from conftest import ANCHOR, REDIS_URL, dbt_assets, dbt_resource

from feature_assets import automation
from feature_assets.as_of import format_hour
from feature_assets.assets.online import online_assets
from feature_assets.assets.raw import demo_raw_data
from feature_assets.automation import online_sync_sensor
from feature_assets.cli import main
from feature_assets.definitions import build_definitions
from feature_assets.errors import ConfigError
from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.resources.online import OnlineStoreResource
from feature_assets.serving import FeatureReader, SqliteOnlineStore
from feature_assets.settings import Settings, dbt_manifest_path
from feature_assets.warehouses import DuckDBWarehouse, Warehouse

ONLINE = dg.AssetKey("user_features_online")
FEATURES = dg.AssetKey("user_features")
REGISTRY = load_registry(dbt_manifest_path())
VIEW, COUNTRIES = REGISTRY.view("user_features"), REGISTRY.view("country_features")
user_features_online, user_features_online_parity = online_assets(VIEW)
country_features_online, country_features_online_parity = online_assets(COUNTRIES)


def definitions(warehouse: Warehouse, online: OnlineStoreResource) -> dg.Definitions:
    return dg.Definitions(
        assets=[demo_raw_data, *dbt_assets(), user_features_online, country_features_online],
        asset_checks=[user_features_online_parity, country_features_online_parity],
        sensors=[online_sync_sensor([user_features_online, country_features_online])],
        resources={"warehouse": warehouse, "dbt": dbt_resource(), "online_store": online},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real refresh (demo raw data + dbt build) in an instance whose automation is evaluated before and after."""
    home = tmp_path_factory.mktemp("online_assets")
    # Today, when the fixture runs (not ANCHOR, from when the suite started: it may have started before midnight):
    # the sync waits for the newest as-of day.
    today = datetime.fromisoformat(automation.day_key(datetime.now(UTC)))
    warehouse = DuckDBWarehouse(str(home / "warehouse.duckdb"))
    sqlite = OnlineStoreResource(kind="sqlite", sqlite_path=str(home / "online.sqlite"))
    defs = definitions(warehouse, sqlite)
    instance = dg.DagsterInstance.ephemeral()
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    refresh = dg.materialize(
        [demo_raw_data, *dbt_assets()],
        resources={"warehouse": warehouse, "dbt": dbt_resource()},
        run_config={
            "ops": {
                "demo_raw_data": {"config": {"users": 300, "days": 10, "anchor": format_hour(today)}},
                "dbt_feature_views": {
                    "config": {"as_of_start": format_hour(today - timedelta(days=2)), "as_of_end": format_hour(today)}
                },
            }
        },
        instance=instance,
        raise_on_error=False,
        tags=automation.as_of_days_tags(today - timedelta(days=2), today),
    )
    assert refresh.success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    return SimpleNamespace(home=home, warehouse=warehouse, sqlite=sqlite, defs=defs, before=before, after=after)


def offline_latest(warehouse: Warehouse):
    return warehouse.query(
        "select * from user_features where computed_at = (select max(computed_at) from user_features) order by user_id"
    )


def test_each_views_sync_is_requested_once_the_view_is_materialized_and_its_checks_passed(built):
    assert built.before.total_requested == 0
    assert built.after.get_num_requested(ONLINE) == 1
    assert built.after.get_num_requested(dg.AssetKey("country_features_online")) == 1


def test_the_sync_waits_while_a_blocking_check_of_user_features_has_failed(built):
    instance = dg.DagsterInstance.ephemeral()
    blocking = [spec for spec in dbt_assets().feature_views.check_specs if spec.asset_key == FEATURES and spec.blocking]
    assert blocking, "dbt tests of severity error are blocking checks"
    cursor = dg.evaluate_automation_conditions(defs=built.defs, instance=instance).cursor

    # Today's as-of day: the partition the sync reads its latest snapshots from.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(FEATURES, partition=automation.day_key(datetime.now(UTC)))
    )
    for spec in blocking:
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(FEATURES, spec.name, passed=spec is not blocking[0])
        )
    held = dg.evaluate_automation_conditions(defs=built.defs, instance=instance, cursor=cursor)
    assert held.get_num_requested(ONLINE) == 0

    instance.report_runless_asset_event(dg.AssetCheckEvaluation(FEATURES, blocking[0].name, passed=True))
    released = dg.evaluate_automation_conditions(defs=built.defs, instance=instance, cursor=held.cursor)
    assert released.get_num_requested(ONLINE) == 1


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_materializing_the_online_snapshot_fills_the_store_with_the_latest_offline_values(built, kind, request):
    if kind == "redis":
        request.getfixturevalue("redis_client")
        online = OnlineStoreResource(kind="redis", redis_url=REDIS_URL)
    else:
        online = built.sqlite
    result = dg.materialize(
        [user_features_online, user_features_online_parity],
        resources={"warehouse": built.warehouse, "online_store": online},
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    offline = offline_latest(built.warehouse)
    assert metadata["rows_written"] == metadata["keys_in_store"] == len(offline) > 0
    assert metadata["seconds"] > 0 and metadata["rows_per_second"] > 0
    [parity] = result.get_asset_check_evaluations()
    assert parity.passed and parity.metadata["entities_checked"].value == len(offline)

    with online.open() as store:
        frame = FeatureReader(store, VIEW).get_online_features(offline["user_id"])
    assert not frame["_missing"].any()
    assert frame["age"].tolist() == offline["age"].tolist()
    assert frame["avg_order_30d"].isna().tolist() == offline["avg_order_30d"].isna().tolist()


def test_the_parity_check_fails_the_run_and_shows_the_value_altered_by_hand(built, redis_client):
    online = OnlineStoreResource(kind="redis", redis_url=REDIS_URL)
    resources = {"warehouse": built.warehouse, "online_store": online}
    dg.materialize(
        [user_features_online, user_features_online_parity],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    user = int(offline_latest(built.warehouse)["user_id"].iloc[3])
    redis_client.hset(f"features:user:{user}", "plan", "platinum")

    result = dg.materialize(
        [user_features_online, user_features_online_parity],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    [parity] = result.get_asset_check_evaluations()
    assert not parity.passed and parity.severity == dg.AssetCheckSeverity.ERROR
    assert parity.metadata["mismatched_entities"].value == 1
    examples = parity.metadata["examples"].value
    assert str(user) in examples and "plan" in examples and "platinum" in examples
    assert f"user_id {user}" in parity.description and "a full sync repairs them" in parity.description

    # The failure asked for a full sync; the repair run rewrites the altered value and parity holds again.
    with online.open() as store:
        assert "parity check found 1 mismatched" in store.last_sync(VIEW).full_sync_due
    repaired = dg.materialize(
        [user_features_online, user_features_online_parity],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert repaired.asset_materializations_for_node("user_features_online")[0].metadata["mode"].value == "full"
    assert repaired.get_asset_check_evaluations()[0].passed
    assert redis_client.hget(f"features:user:{user}", "plan") != b"platinum"


def test_a_user_only_the_online_store_holds_fails_parity_and_the_repair_deletes_it(built, redis_client):
    online = OnlineStoreResource(kind="redis", redis_url=REDIS_URL)
    resources = {"warehouse": built.warehouse, "online_store": online}
    dg.materialize(
        [user_features_online, user_features_online_parity],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    some_user = int(offline_latest(built.warehouse)["user_id"].iloc[0])
    redis_client.copy(f"features:user:{some_user}", "features:user:987654321")  # a user deleted from the warehouse

    failed = dg.materialize(
        [user_features_online, user_features_online_parity],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        selection=dg.AssetSelection.all_asset_checks(),
    )
    [parity] = failed.get_asset_check_evaluations()
    assert not parity.passed and "user_id 987654321" in parity.description
    dg.materialize(
        [user_features_online, user_features_online_parity],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert not redis_client.exists("features:user:987654321")


def test_featurestore_sync_names_the_users_a_failed_parity_check_found_and_the_next_sync_repairs_them(built):
    import os
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_STORE_", "DAGSTER_"))}
    env["FEATURE_STORE_HOME"] = str(built.home)

    def sync() -> subprocess.CompletedProcess:
        command = [Path(sys.executable).with_name("featurestore"), "sync"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    assert sync().returncode == 0
    user = int(offline_latest(built.warehouse)["user_id"].iloc[2])
    with sqlite3.connect(built.home / "online.sqlite") as con:
        con.execute("update online_user_features set plan = 'platinum' where entity_id = ?", (str(user),))

    failed = sync()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("featurestore: the online sync failed")
    assert f"user_id {user}" in error and "a full sync repairs them" in error

    repaired = sync()
    assert (
        repaired.returncode == 0
        and "user_features_online (sqlite" in repaired.stdout
        and "full sync" in repaired.stdout
    )
    with sqlite3.connect(built.home / "online.sqlite") as con:
        assert (
            con.execute("select plan from online_user_features where entity_id = ?", (str(user),)).fetchone()[0]
            != "platinum"
        )


def test_a_failed_parity_check_makes_the_automation_request_the_repair_sync_once():
    none = dg.ResourceDefinition.none_resource()
    defs = dg.Definitions(
        assets=[user_features_online],
        asset_checks=[user_features_online_parity],
        resources={"online_store": none, "warehouse": none},
    )
    instance = dg.DagsterInstance.ephemeral()
    key = user_features_online.key

    def requested(cursor=None):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return result.total_requested, result.cursor

    _, cursor = requested()
    instance.report_runless_asset_event(dg.AssetMaterialization(key))
    count, cursor = requested(cursor)
    assert count == 0
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(asset_key=key, check_name="parity", passed=False))
    count, cursor = requested(cursor)
    assert count == 1  # the repair
    count, _ = requested(cursor)
    assert count == 0  # once, not on every tick while the check stays failed


def test_featurestore_get_prints_one_entitys_online_features_of_the_named_view(built, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE_STORE_HOME", str(built.home))
    for name in ("FEATURE_STORE_ENV", "FEATURE_STORE_ONLINE", "FEATURE_STORE_DEMO_DATA"):
        monkeypatch.delenv(name, raising=False)
    with SqliteOnlineStore(built.home / "online.sqlite") as store:
        sync_online_store(built.warehouse, store, VIEW)
        sync_online_store(built.warehouse, store, COUNTRIES)
    offline = offline_latest(built.warehouse).iloc[0]

    assert main(["get", "user_features", str(offline["user_id"]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (
        printed["user_id"] == offline["user_id"] and printed["age"] == offline["age"] and printed["_missing"] is False
    )
    assert printed["computed_at"] == offline["computed_at"].isoformat()

    assert main(["get", "user_features", str(offline["user_id"])]) == 0
    assert "events_30d" in capsys.readouterr().out

    assert main(["get", "country_features", offline["country"]]) == 0
    out = capsys.readouterr().out
    assert f"country_code {offline['country']}" in out and "country_paid_share" in out

    assert main(["get", "user_features", "987654321"]) == 1
    assert "not in the online store of user_features" in capsys.readouterr().err
    assert main(["get", "merchant_features", "1"]) == 1
    assert "no feature view 'merchant_features'; known: country_features, user_features" in capsys.readouterr().err


def test_definitions_include_the_synced_snapshot_its_blocking_parity_check_and_the_running_sensor(tmp_path):
    defs = build_definitions(Settings.from_env({"FEATURE_STORE_HOME": str(tmp_path)}))
    online = defs.resolve_assets_def(ONLINE)
    spec = next(iter(online.specs))
    assert FEATURES in {dep.asset_key for dep in spec.deps}
    assert spec.freshness_policy is not None
    assert spec.automation_condition.get_label() == automation.ONLINE_SYNC_AUTOMATION.get_label()
    for view in (VIEW, COUNTRIES):
        key = dg.AssetKey(f"{view.name}_online")
        assert defs.resolve_asset_graph().get_check_spec(dg.AssetCheckKey(key, "parity")).blocking
    sensor = defs.resolve_sensor_def("online_sync")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resources["online_store"].kind == "sqlite"


def test_prod_settings_put_the_online_store_in_redis_from_the_environment(monkeypatch):
    prod = {"FEATURE_STORE_ENV": "prod", "FEATURE_STORE_POSTGRES_URL": "postgresql://u@h/db"}
    with pytest.raises(ConfigError, match="FEATURE_STORE_REDIS_URL"):
        Settings.from_env(prod)
    settings = Settings.from_env({**prod, "FEATURE_STORE_REDIS_URL": "rediss://:secret@redis.example:6380/0"})
    assert settings.online == "redis"
    with pytest.raises(ConfigError, match="'redis' or 'sqlite'"):
        Settings.from_env({"FEATURE_STORE_ONLINE": "memcached"})


def test_each_views_refresh_must_fit_twice_in_its_own_ttl():
    slow = replace(COUNTRIES, refresh_interval=timedelta(hours=12), online_ttl=timedelta(hours=20))
    with pytest.raises(ConfigError, match=r"refresh interval of country_features \(12 h\).*online TTL \(20 h\)"):
        automation.check_refresh_fits_ttl([VIEW, slow])
    automation.check_refresh_fits_ttl(
        [VIEW, replace(COUNTRIES, refresh_interval=timedelta(hours=24))]
    )  # exactly half is enough
    # An as-of day (the views' partition) holds the same hours of the cadence every day.
    for odd in (timedelta(minutes=90), timedelta(hours=5), timedelta(hours=48)):
        with pytest.raises(
            ConfigError,
            match=r"refresh_hours must be a whole number of hours that divides a day \(1, 2, 3, 4, 6, 8, 12 or 24\)",
        ):
            automation.check_refresh_fits_ttl([replace(VIEW, refresh_interval=odd, online_ttl=timedelta(days=7))])


def test_the_hourly_schedule_refreshes_each_view_on_its_own_cadence(tmp_path):
    daily = replace(COUNTRIES, refresh_interval=timedelta(hours=24))
    assert automation.due_views([VIEW, daily], ANCHOR) == [VIEW, daily]  # midnight: both
    assert automation.due_views([VIEW, daily], ANCHOR + timedelta(hours=5)) == [VIEW]
    defs = build_definitions(Settings.from_env({"FEATURE_STORE_HOME": str(tmp_path)}))
    schedule = defs.resolve_schedule_def("hourly_refresh")
    request = schedule.evaluate_tick(
        dg.build_schedule_context(
            scheduled_execution_time=ANCHOR + timedelta(hours=5), repository_def=defs.get_repository_def()
        )
    ).run_requests[0]
    selected = {key.to_user_string() for key in request.asset_selection}
    assert {
        "user_features",
        "country_features",
        "stg_app__users",
        "raw_events",
    } <= selected  # both views refresh hourly
    assert not selected & {
        "churn_labels",
        "ltv_labels",
        "user_features_online",
    }  # labels belong to training, syncs to automation
    # The run appends the tick's own hour to its as-of day (the partition), not the wall clock's.
    assert request.partition_key == automation.day_key(ANCHOR)
    assert request.run_config["ops"]["dbt_feature_views"]["config"] == {
        "as_of_start": format_hour(ANCHOR + timedelta(hours=5))
    } | {"as_of_end": format_hour(ANCHOR + timedelta(hours=5))}

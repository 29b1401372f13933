"""The registry read from the dbt YAML, and the Dagster definitions built on it."""

import copy
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from feature_assets.definitions import build_definitions
from feature_assets.errors import ConfigError, RegistryError
from feature_assets.registry import load_registry
from feature_assets.settings import Settings, dbt_manifest_path, dbt_project_dir


def test_the_registry_lists_the_five_features_with_dtypes_and_ttl():
    view = load_registry(dbt_manifest_path()).view("user_features")
    assert [(f.name, f.dtype) for f in view.features] == [
        ("age", "int64"),
        ("country", "string"),
        ("plan", "string"),
        ("events_30d", "int64"),
        ("avg_order_30d", "float64"),
    ]
    assert view.online_ttl.total_seconds() == 48 * 3600
    assert (view.entity, view.entity_key, view.timestamp) == ("user", "user_id", "computed_at")


def test_the_registry_declares_two_views_two_label_tables_and_a_churn_model_reading_both_views():
    registry = load_registry(dbt_manifest_path())
    countries = registry.view("country_features")
    assert (countries.entity, countries.entity_key, countries.key_data_type) == ("country", "country_code", "varchar")
    assert countries.refresh_interval == timedelta(hours=1) and countries.online_namespace == "country"
    assert registry.labels["churn_labels"].entity_keys == ("user_id", "country_code")
    assert registry.labels["churn_labels"].outcome_window == timedelta(days=30)
    assert registry.labels["ltv_labels"].outcome_window == timedelta(days=90)
    churn = registry.feature_set("churn_model")
    assert [read.view.name for read in churn.reads] == ["user_features", "country_features"]
    assert churn.reads[1].derived_from == ("user_features", "country") and churn.caller_keys == ("user_id",)
    assert (churn.labels.name, churn.target, churn.training_set) == ("churn_labels", "churned", "churn_training_set")


MANIFEST = json.loads(Path(dbt_manifest_path()).read_text())


def _edited(tmp_path: Path, edit) -> Path:
    manifest = copy.deepcopy(MANIFEST)
    nodes = {node["name"]: node for node in manifest["nodes"].values() if node["resource_type"] == "model"}
    exposures = {exposure["name"]: exposure for exposure in manifest["exposures"].values()}
    edit(nodes, exposures)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def _view(nodes, name: str) -> dict:
    return nodes[name]["config"]["meta"]["feature_view"]


def _churn_set(exposures) -> dict:
    return exposures["churn_model"]["config"]["meta"]["feature_set"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda nodes, exposures: _view(nodes, "country_features").pop("history_starts"),
            "feature view country_features: meta.feature_view needs 'history_starts', the first as-of day (UTC) of "
            "its raw history, e.g. history_starts: '2025-01-01'",
        ),
        (
            lambda nodes, exposures: _view(nodes, "user_features").update(history_starts="2025-02-30"),
            "feature view user_features: history_starts '2025-02-30' is not a day like '2025-01-01'",
        ),
        (
            lambda nodes, exposures: _view(nodes, "user_features").update(history_starts=20250101),
            "feature view user_features: history_starts 20250101 is not a day like '2025-01-01'",
        ),
        (
            lambda nodes, exposures: _view(nodes, "user_features").update(history_starts="2999-01-01"),
            "feature view user_features: history_starts 2999-01-01 is after today",
        ),
        (
            lambda nodes, exposures: _view(nodes, "user_features").update(history_starts="2026-06-01"),
            "feature views country_features (history_starts 2025-01-01) and user_features (history_starts "
            "2026-06-01) must declare the same first as-of day: one dbt run builds every view of an as-of day",
        ),
        (
            # A view named like another view's entity: its own name is its key namespace, which the user view has.
            lambda nodes, exposures: nodes["country_features"].update(name="user"),
            "feature views user and user_features would share the online keys features:user:<id>; rename one",
        ),
        (
            lambda nodes, exposures: nodes["churn_labels"]["config"]["meta"]["labels"].update(entity_keys=["user_id"]),
            "model churn_model reads country_features, keyed by country_code, but label table churn_labels carries "
            "only user_id",
        ),
        (
            lambda nodes, exposures: (
                _churn_set(exposures)["features"]["country_features"].append("country_users")
                or nodes["user_features"]["columns"].update(
                    country_users={"name": "country_users", "data_type": "integer"}
                )
                or _churn_set(exposures)["features"]["user_features"].append("country_users")
            ),
            "model churn_model reads a feature named country_users from both user_features and country_features",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures).update(
                derived_keys={"country_code": "ltv_features.country"}
            ),
            "derived key country_code must name <view>.<feature> of another view the model reads, got "
            "'ltv_features.country'",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures).update(labels="user_features"),
            "labels 'user_features' is not a label table (a model with meta.labels); known: churn_labels, ltv_labels",
        ),
        (
            lambda nodes, exposures: nodes["country_features"]["config"]["meta"]["feature_view"].update(
                refresh_hours=-1
            ),
            "feature view country_features: refresh_hours must be a positive number of hours, got -1",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures)["features"].update(user_features=["age", "label_time"]),
            "user_features has no feature 'label_time'",
        ),
        (
            lambda nodes, exposures: nodes["ltv_labels"]["config"]["meta"]["labels"].pop("outcome_hours"),
            "label table ltv_labels: meta.labels needs 'outcome_hours'",
        ),
        (
            lambda nodes, exposures: nodes["churn_labels"]["config"]["meta"]["labels"].update(outcome_hours=0),
            "label table churn_labels: outcome_hours must be a positive number of hours, got 0",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures).update(trainer="my_team/churn.py"),
            "model churn_model: trainer must name a function as 'package.module:function' (e.g. 'my_team.churn:fit'), "
            "got 'my_team/churn.py'",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures).update(trainer=["my_team.churn:fit"]),
            "model churn_model: trainer must name a function as 'package.module:function'",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures).update(min_validation={"mae_skill": 0.1}),
            "model churn_model: min_validation names 'mae_skill'; a classification model's floors: auc",
        ),
        (
            lambda nodes, exposures: _churn_set(exposures).update(min_validation={"auc": "high"}),
            "model churn_model: min_validation auc must be a number, got 'high'",
        ),
    ],
)
def test_an_inconsistent_declaration_is_refused_naming_what_to_fix(tmp_path, edit, message):
    with pytest.raises(RegistryError) as refused:
        load_registry(_edited(tmp_path, edit))
    assert message in str(refused.value)


def test_a_model_declares_its_own_trainer_or_gets_the_built_in_one_of_its_task(tmp_path):
    registry = load_registry(_edited(tmp_path, lambda nodes, exposures: _churn_set(exposures).update(
        trainer="my_team.models.churn:fit_forest"
    )))  # fmt: skip
    assert registry.feature_set("churn").trainer == "my_team.models.churn:fit_forest"
    assert registry.feature_set("ltv").trainer is None


def test_a_feature_name_that_is_not_snake_case_is_refused_naming_it(tmp_path):
    project = tmp_path / "dbt_features"
    shutil.copytree(dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs"))
    yml = project / "models" / "features" / "user_features.yml"
    yml.write_text(yml.read_text().replace("- name: events_30d", "- name: Events30d"))
    dbt = Path(sys.executable).with_name("dbt")
    subprocess.run([dbt, "parse", "--quiet", "--profiles-dir", project], cwd=project, check=True)

    with pytest.raises(RegistryError, match="'Events30d' is not snake_case"):
        load_registry(project / "target" / "manifest.json")


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())


def test_the_definitions_hold_raw_staging_and_feature_assets_with_schedule_and_freshness(defs):
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"raw_users", "raw_profile_changes", "raw_events", "raw_orders"} <= keys
    assert {"stg_app__users", "stg_app__profile_changes", "stg_app__events", "stg_app__orders", "user_features"} <= keys

    spec = defs.resolve_assets_def("user_features").specs_by_key[dg.AssetKey("user_features")]
    assert spec.freshness_policy is not None
    checks = {key.name for key in defs.resolve_assets_def("user_features").check_keys}
    assert "unique_combination_user_features_user_id__computed_at" in checks

    # One partition per as-of day (UTC); today's exists from its first hour, tomorrow's does not yet.
    days = defs.resolve_assets_def("user_features").partitions_def
    assert days.get_last_partition_key() == datetime.now(UTC).date().isoformat()
    assert days.get_first_partition_key() == "2025-01-01"  # the views' history_starts: this home has no demo data

    schedule = defs.resolve_schedule_def("hourly_refresh")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING  # a store left open stays fresh
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 3, 31, 5), repository_def=defs.get_repository_def()
    )
    request = schedule.evaluate_tick(context).run_requests[0]
    assert request.run_config["ops"]["dbt_feature_views"]["config"]["as_of_end"] == "2026-03-31 05:00:00"
    assert request.partition_key == "2026-03-31"


def test_a_store_with_demo_data_offers_its_days_only_and_one_without_the_declared_ones(tmp_path):
    """The Materialize dialog offers the partitions: a day without raw data is none of them."""
    declared = load_registry(dbt_manifest_path()).history_starts
    (tmp_path / "demo_first_day").write_text("2026-02-10\n")
    for environment, first in [
        ({"FEATURE_STORE_HOME": str(tmp_path)}, "2026-02-10"),
        ({"FEATURE_STORE_HOME": str(tmp_path), "FEATURE_STORE_DEMO_DATA": "0"}, str(declared)),
        ({"FEATURE_STORE_HOME": str(tmp_path / "fresh")}, str(declared)),
    ]:
        defs = build_definitions(Settings.from_env(environment))
        days = defs.resolve_assets_def("country_features").partitions_def
        assert days.get_first_partition_key() == first
        assert days.get_last_partition_key() == datetime.now(UTC).date().isoformat()
        assert ("2026-02-09" in days.get_partition_keys()) == (first == str(declared))  # the day before the demo's
    (tmp_path / "demo_first_day").write_text("last tuesday\n")
    with pytest.raises(ConfigError, match="demo_first_day does not hold a day like 2026-01-31"):
        build_definitions(Settings.from_env({"FEATURE_STORE_HOME": str(tmp_path)}))


def test_dbt_assets_read_well_in_the_ui_descriptions_without_sql_and_every_check_in_words(defs):
    graph = defs.resolve_asset_graph()
    dbt_keys = [key for key in graph.get_all_asset_keys() if "dbt" in graph.get(key).kinds]
    assert dg.AssetKey("user_features") in dbt_keys
    for key in dbt_keys:
        assert "Raw SQL" not in (graph.get(key).description or ""), key
        assert "dagster_dbt/project" not in graph.get(key).metadata, "shown in the UI as [DbtProject] (unserializable)"
    assert all(graph.get_check_spec(key).description for key in graph.asset_check_keys)
    check = dg.AssetCheckKey(dg.AssetKey("user_features"), "unique_combination_user_features_user_id__computed_at")
    assert (
        graph.get_check_spec(check).description
        == "dbt test: one row per user_id, computed_at; a failure blocks what reads this model"
    )


def test_automation_and_models_say_in_words_what_they_do(defs):
    schedule = defs.resolve_schedule_def("hourly_refresh")
    assert schedule.description.startswith("Every hour on the hour (UTC), one run of refresh_features")
    assert "user_features every 1 h" in schedule.description
    online_sync, monitoring = defs.resolve_sensor_def("online_sync"), defs.resolve_sensor_def("skew_monitoring")
    assert "user_features_online" in online_sync.description and "every 30 s" in online_sync.description
    assert "user_features_skew_report" in monitoring.description and "06:00 UTC" in monitoring.description
    graph = defs.resolve_asset_graph()
    # A model reads as its exposure describes it, and has a check of its own: the floors of its YAML.
    churn = graph.get(dg.AssetKey("churn_model"))
    assert churn.description.startswith("Probability that a user has no activity in the next 30 days. It predicts")
    floor = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey("churn_model"), "validation_above_floor"))
    assert floor.description.startswith("Holds back promotion (the run goes on")
    assert "a new version is served only when its validation auc >= 0.6" in floor.description
    drift = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey("user_features_skew_report"), "no_drift_error"))
    assert drift.description.startswith("Holds back promotion (the run goes on")
    assert "fails (ERROR, and alerts) when a feature's PSI reaches 0.25" in drift.description


@pytest.mark.parametrize(
    "start, end, message",
    [
        ("2026-01-05", "2026-01-02", "--start 2026-01-05 is after --end 2026-01-02"),
        ("2026-01-01T05:00", "2026-01-02", "--start '2026-01-01T05:00' is not a day like 2026-01-31"),
        (
            "2024-06-01",
            "2024-06-02",
            "the as-of days (the feature views' partitions) begin 2025-01-01, where their history does: 2024-06-01 is "
            "before them",
        ),
    ],
)
def test_a_bad_backfill_range_is_one_line_naming_it_not_dagsters_wrappers(
    tmp_path, monkeypatch, capsys, start, end, message
):
    from feature_assets.cli import main

    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code = main(["backfill", "--start", start, "--end", end])
    assert code == 1
    # Refused before any run starts (test_cli covers a failure inside a run: its step and root cause, one line).
    assert capsys.readouterr().err == f"featurestore: {message}\n"


def test_importing_the_definitions_reads_neither_the_environment_nor_a_manifest(tmp_path):
    environment = {**os.environ, "FEATURE_STORE_DBT_PROJECT": str(tmp_path), "FEATURE_STORE_ENV": "no-such-env"}
    code = "import feature_assets.definitions, feature_assets.assets.features, feature_assets.project"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_definitions_build_in_this_process_from_a_copied_project_with_one_more_view(tmp_path):
    project = tmp_path / "dbt_features"
    shutil.copytree(dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs"))
    features = project / "models" / "features"
    (features / "user_features_copy.sql").write_text((features / "user_features.sql").read_text())
    view = (features / "user_features.yml").read_text().split("\nunit_tests:")[0]  # unit test names are unique
    (features / "user_features_copy.yml").write_text(
        view.replace("- name: user_features\n", "- name: user_features_copy\n")
    )
    dbt = Path(sys.executable).with_name("dbt")
    subprocess.run([dbt, "parse", "--quiet", "--profiles-dir", project], cwd=project, check=True)

    environment = {"FEATURE_STORE_DBT_PROJECT": str(project), "FEATURE_STORE_HOME": str(tmp_path / "home")}
    defs = build_definitions(Settings.from_env(environment))
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"user_features", "user_features_copy", "user_features_copy_online", "user_features_online"} <= keys
    assert defs.resources["dbt"].project_dir == str(project)

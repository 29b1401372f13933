"""The only place that builds the Dagster Definitions."""

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from feature_assets.assets.features import dbt_feature_models
from feature_assets.assets.online import user_features_online, user_features_online_parity
from feature_assets.assets.models import model_assets
from feature_assets.assets.monitoring import served_models_asset, skew_report_assets
from feature_assets.assets.raw import demo_raw_data, external_raw_tables
from feature_assets.assets.training import label_assets, training_set_assets
from feature_assets.automation import check_refresh_fits_ttl, hourly_refresh_schedule, monitoring_sensor, online_sync_sensor
from feature_assets.project import dbt_project
from feature_assets.registry import load_registry
from feature_assets.resources.model_store import model_store_for
from feature_assets.resources.online import online_store_for
from feature_assets.resources.served_log import served_log_for
from feature_assets.resources.warehouse import Warehouse
from feature_assets.settings import Settings

__all__ = ["defs", "build_definitions", "warehouse_for"]


def warehouse_for(settings: Settings) -> Warehouse:
    if settings.env == "local":
        return Warehouse(kind="duckdb", duckdb_path=str(settings.duckdb_path), schema_name="main")
    return Warehouse(
        kind="postgres", postgres_url=dg.EnvVar("FEATURE_STORE_POSTGRES_URL"), schema_name=settings.postgres_schema
    )


def _dbt_executable() -> str:
    """The dbt next to this interpreter, so an unactivated virtualenv still finds it."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else shutil.which("dbt") or "dbt"


def build_definitions(settings: Settings) -> dg.Definitions:
    # Refuses to load on an invalid registry (e.g. a feature name that is not snake_case).
    registry = load_registry(dbt_project.manifest_path)
    # Refuses to load if online keys would expire between two refreshes.
    check_refresh_fits_ttl(registry.views.values())
    raw = [demo_raw_data] if settings.demo_data else external_raw_tables
    refresh_job = dg.define_asset_job(
        "refresh_features",
        selection=dg.AssetSelection.assets(*raw, dbt_feature_models) if settings.demo_data else dg.AssetSelection.assets(dbt_feature_models),
        description="Loads new raw rows (demo data) and appends the feature snapshot of the run's hour.",
    )
    labels = label_assets()
    training_sets, leakage_checks = training_set_assets(registry)
    models = model_assets(registry)
    skew_report, drift_checks = skew_report_assets(registry)
    served_models = served_models_asset(registry, skew_report)
    train_job = dg.define_asset_job(
        "train_models",
        selection=dg.AssetSelection.assets(*labels, *training_sets, *models, skew_report, served_models),
        description="Rebuilds labels and point-in-time training sets, trains every model, reports skew, and promotes "
        "the new models unless a drift check fails.",
    )
    return dg.Definitions(
        assets=[*raw, dbt_feature_models, user_features_online, *labels, *training_sets, *models, skew_report, served_models],
        asset_checks=[user_features_online_parity, *leakage_checks, *drift_checks],
        sensors=[online_sync_sensor(user_features_online), monitoring_sensor(skew_report)],
        jobs=[refresh_job, train_job],
        schedules=[
            hourly_refresh_schedule(
                refresh_job, raw_op=demo_raw_data.op.name if settings.demo_data else None, features_op=dbt_feature_models.op.name
            )
        ],
        resources={
            "warehouse": warehouse_for(settings),
            "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=_dbt_executable()),
            "online_store": online_store_for(settings),
            "model_store": model_store_for(settings),
            "served_log": served_log_for(settings),
        },
        # One process runs every step of a local run: no start-up cost per step, and one DuckDB writer at a time.
        executor=dg.in_process_executor if settings.env == "local" else dg.multiprocess_executor,
    )


defs = build_definitions(Settings.from_env())

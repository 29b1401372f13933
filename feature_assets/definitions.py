"""The only place that builds the Dagster Definitions: from a manifest, when asked (nothing is read at import)."""

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from feature_assets.alerts import alert_sensor
from feature_assets.assets.features import FEATURE_VIEWS_OP, DbtAssets, dbt_assets_for, dbt_model_key
from feature_assets.assets.models import model_assets
from feature_assets.assets.monitoring import served_models_asset, skew_report_assets
from feature_assets.assets.online import online_assets
from feature_assets.assets.raw import demo_raw_data, external_raw_tables, first_as_of_day
from feature_assets.assets.training import training_set_assets
from feature_assets.automation import check_refresh_fits_ttl, monitoring_sensor, online_sync_sensor, refresh_schedule
from feature_assets.project import dbt_project
from feature_assets.registry import FeatureView, Registry, load_registry
from feature_assets.resources.alert_channels import alert_channels_from_env
from feature_assets.resources.model_store import model_store_for
from feature_assets.resources.online import online_store_for
from feature_assets.resources.served_log import served_log_for
from feature_assets.resources.warehouse import warehouse_for
from feature_assets.settings import Settings

__all__ = ["build_definitions", "defs", "warehouse_for"]


def _dbt_executable() -> str:
    """The dbt next to this interpreter, so an unactivated virtualenv still finds it."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else shutil.which("dbt") or "dbt"


def _refresh_keys(registry: Registry, dbt: DbtAssets, raw: list, due: list[FeatureView]) -> set[dg.AssetKey]:
    """What an hourly run materializes for the due views: raw data (demo), every dbt model that is neither a
    feature view nor a label table (staging), the due views and the views they are built from."""
    specs = {spec.key: spec for assets_def in dbt for spec in assets_def.specs}
    view_keys = {dbt_model_key(view.name) for view in registry.views.values()}
    label_keys = {dbt_model_key(name) for name in registry.labels}
    keys = {key for key in specs if key not in view_keys | label_keys}
    todo = [dbt_model_key(view.name) for view in due]
    while todo:
        key = todo.pop()
        if key in specs and key not in keys:
            keys.add(key)
            todo.extend(dep.asset_key for dep in specs[key].deps)
    for item in raw:
        keys |= set(item.keys) if isinstance(item, dg.AssetsDefinition) else {item.key}
    return keys


def build_definitions(settings: Settings, manifest_path: Path | None = None) -> dg.Definitions:
    """Every pipeline piece is built from the registry of one manifest (default: the settings' dbt project's): per
    feature view its online snapshot, parity check and skew report; per model its training set, leakage check and
    model asset."""
    manifest_path = manifest_path or settings.dbt_manifest_path
    # Refuses to load on an invalid registry (e.g. a feature name that is not snake_case).
    registry = load_registry(manifest_path)
    # The as-of days begin where the history does: the declared day, or the later first day of the demo data.
    dbt = dbt_assets_for(registry, manifest_path, first_as_of_day(registry, settings))
    # Refuses to load if online keys would expire between two refreshes of a view.
    check_refresh_fits_ttl(registry.views.values())
    raw = [demo_raw_data] if settings.demo_data else external_raw_tables
    views = list(registry.views.values())
    refresh_selection = sorted(_refresh_keys(registry, dbt, raw, views))
    refresh_job = dg.define_asset_job(
        "refresh_features",
        selection=dg.AssetSelection.assets(*refresh_selection),
        description="Loads new raw rows (demo data) and appends the feature snapshots of the run's as-of day, or of "
        "one hour of it (config as_of_start = as_of_end; the hourly schedule's runs: the views due at that hour).",
    )
    online = [online_assets(view) for view in views]
    training_sets, leakage_checks = training_set_assets(registry)
    models = model_assets(registry)
    reports = [skew_report_assets(registry, view) for view in registry.read_views]
    report_assets = [report for report, _ in reports]
    served_models = served_models_asset(registry, report_assets)
    labels = [dbt_model_key(name) for name in registry.labels]
    train_job = dg.define_asset_job(
        "train_models",
        selection=dg.AssetSelection.assets(*labels, *training_sets, *models, *report_assets, served_models),
        description="Rebuilds labels and point-in-time training sets, trains every model, reports skew, and promotes "
        "the new models unless a drift check fails.",
    )
    # What the CLI's sync, skew and backfill commands run: named jobs, so those runs read as such in the UI.
    sync_job = dg.define_asset_job(
        "sync_online_store",
        selection=dg.AssetSelection.assets(*(asset for asset, _ in online)),
        description="Syncs every view's online snapshot and checks its parity (the online_sync sensor does this "
        "after each refresh).",
    )
    skew_job = dg.define_asset_job(
        "report_skew",
        selection=dg.AssetSelection.assets(*report_assets),
        description="Compares training and serving distributions for every view a model reads; drift checks alert.",
    )
    # Staging views included: on a fresh warehouse the feature views cannot build without them.
    view_and_staging_keys = sorted(key for assets_def in dbt for key in assets_def.keys if key not in set(labels))
    backfill_job = dg.define_asset_job(
        "backfill_features",
        selection=dg.AssetSelection.assets(*view_and_staging_keys),
        description="(Re)computes the feature snapshots of a range of as-of days (partitions) from the raw rows "
        "loaded.",
    )
    # Dagster's UI runs a selection of assets (an asset's page, the graph) under the first job, in code-point order,
    # that holds them all, and its implicit __ASSET_JOB sorts before every name that starts with a lowercase
    # letter: this job holds every asset and its capital sorts first, so such runs carry a name a person reads.
    selected_job = dg.define_asset_job(
        "Selected_assets",
        selection=dg.AssetSelection.all(),
        description="The assets a person selected and materialized from the UI (an asset's page, the asset graph). "
        "Its name begins with a capital so that Dagster's UI, which runs a selection under the first job in "
        "alphabetical order that holds it all, picks it over its implicit __ASSET_JOB.",
    )
    alert_channels = alert_channels_from_env()
    return dg.Definitions(
        assets=[
            *raw,
            *dbt,
            *(asset for asset, _ in online),
            *training_sets,
            *models,
            *report_assets,
            served_models,
        ],
        asset_checks=[
            *(check for _, check in online),
            *leakage_checks,
            *(check for _, checks in reports for check in checks),
        ],
        sensors=[
            online_sync_sensor([asset for asset, _ in online]),
            monitoring_sensor(report_assets),
            alert_sensor(alert_channels),
        ],
        jobs=[refresh_job, train_job, sync_job, skew_job, backfill_job, selected_job],
        schedules=[
            refresh_schedule(
                refresh_job,
                views,
                lambda due: _refresh_keys(registry, dbt, raw, due),
                raw_op=demo_raw_data.op.name if settings.demo_data else None,
                features_op=FEATURE_VIEWS_OP,
            )
        ],
        resources={
            "warehouse": warehouse_for(settings),
            "dbt": DbtCliResource(project_dir=dbt_project(settings.dbt_project_dir), dbt_executable=_dbt_executable()),
            "online_store": online_store_for(settings),
            "model_store": model_store_for(settings),
            "served_log": served_log_for(settings),
            "alert_channels": alert_channels,
        },
        # One process runs every step of a local run: no start-up cost per step, and one DuckDB writer at a time.
        executor=dg.in_process_executor if settings.env == "local" else dg.multiprocess_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location (`dagster dev`, workspace.yaml): built when Dagster loads it, from the environment."""
    settings = Settings.from_env()
    # Re-parses the dbt project under `dagster dev` only, so edits to it show on reload; elsewhere it does nothing.
    dbt_project(settings.dbt_project_dir).prepare_if_dev()
    return build_definitions(settings)

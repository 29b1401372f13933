"""The command line's Dagster runs: the local instance, a job run in this process, and what its result says.

The CLI waits for each run and prints its result; the run is recorded on the instance, so the UI shows it too.
"""

import fcntl
import os
import re
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from feature_assets.as_of import format_hour
from feature_assets.errors import ConfigError, FeatureStoreError
from feature_assets.registry import VALIDATION_FLOOR_CHECK
from feature_assets.settings import Settings

if TYPE_CHECKING:
    from feature_assets.registry import Registry

__all__ = [
    "build_snapshots",
    "dagster_home",
    "dagster_instance",
    "execute_job",
    "fail_runs_of_dead_commands",
    "first_as_of_day",
    "sync_online",
    "train",
]

_DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# Runs started here print nothing of their own: failures are reported by cause, the full logs are in the UI.
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# Our errors' messages say what went wrong by themselves; their class name says nothing to a user.
_OUR_ERROR_CLASS = re.compile(r"^feature_assets\.[\w.]+: ")


def dagster_home(settings: Settings) -> Path:
    """The instance folder: $DAGSTER_HOME if set, else FEATURE_STORE_HOME/dagster seeded with
    deploy/<env>/dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = settings.home / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    # Replaced, not rewritten in place: another command may be reading it.
    with tempfile.NamedTemporaryFile("wb", dir=home, delete=False) as copy:
        copy.write((_DEPLOY / settings.env / "dagster.yaml").read_bytes())
    os.replace(copy.name, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def dagster_instance(settings: Settings):
    """The Dagster instance, opened under a lock on its folder: the first open creates its SQLite storage, and two
    commands creating it at once corrupt its schema record and lose a run. Opening an existing one is safe."""
    import dagster as dg

    home = dagster_home(settings)
    with open(home / ".open.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return dg.DagsterInstance.get()


def _running_folder(settings: Settings) -> Path:
    """Where each run of a command holds its lock file while its process lives."""
    return dagster_home(settings) / "running"


def fail_runs_of_dead_commands(settings: Settings) -> None:
    """Marks failed the runs whose command was killed (or the machine restarted) and gives back their pool slots, so
    the UI does not show them running (each command that runs a job does this before it starts)."""
    from feature_assets.job_runs import fail_runs_of_dead_processes

    with dagster_instance(settings) as instance:
        fail_runs_of_dead_processes(instance, _running_folder(settings))


def execute_job(
    settings: Settings,
    what: str,
    run_config: dict,
    *,
    job_name: str,
    assets: tuple[str, ...] = (),
    tolerate_failed_checks: bool = False,
    tags: dict[str, str] | None = None,
):
    """Runs a job (or a subset of its assets) in this process on the instance, raising on failure (a failed
    blocking check included, unless tolerated: then the caller reports it)."""
    from feature_assets.definitions import build_definitions
    from feature_assets.job_runs import run_in_this_process

    instance = dagster_instance(settings)
    # Tagged so a person finds the command's runs in the UI (Runs, filter by tag).
    tags = {"featurestore/command": what, **(tags or {})}
    result = run_in_this_process(
        instance,
        build_definitions(settings),
        job_name,
        {**run_config, **_QUIET},
        tags,
        _running_folder(settings),
        assets,
    )
    failed_checks = [check for check in result.get_asset_check_evaluations() if not check.passed]
    if not result.success and not (tolerate_failed_checks and failed_checks):
        # A failed check says what it found (the parity check names the entities); a step failure says why it stopped.
        causes = [
            f"{c.asset_key.to_user_string()} {c.check_name}: {c.description}" for c in failed_checks if c.description
        ]
        causes += [_root_cause(e) for e in result.all_events if e.is_step_failure and not causes]
        fallback = f"run {result.run_id} failed; its events are in the Dagster UI (featurestore dev)"
        raise FeatureStoreError(f"the {what} failed: " + "; ".join(causes or [fallback]))
    return result


def _root_cause(event) -> str:
    """The innermost error of a failed step (e.g. a ConfigError naming the bad value), not Dagster's wrappers; our
    own errors without their class name, which says nothing to a user."""
    error = event.step_failure_data.error
    while error.cause is not None:
        error = error.cause
    return f"{event.step_key}: {_OUR_ERROR_CLASS.sub('', error.message.strip())}"


def build_snapshots(
    settings: Settings,
    what: str,
    job: str,
    days: tuple[date, date],
    hour: datetime | None = None,
    raw: dict | None = None,
):
    """Runs the refresh or backfill job over as-of days (its partitions), or over one hour of one day; the run shows
    in the UI with its partitions and is tagged featurestore/as_of (e.g. 2026-11-01 .. 2026-12-01)."""
    from feature_assets.automation import as_of_days_tags

    first_day = first_as_of_day(settings)
    if days[0] < first_day:
        raise ConfigError(
            f"the as-of days (the feature views' partitions) begin {first_day}, where their history does: {days[0]} is "
            "before them"
        )
    ops = (
        {"dbt_feature_views": {"config": {"as_of_start": format_hour(hour), "as_of_end": format_hour(hour)}}}
        if hour
        else {}
    )
    if raw and settings.demo_data:
        ops["demo_raw_data"] = {"config": raw}
    tags = {**as_of_days_tags(*days), "featurestore/as_of": format_hour(hour) if hour else f"{days[0]} .. {days[1]}"}
    result = execute_job(settings, what, {"ops": ops}, job_name=job, tags=tags)
    if raw and settings.demo_data:
        # The definitions built from now on (the UI's among them) begin the as-of days where the demo data does.
        from feature_assets.assets.raw import record_demo_first_day
        from feature_assets.backends import open_warehouse

        record_demo_first_day(settings.home, open_warehouse(settings))
    return result


def first_as_of_day(settings: Settings) -> date:
    """The first as-of day (partition) of the feature views in this store."""
    from feature_assets.assets.raw import first_as_of_day as first_of
    from feature_assets.registry import load_registry

    return first_of(load_registry(settings.dbt_manifest_path), settings)


def _online_assets(registry: "Registry") -> list[str]:
    from feature_assets.assets.online import online_asset_name

    return [online_asset_name(view) for view in registry.views.values()]


def sync_online(settings: Settings, full: bool = False) -> None:
    """Runs every view's online sync and parity check (what the online_sync sensor triggers after a refresh)."""
    from feature_assets.registry import load_registry

    names = _online_assets(load_registry(settings.dbt_manifest_path))
    run_config = {"ops": {name: {"config": {"full_resync": full}} for name in names}}
    result = execute_job(settings, "online sync", run_config, job_name="sync_online_store")
    print()
    for event in result.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        print(
            f"{event.asset_key.to_user_string()} ({meta['store']}, keys {meta['key_pattern']}): "
            f"{meta['mode']} sync wrote {meta['rows_written']} rows in {meta['seconds']} s "
            f"({meta['rows_per_second']} rows/s); {meta['keys_in_store']} readable"
        )
    for check in result.get_asset_check_evaluations():
        checked = check.metadata.get("entities_checked")
        print(
            f"{check.asset_key.to_user_string()} {check.check_name}: {'passed' if check.passed else 'FAILED'} "
            f"({checked.value if checked else 0} entities compared)"
        )


def train(settings: Settings) -> bool:
    """Runs the train_models job (labels, point-in-time training sets with leakage checks, models, skew reports,
    promotion); True when the new versions were promoted."""
    result = execute_job(settings, "training run", {}, job_name="train_models", tolerate_failed_checks=True)
    print("\nTraining:")
    for event in result.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        name = event.asset_key.to_user_string()
        if "version" in meta:
            metrics = ", ".join(
                f"{k} {meta[k]}"
                for k in ("auc", "positive_rate", "mae", "mae_of_mean_baseline", "mae_skill")
                if k in meta
            )
            print(
                f"  {name}: version {meta['version']}, {metrics} "
                f"({meta['rows_fit']} fit / {meta['rows_validation']} validation rows)"
            )
        elif name == "served_models":
            versions = {k.removesuffix("_version"): v for k, v in meta.items() if k.endswith("_version")}
            print("  served_models: " + ", ".join(f"{model} {version}" for model, version in versions.items()))
            if "held_back" in meta:
                print(f"  served_models held back {meta['held_back']}")
        elif "drifted_features" in meta and "report" in meta:
            print(f"  {name}: drifted features: {meta['drifted_features']}")
        elif "rows_with_features" in meta:
            print(
                f"  {name}: {meta['rows']} rows, {meta['rows_with_features']} with features of every view, "
                f"built in {meta['seconds']} s"
            )
    for check in result.get_asset_check_evaluations():
        rows = check.metadata.get("rows_checked")
        drifted = check.metadata.get("drifted_features")
        if check.check_name == VALIDATION_FLOOR_CHECK:
            detail = check.description or ""
        elif rows is not None:
            detail = f"{rows.value} rows recomputed from the feature history"
        elif drifted is not None:
            detail = f"drifted: {drifted.value}"
        else:
            continue  # the label tables' dbt tests
        print(
            f"  {check.asset_key.to_user_string()} {check.check_name}: "
            f"{'passed' if check.passed else 'FAILED'} ({detail})"
        )
    promoted = any(e.asset_key.to_user_string() == "served_models" for e in result.get_asset_materialization_events())
    for event in result.get_asset_observation_events():
        held_back = event.asset_observation_data.asset_observation.metadata.get("held_back")
        if held_back:
            print(f"  served_models: {held_back.value}")
    return promoted

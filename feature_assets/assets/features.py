"""The feature history: the dbt project's models as assets, with dbt tests as asset checks."""

import json
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DbtCliInvocation,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)
from dagster_dbt.asset_utils import default_description_fn
from pydantic import Field

from feature_assets.as_of import current_hour, format_hour, parse_hour
from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.automation import TICK, as_of_days, day_key, due_views, view_freshness
from feature_assets.errors import ConfigError, DbtBuildError
from feature_assets.registry import FeatureView, Registry
from feature_assets.settings import validate_identifier
from feature_assets.warehouses import Warehouse

__all__ = [
    "FEATURE_VIEWS_OP",
    "AsOfConfig",
    "DbtAssets",
    "FeatureTranslator",
    "dbt_assets_for",
    "dbt_model_key",
    "with_environment",
]

# The op of the feature views' dbt assets: run config and schedules name it.
FEATURE_VIEWS_OP = "dbt_feature_views"


class FeatureTranslator(DagsterDbtTranslator):
    """Label tables join the `training` group, other dbt models the `features` group; each feature view carries
    the freshness policy of its own refresh cadence. Descriptions are the YAML's, without the raw SQL (the code is
    one click away in the repository), and every dbt test check says in words what it asserts."""

    def __init__(self, registry: Registry):
        super().__init__()
        self.registry = registry

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        # A model's key is its name, so assets built from the registry can depend on it without the dbt assets.
        if dbt_resource_props["resource_type"] == "model":
            return dbt_model_key(dbt_resource_props["name"])
        return super().get_asset_key(dbt_resource_props)

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        return default_description_fn(dbt_resource_props, display_raw_sql=False)

    def get_asset_check_spec(
        self, asset_spec: dg.AssetSpec, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None or spec.description:
            return spec
        return dg.AssetCheckSpec(
            name=spec.name,
            asset=spec.asset_key,
            description=test_description(manifest["nodes"][unique_id]),
            additional_deps=spec.additional_deps,
            blocking=spec.blocking,
            metadata=spec.metadata,
        )

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest["nodes"].get(unique_id)
        if node is None or node["resource_type"] != "model":
            return spec
        name = node["name"]
        spec = spec.replace_attributes(group_name="training" if name in self.registry.labels else "features")
        if name in self.registry.views:
            spec = spec.replace_attributes(freshness_policy=view_freshness(self.registry.views[name]))
        return spec


_TEST_WORDS = {
    "not_null": "{column_name} is never null",
    "unique": "{column_name} is unique",
    "unique_combination": "one row per {columns}",
    "accepted_values": "{column_name} is one of {values}",
    "relationships": "every {column_name} exists in {to}.{field}",
    "hour_boundary": "{column_name} is an hour boundary",
    "not_later_than": "{column_name} is not later than {bound}",
    "non_negative": "{column_name} is never negative",
    "finite": "{column_name} is a finite number (no NaN or infinity)",
}


def test_description(test: Mapping[str, Any]) -> str:
    """A dbt test's assertion in words; a test of severity error blocks what reads the model."""
    if test.get("description"):
        return test["description"]
    metadata = test.get("test_metadata") or {}
    arguments = {
        name: ", ".join(map(str, value)) if isinstance(value, list) else re.sub(r"ref\('(\w+)'\)", r"\1", str(value))
        for name, value in (metadata.get("kwargs") or {}).items()
    }
    try:
        words = _TEST_WORDS[metadata["name"]].format(**arguments)
    except KeyError:
        words = f"dbt test {test['name']}"
    blocking = test.get("config", {}).get("severity", "ERROR").upper() == "ERROR"
    return f"dbt test: {words}" + ("; a failure blocks what reads this model" if blocking else "")


# dbt_executable for one build: dbt's profile reads the warehouse's settings (the PostgreSQL password among them) from
# the environment, and dagster-dbt 0.29's DbtCliResource.cli starts dbt with a copy of this process's os.environ and
# no way to add to it. Setting os.environ would hand the password to every thread and process started meanwhile; this
# launcher, written into the build's private folder (mkdtemp: mode 0700), reads the settings from a file beside it
# (mode 0600), deletes it, and replaces itself with dbt, so they reach dbt's environment only.
_LAUNCHER = """#!{python}
import json, os, sys
settings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dbt_env.json")
if sys.argv[1:] != ["--version"] and os.path.exists(settings):
    with open(settings) as file:
        os.environ.update(json.load(file))
    os.remove(settings)
os.execv({dbt!r}, [{dbt!r}, *sys.argv[1:]])
"""


def with_environment(dbt: DbtCliResource, env: Mapping[str, str], folder: Path) -> DbtCliResource:
    """dbt as configured, started with env added to its own process's environment (see _LAUNCHER). folder must be
    private to this build: the launcher and the settings file are written there."""
    executable = shutil.which(dbt.dbt_executable) or dbt.dbt_executable
    launcher = folder / "dbt"
    launcher.write_text(_LAUNCHER.format(python=sys.executable, dbt=executable))
    launcher.chmod(stat.S_IRWXU)
    settings = folder / "dbt_env.json"
    settings.touch(mode=stat.S_IRUSR | stat.S_IWUSR)
    settings.write_text(json.dumps(dict(env)))
    return DbtCliResource(
        project_dir=dbt.project_dir,
        global_config_flags=dbt.global_config_flags,
        profiles_dir=dbt.profiles_dir,
        profile=dbt.profile,
        # Also read by the adapter dagster-dbt opens in this process, whose environment lacks the target's name.
        target=dbt.target or env.get("FEATURE_STORE_DBT_TARGET"),
        dbt_executable=str(launcher),
        state_path=dbt.state_path,
    )


def _build(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    warehouse: Warehouse,
    registry: Registry,
    as_of: Mapping[str, Any] | None,
) -> Iterator:
    """Builds and tests the selected dbt models (with the as-of times as dbt vars, for feature views), with each
    built table's row count."""
    target_path = Path(tempfile.mkdtemp(prefix="dbt-run-"))
    args = ["build", "--vars", json.dumps(as_of)] if as_of else ["build"]
    try:
        invocation = with_environment(dbt, warehouse.dbt_env(), target_path).cli(
            args, context=context, target_path=target_path, raise_on_error=False
        )
        # Counted once dbt has exited: the embedded DuckDB file takes one writer at a time.
        events = list(invocation.stream())
    finally:
        (target_path / "dbt_env.json").unlink(missing_ok=True)  # the launcher deletes it, unless dbt never started
    yield from _with_row_counts(context, events, invocation.manifest, warehouse, registry, as_of)
    if not invocation.is_successful():
        raise DbtBuildError(_failure(invocation, target_path))
    # A failed build keeps its folder: the error names the dbt.log in it.
    shutil.rmtree(target_path, ignore_errors=True)


class AsOfConfig(dg.Config):
    """Which as-of times of the run's days (its partitions) to compute; by default all of them up to now."""

    as_of_start: str | None = Field(
        default=None,
        description="First as-of hour (UTC, ISO) within the run's days; default: the first day's midnight.",
    )
    as_of_end: str | None = Field(
        default=None,
        description="Last as-of hour (UTC, ISO) within the run's days; default: the last day's last hour, or the "
        "current hour if today.",
    )

    def hours(self, days: dg.TimeWindow) -> tuple[datetime, datetime]:
        first_day, after = (moment.astimezone(UTC).replace(tzinfo=None) for moment in (days.start, days.end))
        last = parse_hour(self.as_of_end, "as_of_end") if self.as_of_end else min(after - TICK, current_hour())
        first = parse_hour(self.as_of_start, "as_of_start") if self.as_of_start else first_day
        for name, hour in (("as_of_start", first), ("as_of_end", last)):
            if not first_day <= hour < after:
                raise ConfigError(
                    f"{name} {format_hour(hour)} is not within the run's as-of days "
                    f"{first_day.date()} .. {(after - TICK).date()}"
                )
        if first > last:
            raise ConfigError(f"as_of_start {format_hour(first)} is after as_of_end {format_hour(last)}")
        return first, last


class DbtAssets(NamedTuple):
    """The dbt project's models as two asset definitions: the feature views, partitioned by as-of day, and the rest
    (staging views, label tables)."""

    models: dg.AssetsDefinition
    feature_views: dg.AssetsDefinition


def dbt_assets_for(registry: Registry, manifest_path: Path, first_day: date | None = None) -> DbtAssets:
    """The dbt assets of the manifest the registry was read from; the feature views' as-of days begin on first_day
    (default: the views' declared history_starts)."""
    translator = FeatureTranslator(registry)

    # No project= here: it only adds code references, and its metadata shows as "[DbtProject] (unserializable)".
    @dbt_assets(
        manifest=manifest_path,
        exclude=" ".join(registry.views) or None,
        name="dbt_models",
        dagster_dbt_translator=translator,
        pool=WAREHOUSE_POOL,
    )
    def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: dg.ResourceParam[Warehouse]):
        """Builds and tests the dbt models that are not feature views: staging views and label tables."""
        yield from _build(context, dbt, warehouse, registry, None)

    @dbt_assets(
        manifest=manifest_path,
        select=" ".join(registry.views),
        name=FEATURE_VIEWS_OP,
        partitions_def=as_of_days(first_day or registry.history_starts),
        # A backfill over many days is one dbt run: one incremental insert of all their as-of times.
        backfill_policy=dg.BackfillPolicy.single_run(),
        dagster_dbt_translator=translator,
        pool=WAREHOUSE_POOL,
    )
    def dbt_feature_views(
        context: dg.AssetExecutionContext,
        dbt: DbtCliResource,
        warehouse: dg.ResourceParam[Warehouse],
        config: AsOfConfig,
    ):
        """Appends the feature snapshots of the run's as-of days (all their hours of each view's cadence up to now,
        or the configured ones) and tests them."""
        first, last = config.hours(context.partition_time_window)
        as_of = {"as_of_start": format_hour(first), "as_of_end": format_hour(last), "cadence_hours": 1}
        yield from _build(context, dbt, warehouse, registry, as_of)

    return DbtAssets(dbt_models, dbt_feature_views)


def _with_row_counts(
    context: dg.AssetExecutionContext,
    events: list,
    manifest: Mapping[str, Any],
    warehouse: Warehouse,
    registry: Registry,
    as_of: Mapping[str, Any] | None,
) -> Iterator:
    """Each built table's row count (dbt views are not counted: that would run their query). A feature view's
    materialization of each as-of day (partition) gets that day's figures instead; the run's totals are logged once."""
    tables = {
        id(event): node
        for event in events
        if isinstance(event, dg.Output)
        and (node := manifest["nodes"].get(event.metadata["unique_id"].text))
        and node["config"]["materialized"] != "view"
    }
    if not tables:  # e.g. dbt failed before building anything: its error is the one to report
        yield from events
        return
    with warehouse.connect() as con:
        for event in events:
            node = tables.get(id(event))
            if node is None:
                yield event
                continue
            view = registry.views.get(node["name"])
            if view is not None and as_of is not None:
                days = _days_of_view(warehouse, con, view, as_of)
                for day, figures in days.items():
                    context.add_asset_metadata(figures, asset_key=dbt_model_key(view.name), partition_key=day)
                context.log.info(_run_summary(view, as_of, days))
                yield event
                continue
            counts = warehouse.fetch(
                con, f"select count(*) as row_count from {validate_identifier(node['name'], 'dbt model')}"
            )
            # dagster/row_count is the key the UI shows as the row count and plots over materializations.
            yield event.with_metadata({**event.metadata, "dagster/row_count": int(counts["row_count"].iloc[0])})


def _days_of_view(
    warehouse: Warehouse, con: Any, view: FeatureView, as_of: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each as-of day's figures after the run: its rows and snapshots (what the partition holds), and what became of
    the run's as-of times of that day on the view's cadence: kept, or thinned by the retention (dbt_project.yml keeps
    only the first snapshot of older days)."""
    first, last = (datetime.fromisoformat(as_of[name]) for name in ("as_of_start", "as_of_end"))
    after = datetime.combine(last.date(), datetime.min.time()) + timedelta(days=1)
    ts = view.timestamp
    rows = warehouse.fetch(
        con,
        f"select cast({ts} as date) as as_of_day, count(*) as row_count, count(distinct {ts}) as snapshots,"
        f" count(distinct case when {ts} between ? and ? then {ts} end) as kept, max({ts}) as newest"
        f" from {view.name} where {ts} >= ? and {ts} < ? group by cast({ts} as date)",
        [first, last, datetime.combine(first.date(), datetime.min.time()), after],
    )
    found = {day_key(day): row for day, row in zip(rows["as_of_day"], rows.itertuples(), strict=True)}
    days: dict[str, dict[str, Any]] = {}
    day = first.date()
    while day <= last.date():
        hours = [h for n in range(24) if first <= (h := datetime.combine(day, datetime.min.time()) + TICK * n) <= last]
        due = [hour for hour in hours if due_views([view], hour)]
        row = found.get(day_key(day))
        kept = int(row.kept) if row is not None else 0
        days[day_key(day)] = {
            # dagster/row_count is the key the UI shows as the row count and plots over the partitions' events.
            "dagster/row_count": int(row.row_count) if row is not None else 0,
            "snapshots": int(row.snapshots) if row is not None else 0,
            "newest_snapshot": str(row.newest) if row is not None else "none",
            "as_of_times": f"{format_hour(hours[0])} .. {format_hour(hours[-1])}: {len(due)} of the view's cadence",
            "as_of_times_kept": kept,
            "as_of_times_thinned": len(due) - kept,
        }
        day += timedelta(days=1)
    return days


def _run_summary(view: FeatureView, as_of: Mapping[str, Any], days: Mapping[str, Mapping[str, Any]]) -> str:
    """The run's totals in words, said once (each day's own figures are on its partition's materialization)."""
    first, last = (datetime.fromisoformat(as_of[name]) for name in ("as_of_start", "as_of_end"))
    total = {key: sum(figures[key] for figures in days.values()) for key in ("dagster/row_count", "snapshots")}
    due = sum(figures["as_of_times_kept"] + figures["as_of_times_thinned"] for figures in days.values())
    thinned = sum(figures["as_of_times_thinned"] for figures in days.values())
    span = f"{len(days)} day" + ("s" if len(days) != 1 else "")
    summary = (
        f"{view.name}: built {span} ({day_key(first)} .. {day_key(last)}): {total['dagster/row_count']:,} rows, "
        f"{total['snapshots']:,} snapshots; {due:,} as-of times on the view's cadence from {format_hour(first)} to "
        f"{format_hour(last)}"
    )
    if thinned:
        summary += f", of which {thinned:,} are not kept (days past the hourly retention keep only their first hour)"
    return summary + "."


def _failure(invocation: DbtCliInvocation, target_path: Path) -> str:
    """What went wrong and where the whole log is. The reasons: the first few distinct errors of dbt's nodes (each
    its heading and the database's message; SQL context follows), or, when dbt failed before running any (e.g.
    the DuckDB file locked), the errors dbt logged."""
    results = target_path / "run_results.json"
    failed = json.loads(results.read_text())["results"] if results.exists() else []
    reasons = [
        _reason(result["message"]) for result in failed if result["status"] in ("error", "fail") and result["message"]
    ]
    if not reasons:
        logged = str(invocation.get_error()).partition("Errors parsed from dbt logs:")[2]
        logged = _ANSI.sub("", logged).partition("Traceback (most recent call last):")[0]  # dbt's own, not ours
        reasons = [" ".join(logged.split())] if logged.strip() else []
    reasons = list(dict.fromkeys(reasons))
    shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    code = invocation.process.returncode
    return f"dbt build exited with code {code}{': ' + shown if shown else ''} (dbt's log: {target_path / 'dbt.log'})"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Headings dbt nests above the database's own message (Spark's comes two levels down).
_HEADINGS = ("Runtime Error", "Database Error", "Compilation Error")


def _reason(message: str) -> str:
    """A failed node's heading and the database's message."""
    heading, *rest = [line.strip() for line in message.splitlines() if line.strip()]
    detail = [line for line in rest if line not in _HEADINGS][:1]
    return ": ".join([heading, *detail])


def dbt_model_key(name: str) -> dg.AssetKey:
    """The asset key of a dbt model of the project: its name (FeatureTranslator.get_asset_key)."""
    return dg.AssetKey(name)

"""When things refresh: the as-of days (the feature views' partitions), the hourly schedule (each view on its own
cadence) and the freshness policies it is measured against."""

from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta

import dagster as dg

from feature_assets.as_of import format_hour
from feature_assets.errors import ConfigError
from feature_assets.registry import FeatureView

__all__ = [
    "ONLINE_SYNC_AUTOMATION",
    "REPAIR_AFTER_FAILED_PARITY",
    "SKEW_REPORT_AUTOMATION",
    "SKEW_REPORT_FRESHNESS",
    "SYNC_WHEN_FEATURES_PASS_CHECKS",
    "TICK",
    "as_of_days",
    "as_of_days_tags",
    "check_refresh_fits_ttl",
    "day_key",
    "due_views",
    "monitoring_sensor",
    "online_sync_sensor",
    "refresh_schedule",
    "view_freshness",
]

# The schedule ticks every hour; each view is refreshed on the ticks that fall on its own cadence.
TICK = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1)


def as_of_days(first: date) -> dg.DailyPartitionsDefinition:
    """The feature views' partitions: as-of days (UTC) from the first day of their history.

    A partition holds the day's snapshots, every hour of the view's cadence for the newest days, and only the first of
    the day once the retention thins them (dbt_project.yml), so no partition shown as materialized is empty. Hourly
    partitions would leave most of them empty after the thinning, and cost Dagster an event per hour per view on each
    backfill. end_offset=1: today exists, from its first hour; later days do not. A day before the history's first
    one is no partition at all: it has no raw data, and the Materialize dialog does not offer it."""
    return dg.DailyPartitionsDefinition(start_date=day_key(first), timezone="UTC", end_offset=1)


def day_key(hour: date) -> str:
    """The partition (as-of day) of an as-of time."""
    return hour.strftime("%Y-%m-%d")


def as_of_days_tags(first: datetime | date, last: datetime | date) -> dict[str, str]:
    """The tags of one run over the as-of days first .. last, as Dagster's own single-run backfills tag theirs."""
    return {"dagster/asset_partition_range_start": day_key(first), "dagster/asset_partition_range_end": day_key(last)}


def view_freshness(view: FeatureView) -> dg.FreshnessPolicy:
    """A view (and its online snapshot) that misses one refresh warns; missing three fails."""
    slack = timedelta(minutes=30)
    return dg.FreshnessPolicy.time_window(
        fail_window=3 * view.refresh_interval + slack, warn_window=view.refresh_interval + slack
    )


def due_views(views: Iterable[FeatureView], hour: datetime) -> list[FeatureView]:
    """The views whose cadence falls on this hour (hours since the epoch divisible by the cadence)."""
    return [view for view in views if (hour - _EPOCH) % view.refresh_interval == timedelta(0)]


def refresh_schedule(
    job,
    views: list[FeatureView],
    keys_for: Callable[[list[FeatureView]], set[dg.AssetKey]],
    raw_op: str | None,
    features_op: str,
) -> dg.ScheduleDefinition:
    """Each tick loads raw data up to, and snapshots the due views at, the tick's own hour (not the wall clock).
    keys_for(due views) gives the assets the run materializes."""

    cadences = ", ".join(f"{view.name} every {view.refresh_interval / TICK:g} h" for view in views)

    # Running by default: a store left open under `dagster dev` (or the daemon in production) stays fresh.
    @dg.schedule(
        name="hourly_refresh",
        cron_schedule="0 * * * *",
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every hour on the hour (UTC), one run of {job.name} for the feature views due at that hour, each "
        f"on its own cadence ({cadences}): "
        + ("loads the raw rows up to the hour, then " if raw_op else "")
        + "appends the views' snapshots as of the hour, with the staging models and dbt tests they need, in the "
        "partition of its day. Hours no view is due are skipped, saying so. The online_sync sensor then syncs what "
        "passed its tests.",
    )
    def hourly_refresh(context: dg.ScheduleEvaluationContext):
        moment = context.scheduled_execution_time.replace(tzinfo=None, minute=0, second=0, microsecond=0)
        due = due_views(views, moment)
        if not due:
            return dg.SkipReason(f"no feature view is due at {format_hour(moment)}")
        hour = format_hour(moment)
        ops = {features_op: {"config": {"as_of_start": hour, "as_of_end": hour}}}
        if raw_op:
            ops[raw_op] = {"config": {"anchor": hour}}
        return dg.RunRequest(
            run_key=hour,
            partition_key=day_key(moment),
            run_config={"ops": ops},
            asset_selection=sorted(keys_for(due)),
            tags={"views": ",".join(v.name for v in due)},
        )

    return hourly_refresh


# dbt materializes a view before its tests run, and a plain asset sensor or eager() fires on the
# materialization alone: neither waits for blocking checks, which only stop what runs after them in the same run.
# dbt tests of severity error are blocking checks in dagster-dbt, so requiring them to pass keeps data that failed
# its tests out of the online store; in_progress in eager() waits for the dbt run, tests included, to end.
SYNC_WHEN_FEATURES_PASS_CHECKS = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager, once upstream blocking checks passed")


# A failed parity check has asked the store for a full sync (see assets/online.py): run it once, now.
REPAIR_AFTER_FAILED_PARITY = (
    dg.AutomationCondition.any_checks_match(dg.AutomationCondition.check_failed()).newly_true()
    & ~dg.AutomationCondition.in_progress()
).with_label("once its parity check failed (the repair)")


ONLINE_SYNC_AUTOMATION = (SYNC_WHEN_FEATURES_PASS_CHECKS | REPAIR_AFTER_FAILED_PARITY).with_label(
    "eager once upstream blocking checks passed, and once after a failed parity check"
)


def online_sync_sensor(online_assets: list[dg.AssetsDefinition]) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the syncs' automation condition; running by default so a materialization anywhere (schedule,
    UI, backfill) reaches the online store whenever the daemon runs."""
    names = ", ".join(asset.key.to_user_string() for asset in online_assets)
    return dg.AutomationConditionSensorDefinition(
        "online_sync",
        target=dg.AssetSelection.assets(*online_assets),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Watches the feature views. When a view has new snapshots that passed its blocking dbt tests, "
        f"it runs that view's online sync ({names}): the newest snapshot of each entity to the online store, then "
        "the parity check; after a failed parity check, one full sync repairs the store. Evaluated every 30 s while "
        "the daemon runs (dagster dev starts one).",
    )


def check_refresh_fits_ttl(views: Iterable[FeatureView]) -> None:
    """Online keys live until their snapshot's time + the view's TTL. With a refresh slower than TTL/2, a single
    late or failed run lets every key expire before the next sync writes a newer snapshot."""
    hours = timedelta(hours=1)
    for view in views:
        if view.refresh_interval % TICK or timedelta(days=1) % view.refresh_interval:
            raise ConfigError(
                f"{view.name}: refresh_hours must be a whole number of hours that divides a day (1, 2, 3, 4, 6, 8, 12 "
                f"or 24), got {view.refresh_interval / hours:g}"
            )
        if view.refresh_interval > view.online_ttl / 2:
            raise ConfigError(
                f"the refresh interval of {view.name} ({view.refresh_interval / hours:g} h) is more than half its "
                "online TTL "
                f"({view.online_ttl / hours:g} h), so online keys would expire between syncs; set online_ttl_hours "
                f"to at least {2 * view.refresh_interval / hours:g} or refresh_hours to at most "
                f"{view.online_ttl / hours / 2:g}"
            )


# The skew report runs after each online sync (and training-set rebuild), and daily even when nothing upstream
# changed: the served vectors it compares keep arriving.
SKEW_REPORT_AUTOMATION = (
    dg.AutomationCondition.eager()
    | (dg.AutomationCondition.cron_tick_passed("0 6 * * *", "UTC") & ~dg.AutomationCondition.in_progress())
).with_label("after each online sync or training set, and daily at 06:00 UTC")

# A report older than a day and a bit means monitoring itself has stopped: the UI shows it.
SKEW_REPORT_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=49), warn_window=timedelta(hours=25))


def monitoring_sensor(report_assets: list[dg.AssetsDefinition]) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the skew reports' automation condition; running by default, like the online sync's."""
    names = ", ".join(asset.key.to_user_string() for asset in report_assets)
    return dg.AutomationConditionSensorDefinition(
        "skew_monitoring",
        target=dg.AssetSelection.assets(*report_assets),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description=f"Runs the skew reports ({names}) after each online sync or training set rebuild, and daily at "
        "06:00 UTC as served vectors keep arriving; their drift checks fail on a drift error (which holds back "
        "promotion and alerts). Evaluated every 60 s while the daemon runs.",
    )

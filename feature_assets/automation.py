"""When things refresh: the hourly schedule and the freshness policies it is measured against."""

from collections.abc import Iterable
from datetime import timedelta

import dagster as dg

from feature_assets.as_of import format_hour
from feature_assets.errors import ConfigError
from feature_assets.registry import FeatureView

__all__ = [
    "REFRESH_INTERVAL",
    "USER_FEATURES_FRESHNESS",
    "ONLINE_FRESHNESS",
    "SYNC_WHEN_FEATURES_PASS_CHECKS",
    "hourly_refresh_schedule",
    "online_sync_sensor",
    "check_refresh_fits_ttl",
    "SKEW_REPORT_AUTOMATION",
    "SKEW_REPORT_FRESHNESS",
    "monitoring_sensor",
]

REFRESH_INTERVAL = timedelta(hours=1)

# An hourly refresh that misses one run warns; missing three fails.
USER_FEATURES_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=3 * REFRESH_INTERVAL + timedelta(minutes=30), warn_window=REFRESH_INTERVAL + timedelta(minutes=30)
)


def hourly_refresh_schedule(job, raw_op: str | None, features_op: str):
    """Each tick loads raw data up to, and snapshots features at, the tick's own hour (not the wall clock)."""

    @dg.schedule(name="hourly_refresh", cron_schedule="0 * * * *", job=job, execution_timezone="UTC")
    def hourly_refresh(context: dg.ScheduleEvaluationContext):
        hour = format_hour(context.scheduled_execution_time.replace(tzinfo=None, minute=0, second=0, microsecond=0))
        ops = {features_op: {"config": {"as_of_end": hour}}}
        if raw_op:
            ops[raw_op] = {"config": {"anchor": hour}}
        return dg.RunRequest(run_key=hour, run_config={"ops": ops})

    return hourly_refresh


# The online snapshot follows user_features: same windows (the sync runs right after each refresh).
ONLINE_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=3 * REFRESH_INTERVAL + timedelta(minutes=30), warn_window=REFRESH_INTERVAL + timedelta(minutes=30)
)

# dbt materializes user_features before its tests run, and a plain asset sensor or eager() fires on the
# materialization alone (STACK.md G9). dbt tests of severity error are blocking checks in dagster-dbt, so
# requiring them to pass keeps data that failed its tests out of the online store; in_progress in eager()
# waits for the dbt run, tests included, to end.
SYNC_WHEN_FEATURES_PASS_CHECKS = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager, once upstream blocking checks passed")


def online_sync_sensor(online_asset) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the sync's automation condition; running by default so a materialization anywhere (schedule,
    UI, backfill) reaches the online store whenever the daemon runs."""
    return dg.AutomationConditionSensorDefinition(
        "online_sync",
        target=dg.AssetSelection.assets(online_asset),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )


def check_refresh_fits_ttl(views: Iterable[FeatureView], interval: timedelta | None = None) -> None:
    """Online keys live for the view's TTL from their last write. With a refresh slower than TTL/2, a single
    late or failed run lets every key expire before the next sync writes it again."""
    interval = REFRESH_INTERVAL if interval is None else interval
    for view in views:
        if interval > view.online_ttl / 2:
            hours = timedelta(hours=1)
            raise ConfigError(
                f"the refresh interval ({interval / hours:g} h) is more than half the online TTL of {view.name} "
                f"({view.online_ttl / hours:g} h), so online keys would expire between syncs; set online_ttl_hours "
                f"to at least {2 * interval / hours:g} or refresh more often"
            )


# The skew report runs after each online sync (and training-set rebuild), and daily even when nothing upstream
# changed: the served vectors it compares keep arriving.
SKEW_REPORT_AUTOMATION = (
    dg.AutomationCondition.eager()
    | (dg.AutomationCondition.cron_tick_passed("0 6 * * *", "UTC") & ~dg.AutomationCondition.in_progress())
).with_label("after each online sync or training set, and daily at 06:00 UTC")

# A report older than a day and a bit means monitoring itself has stopped: the UI shows it.
SKEW_REPORT_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=49), warn_window=timedelta(hours=25))


def monitoring_sensor(report_asset) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the skew report's automation condition; running by default, like the online sync's."""
    return dg.AutomationConditionSensorDefinition(
        "skew_monitoring",
        target=dg.AssetSelection.assets(report_asset),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
    )

"""When things refresh: the hourly schedule and the freshness policies it is measured against."""

from datetime import timedelta

import dagster as dg

from feature_assets.as_of import format_hour

__all__ = ["REFRESH_INTERVAL", "USER_FEATURES_FRESHNESS", "hourly_refresh_schedule"]

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

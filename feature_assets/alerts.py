"""Alerts that reach people: one sensor reads Dagster's event log and posts one message per failure to the
configured channels (resources/alert_channels.py).

What alerts: every failed asset check of severity ERROR (drift errors, online parity, leakage, dbt tests of
severity error), every failed run, and every asset whose freshness policy turns FAIL. A run's failures make
one message: its failed checks, each with its asset's link, and the errors of steps that did not fail because
of a check (a blocking check that fails also fails the run: that is one failure, not two). WARN checks and
freshness WARN are left to the UI.

Once per failure: the cursor holds, per event stream (ended runs, freshness changes), the last event alerted
on. A check that stays failed is not sent again on the next tick; a later run that fails it again is a new
failure and is sent. Nothing is lost when a channel fails: the cursor stops before the first message not
delivered, and the tick fails (shown on the sensor's page) when nothing could be delivered.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
from dagster import DagsterEventType

from feature_assets.errors import AlertDeliveryError
from feature_assets.resources.alert_channels import AlertChannels

__all__ = ["NOT_CONFIGURED", "Alert", "alert_sensor"]

NOT_CONFIGURED = (
    "no alert channel is configured: set FEATURE_STORE_ALERT_WEBHOOK_URL (a Slack incoming webhook works), "
    "or FEATURE_STORE_SLACK_TOKEN and FEATURE_STORE_SLACK_CHANNEL"
)
_RunEnd = Literal[DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS]
_RUN_ENDS: tuple[_RunEnd, ...] = (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS)
_FRESHNESS = DagsterEventType.FRESHNESS_STATE_CHANGE
# Events read per stream per tick; the rest wait for the next tick.
_BATCH = 50
_DETAIL_CHARS = 400


@dataclass(frozen=True)
class Alert:
    """One message: a title, one line per failure (with the failed asset's link when there is one), and a link
    to where it happened."""

    title: str
    items: list[tuple[str, str | None]]
    link: str

    def message(self) -> dict[str, Any]:
        """Slack-compatible JSON: plain text (what generic webhooks read) and the same as mrkdwn blocks."""
        text = "\n".join(
            [self.title, *(f"- {line}" + (f" ({link})" if link else "") for line, link in self.items), self.link]
        )
        lines = [f"*{_mrkdwn(self.title)}*"]
        lines += [f"• {_mrkdwn(line)}" + (f" <{link}|asset>" if link else "") for line, link in self.items]
        lines.append(f"<{self.link}|Open in Dagster>")
        return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]}


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _asset_path(key: dg.AssetKey) -> str:
    return "assets/" + "/".join(key.path)


def _check_detail(evaluation: dg.AssetCheckEvaluation) -> str:
    """The check's own description when it has one (drift: "drift on events_30d: psi 0.41 >= 0.25"), else its
    short metadata (numbers and one-line texts; tables and markdown stay in the UI)."""
    if evaluation.description:
        return _short(evaluation.description)
    values = [
        f"{name}: {entry.value}"
        for name, entry in evaluation.metadata.items()
        if isinstance(entry, (dg.IntMetadataValue, dg.FloatMetadataValue, dg.BoolMetadataValue))
        or (isinstance(entry, dg.TextMetadataValue) and "\n" not in entry.value)
    ]
    return _short("; ".join(values)) or "no details"


def _step_error(event: dg.DagsterEvent) -> str:
    """What a user raised (dg.Failure's description, else the innermost exception), not Dagster's wrapper."""
    data = event.step_failure_data
    if data.user_failure_data and data.user_failure_data.description:
        return _short(data.user_failure_data.description)
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return _short(error.message) if error else "no error recorded"


def run_alert(instance: dg.DagsterInstance, record: dg.EventLogRecord, channels: AlertChannels) -> Alert | None:
    """The alert for an ended run: its failed ERROR checks, and if it failed, the steps that failed for other
    reasons than a failed check (or the run's own error when no step failed). None when nothing failed."""
    run_id = record.event_log_entry.run_id
    failed = record.event_log_entry.dagster_event_type == DagsterEventType.RUN_FAILURE
    items: list[tuple[str, str | None]] = []
    step_failures: list[dg.DagsterEvent] = []
    events = instance.get_records_for_run(
        run_id, of_type={DagsterEventType.ASSET_CHECK_EVALUATION, DagsterEventType.STEP_FAILURE}
    ).records
    # Records of Dagster event types (of_type), so each has its event.
    for event in (entry.event_log_entry.get_dagster_event() for entry in events):
        if event.event_type == DagsterEventType.STEP_FAILURE:
            step_failures.append(event)
            continue
        evaluation = event.asset_check_evaluation_data
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            name = f"{evaluation.asset_key.to_user_string()} check {evaluation.check_name} failed"
            items.append((f"{name}: {_check_detail(evaluation)}", channels.link(_asset_path(evaluation.asset_key))))
    if failed:
        for event in step_failures:
            if (
                event.step_failure_data.error
                and event.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
            ):
                continue  # its checks are listed above
            items.append((f"step {event.step_key} failed: {_step_error(event)}", None))
        if not step_failures:
            run_failure = record.event_log_entry.get_dagster_event()  # a run status change: a Dagster event
            error = run_failure.job_failure_data.error
            items.append((_short(error.message if error else run_failure.message or "run failed"), None))
    if not items:
        return None
    job = record.event_log_entry.job_name or "a run"
    checks = sum(1 for _, link in items if link)
    title = (
        f"{job} failed (run {run_id[:8]})"
        if failed
        else f"{job}: {checks} failed check{'s' * (checks > 1)} (run {run_id[:8]})"
    )
    return Alert(title=title, items=items, link=channels.link(f"runs/{run_id}"))


def freshness_alert(instance: dg.DagsterInstance, record: dg.EventLogRecord, channels: AlertChannels) -> Alert | None:
    """The alert for an asset whose freshness policy turned FAIL; None for any other freshness change."""
    change = record.event_log_entry.get_dagster_event().asset_freshness_state_change_data
    if change.new_state != "FAIL":
        return None
    key = change.key
    latest = instance.get_latest_materialization_event(key)
    if latest is None:
        detail = "never materialized"
    else:
        hours = (record.timestamp - latest.timestamp) / 3600
        at = datetime.fromtimestamp(latest.timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
        detail = f"hours since the last materialization: {hours:.1f} (at {at})"
    link = channels.link(_asset_path(key))
    return Alert(
        title=f"{key.to_user_string()} is stale: its freshness policy failed", items=[(detail, link)], link=link
    )


def _run_ends(instance: dg.DagsterInstance, kind: _RunEnd, after: int | None, limit: int) -> list[dg.EventLogRecord]:
    records_filter = dg.RunStatusChangeRecordsFilter(event_type=kind, after_storage_id=after)
    return list(instance.fetch_run_status_changes(records_filter, limit=limit, ascending=after is not None).records)


def _freshness_changes(instance: dg.DagsterInstance, after: int | None, limit: int) -> list[dg.EventLogRecord]:
    # No fetch_* method covers freshness changes; the storage's query is the one Dagster's own sensors use.
    records_filter = dg.EventRecordsFilter(event_type=_FRESHNESS, after_cursor=after)
    return list(instance.event_log_storage.get_event_records(records_filter, limit=limit, ascending=after is not None))


def _latest_positions(instance: dg.DagsterInstance) -> dict[str, int]:
    """Where alerting starts when the sensor first runs: after everything already in the event log."""
    positions = {kind.value: _run_ends(instance, kind, None, 1) for kind in _RUN_ENDS}
    positions[_FRESHNESS.value] = _freshness_changes(instance, None, 1)
    return {stream: records[0].storage_id if records else -1 for stream, records in positions.items()}


def _pending(
    instance: dg.DagsterInstance, cursor: dict[str, int], channels: AlertChannels
) -> Iterator[tuple[str, int, Alert | None]]:
    """(stream, event position, its alert or None) for every new event, in event-log order within each stream."""
    for kind in _RUN_ENDS:
        for record in _run_ends(instance, kind, cursor[kind.value], _BATCH):
            yield kind.value, record.storage_id, run_alert(instance, record, channels)
    for record in _freshness_changes(instance, cursor[_FRESHNESS.value], _BATCH):
        yield _FRESHNESS.value, record.storage_id, freshness_alert(instance, record, channels)


def alert_sensor(channels: AlertChannels) -> dg.SensorDefinition:
    """Runs by default when the deployment configures a channel; stopped otherwise, its description saying what to
    set (the sensor's page shows it without hovering)."""
    what = "Posts each failed ERROR check, failed run and failed freshness policy once to the alert channels."
    description = (
        f"{what} Delivering to: {channels.describe()}."
        if channels.configured
        else f"{what} Stopped: {NOT_CONFIGURED}, then reload the code location."
    )

    @dg.sensor(
        name="alerts",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING if channels.configured else dg.DefaultSensorStatus.STOPPED,
        description=description,
    )
    def alerts(context: dg.SensorEvaluationContext, alert_channels: AlertChannels) -> dg.SensorResult | dg.SkipReason:
        if not alert_channels.configured:
            return dg.SkipReason(NOT_CONFIGURED)
        if context.cursor is None:
            return dg.SensorResult(
                cursor=json.dumps(_latest_positions(context.instance)),
                skip_reason="alerting on failures from now on (earlier ones are in the UI)",
            )
        cursor = json.loads(context.cursor)
        sent = 0
        for stream, position, alert in _pending(context.instance, cursor, alert_channels):
            if alert is not None:
                try:
                    alert_channels.send(alert.message())
                except AlertDeliveryError as error:
                    if not sent:
                        raise  # the tick fails, so the sensor's page shows why; the cursor stays put
                    return dg.SensorResult(
                        cursor=json.dumps(cursor), skip_reason=f"sent {sent}, then {error}; retrying next tick"
                    )
                context.log.info(f"alert sent: {alert.title}")
                sent += 1
            cursor[stream] = position
        return dg.SensorResult(cursor=json.dumps(cursor), skip_reason=f"sent {sent} alert{'s' * (sent != 1)}")

    return alerts

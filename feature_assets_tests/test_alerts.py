"""The alert sensor against a local HTTP receiver, on a persistent Dagster instance (SQLite storage, as
`featurestore dev` uses): a real drift error, a real failed run, a freshness failure; each sent once."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange

from feature_assets.alerts import NOT_CONFIGURED, alert_sensor
from feature_assets.assets.monitoring import skew_report_assets
from feature_assets.definitions import build_definitions
from feature_assets.errors import ConfigError
from feature_assets.registry import load_registry
from feature_assets.resources.alert_channels import AlertChannels, alert_channels_from_env
from feature_assets.resources.online import OnlineStoreResource
from feature_assets.resources.served_log import ServedLogResource
from feature_assets.scripted_drift import shift_online_feature
from feature_assets.settings import Settings, dbt_manifest_path

REGISTRY = load_registry(dbt_manifest_path())
VIEW = REGISTRY.view("user_features")
UI = "http://dagster.internal:3000"
# A Slack incoming-webhook URL carries its token in the path: no error may quote it.
SECRET_PATH = "/services/T000/B000/not-to-be-logged"


class Receiver:
    """An HTTP server on a free loopback port that keeps every JSON body POSTed to it and answers `status`."""

    def __init__(self):
        self.messages: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.status == 200:
                    receiver.messages.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        yield instance


class Sensor:
    """The alert sensor evaluated tick by tick, keeping its cursor between ticks as the daemon does."""

    def __init__(self, instance: dg.DagsterInstance, channels: AlertChannels):
        self.instance, self.channels, self.cursor = instance, channels, None
        self.definition = alert_sensor(channels)

    def tick(self):
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"alert_channels": self.channels}
        )
        result = self.definition.evaluate_tick(context)
        self.cursor = result.cursor
        return result


@pytest.fixture
def sensor(instance, receiver) -> Sensor:
    """The sensor, past its first tick (which starts alerting from the end of the event log)."""
    sensor = Sensor(instance, AlertChannels(webhook_url=receiver.url, ui_url=UI))
    assert sensor.tick().skip_message.startswith("alerting on failures from now on")
    return sensor


def _report_job(resources) -> dg.JobDefinition:
    report, checks = skew_report_assets(REGISTRY, VIEW)
    job = dg.define_asset_job("skew_report_job", selection=[report.key])
    return dg.Definitions(assets=[report], asset_checks=checks, jobs=[job], resources=resources).resolve_job_def(
        job.name
    )


def test_a_drift_error_is_sent_once_naming_the_feature_the_statistic_and_the_asset(
    monitored, instance, receiver, sensor
):
    warehouse, store, _, resources = monitored
    shift_online_feature(warehouse, store, VIEW, "events_30d", 0.3)
    # The run succeeds: a drift error fails its check (and holds promotion back), not the report.
    assert _report_job(resources).execute_in_process(instance=instance, raise_on_error=False).success

    assert sensor.tick().skip_message == "sent 1 alert"
    [message] = receiver.messages
    text = message["text"]
    assert text.startswith("skew_report_job: 1 failed check (run ")
    assert "user_features_skew_report check no_drift_error failed: drift on events_30d: psi " in text
    assert f"({UI}/assets/user_features_skew_report)" in text
    assert "step " not in text
    assert f"<{UI}/assets/user_features_skew_report|asset>" in message["blocks"][0]["text"]["text"]

    assert sensor.tick().skip_message == "sent 0 alerts"  # the check stays failed: nothing new
    assert len(receiver.messages) == 1

    # A later run that fails the check again is a new failure.
    _report_job(resources).execute_in_process(instance=instance, raise_on_error=False)
    sensor.tick()
    assert len(receiver.messages) == 2


def _failing_run(instance, tmp_path, duckdb_warehouse) -> dg.ExecuteInProcessResult:
    """A real failure: the skew report on a warehouse that holds no training set yet."""
    resources = {
        "warehouse": duckdb_warehouse,
        "online_store": OnlineStoreResource(kind="sqlite", sqlite_path=str(tmp_path / "online.sqlite")),
        "served_log": ServedLogResource(kind="sqlite", sqlite_path=str(tmp_path / "served_log.sqlite")),
    }
    result = _report_job(resources).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result


def test_a_failed_run_is_sent_once_naming_the_job_and_the_error(instance, receiver, sensor, tmp_path, duckdb_warehouse):
    result = _failing_run(instance, tmp_path, duckdb_warehouse)

    sensor.tick()
    [message] = receiver.messages
    assert message["text"].splitlines() == [
        f"skew_report_job failed (run {result.run_id[:8]})",
        "- step user_features_skew_report failed: no training set of user_features exists yet; materialize the "
        "training sets first",
        f"{UI}/runs/{result.run_id}",
    ]
    sensor.tick()
    assert len(receiver.messages) == 1


def test_a_receiver_that_fails_gets_the_alert_on_a_later_tick_and_the_tick_names_the_error(
    instance, receiver, sensor, tmp_path, duckdb_warehouse
):
    _failing_run(instance, tmp_path, duckdb_warehouse)
    receiver.status = 500
    cursor = sensor.cursor
    with pytest.raises(Exception) as failed_tick:
        sensor.tick()
    assert "the alert webhook answered HTTP 500" in str(failed_tick.value)
    assert SECRET_PATH not in str(failed_tick.value) and "not-to-be-logged" not in str(failed_tick.value)
    assert sensor.cursor == cursor and receiver.messages == []

    receiver.status = 200
    sensor.tick()
    assert len(receiver.messages) == 1
    sensor.tick()
    assert len(receiver.messages) == 1


def test_when_delivery_fails_midway_the_alerts_sent_are_not_sent_again(
    instance, receiver, sensor, tmp_path, duckdb_warehouse
):
    _failing_run(instance, tmp_path, duckdb_warehouse)
    _failing_run(instance, tmp_path, duckdb_warehouse)

    class FailsAfterOne(AlertChannels):
        def send(self, message):
            if receiver.messages:
                receiver.status = 500
            super().send(message)

    sensor.channels = FailsAfterOne(webhook_url=receiver.url, ui_url=UI)
    result = sensor.tick()
    assert result.skip_message.startswith("sent 1, then the alert webhook answered HTTP 500")
    assert len(receiver.messages) == 1

    receiver.status = 200
    sensor.channels = AlertChannels(webhook_url=receiver.url, ui_url=UI)
    sensor.tick()
    assert len(receiver.messages) == 2
    assert receiver.messages[0]["text"].splitlines()[0] != receiver.messages[1]["text"].splitlines()[0]  # two runs


def test_a_failed_freshness_policy_is_sent_once_with_the_hours_since_the_last_materialization(
    instance, receiver, sensor
):
    key = dg.AssetKey("user_features_online")
    instance.report_runless_asset_event(dg.AssetMaterialization(key))
    # What the freshness daemon records when the policy's fail window passes (and when it recovers).
    for previous, new in [("PASS", "WARN"), ("WARN", "FAIL"), ("FAIL", "PASS"), ("PASS", "FAIL")]:
        instance.report_runless_asset_event(
            FreshnessStateChange(
                key=key,
                previous_state=FreshnessState(previous),
                new_state=FreshnessState(new),
                state_change_timestamp=0.0,
            )
        )
    sensor.tick()
    assert len(receiver.messages) == 2  # the two changes to FAIL, not the warning or the recovery
    lines = receiver.messages[0]["text"].splitlines()
    assert lines[0] == "user_features_online is stale: its freshness policy failed"
    assert lines[1].startswith("- hours since the last materialization: 0.0 (at ")
    assert lines[2] == f"{UI}/assets/user_features_online"
    sensor.tick()
    assert len(receiver.messages) == 2


def test_without_a_channel_the_sensor_is_stopped_and_its_description_says_what_to_set(instance):
    sensor = build_definitions(Settings.from_env()).resolve_sensor_def("alerts")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert f"Stopped: {NOT_CONFIGURED}" in sensor.description
    assert "FEATURE_STORE_ALERT_WEBHOOK_URL" in NOT_CONFIGURED
    # Started by hand anyway, each tick says the same.
    skip = Sensor(instance, alert_channels_from_env({})).tick()
    assert skip.skip_message == NOT_CONFIGURED


def test_with_a_channel_the_sensor_runs_and_names_where_alerts_go_without_the_secret(monkeypatch):
    secret = "https://hooks.example.com/services/T000/B000/secret-part"
    monkeypatch.setenv("FEATURE_STORE_ALERT_WEBHOOK_URL", secret)
    monkeypatch.setenv("FEATURE_STORE_SLACK_TOKEN", "xoxb-secret-token")
    monkeypatch.setenv("FEATURE_STORE_SLACK_CHANNEL", "#features")
    sensor = build_definitions(Settings.from_env()).resolve_sensor_def("alerts")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.description.endswith(
        "Delivering to: the webhook FEATURE_STORE_ALERT_WEBHOOK_URL names and Slack channel #features."
    )
    assert "secret" not in sensor.description


def test_the_webhook_url_reaches_the_resource_from_the_environment_only(monkeypatch, receiver):
    monkeypatch.setenv("FEATURE_STORE_ALERT_WEBHOOK_URL", receiver.url)
    channels = alert_channels_from_env({"FEATURE_STORE_ALERT_WEBHOOK_URL": receiver.url, "FEATURE_STORE_UI_URL": UI})
    assert isinstance(channels.webhook_url, dg.EnvVar)  # hidden in the UI, resolved when the sensor runs
    with dg.build_sensor_context(resources={"alert_channels": channels}) as context:
        context.resources.alert_channels.send({"text": "hello"})
    assert receiver.messages == [{"text": "hello"}]


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({"FEATURE_STORE_UI_URL": "dagster.internal:3000"}, "FEATURE_STORE_UI_URL must be an http:// or https:// URL"),
        (
            {"FEATURE_STORE_SLACK_TOKEN": "xoxb-secret"},
            "set both FEATURE_STORE_SLACK_TOKEN and FEATURE_STORE_SLACK_CHANNEL",
        ),
    ],
)
def test_a_malformed_alert_setting_is_refused_naming_it_and_not_the_secret(environ, problem):
    with pytest.raises(ConfigError) as refused:
        alert_channels_from_env(environ)
    assert str(refused.value).startswith(problem)
    assert "xoxb-secret" not in str(refused.value)

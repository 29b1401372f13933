"""The Dagster UI in a browser, as a person uses it: on a trained store, a command's run shows under its job, each
schedule, sensor and model says what it does, a refresh launched from the UI succeeds, the lineage graph shows the
dbt and feature assets, the automation carries the refresh to the online store and the skew report, and after a
scripted drift the skew report materialized from the UI fails its drift check, naming the feature and its reasons.

`pytest -m ui` runs it alone; `pytest -m "not ui"` leaves its minutes out. Chromium is Debian's (scripts/ensure-services
installs it); Playwright drives it headless. Each step leaves a screenshot under
feature_assets_tests/screenshots/test_ui/ (kept after the run), and a failed step one of the page as it failed; the
failure names that folder and dagster dev's log."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import wait_until
from playwright.sync_api import Page, expect, sync_playwright
from redis_servers import free_ports

CHROMIUM = Path("/usr/bin/chromium")
FEATURESTORE = Path(sys.executable).with_name("featurestore")
REPO = Path(__file__).resolve().parent.parent
# Generous bounds for a loaded 2-core machine; they only turn a hang into a failure.
SERVER_START_SECONDS = 300
RUN_SECONDS = 600
DRIFTED_FEATURE = "events_30d"
# Each step's screenshot, kept after the run (git ignores the folder); a failed step adds one of the page as it failed.
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots" / "test_ui"

pytestmark = pytest.mark.ui


def _environment(home: Path) -> dict[str, str]:
    """The local demo setup (DuckDB, SQLite online store) in a home of its own."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "FEATURE_STORE_ENV", "FEATURE_STORE_ONLINE")
    }
    return env | {"FEATURE_STORE_HOME": str(home), "FEATURE_STORE_DEMO_DATA": "1"}


def featurestore(home: Path, *argv: str) -> str:
    run = subprocess.run([FEATURESTORE, *argv], env=_environment(home), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"featurestore {' '.join(argv)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@dataclass
class DagsterUI:
    url: str
    log: Path


@pytest.fixture(scope="module")
def home(trained) -> Path:
    """A FEATURE_STORE_HOME: the module's copy of the suite's trained folder (1,000 users over 300 days, both models
    served, and the Dagster instance they were trained on), instead of a demo of its own (minutes of CPU). Nothing is
    due when dagster dev starts: no as-of day has a run in this instance, so the automation waits for the refresh."""
    _, models = trained
    return models.parent


@pytest.fixture(scope="module")
def dagster_ui(home) -> Iterator[DagsterUI]:
    """`featurestore dev` (dagster dev: webserver, daemon, code server) on a free loopback port, started the way a
    shell script's background job starts (SIGINT ignored) and stopped afterwards the way `kill` stops it (SIGTERM),
    with every process it started (its own process group)."""
    [port] = free_ports(1)
    log = home / "dagster-dev.log"
    with open(log, "w") as out:
        dev = subprocess.Popen(
            ["bash", "-c", 'trap "" INT; exec "$0" "$@"', FEATURESTORE, "dev", "--port", str(port)],
            cwd=REPO,
            env=_environment(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ui = DagsterUI(f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: _answers(ui, dev), "the Dagster UI answering", timeout=SERVER_START_SECONDS)
        yield ui
    finally:
        _stop_group(dev)


def _answers(ui: DagsterUI, dev: subprocess.Popen) -> bool:
    if dev.poll() is not None:
        pytest.fail(f"featurestore dev exited with {dev.returncode}:\n{ui.log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(f"{ui.url}/server_info", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        time.sleep(1)
        return False


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to dagster dev, which stops the webserver and the daemon it started; then SIGKILL to whatever is left of
    its group (code servers and run workers included). Fails when dagster dev ignored the SIGTERM."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    stopped = process.poll() is not None
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    if not stopped:
        pytest.fail("featurestore dev did not stop within 60 s of a SIGTERM")


class Steps:
    """Numbered screenshots of each step under one folder; a failed step adds one of the page as it failed and
    names the folder in the failure."""

    def __init__(self, page: Page, folder: Path, server_log: Path):
        self.page, self.folder, self.server_log, self.count = page, folder, server_log, 0
        shutil.rmtree(folder, ignore_errors=True)  # the previous run's
        folder.mkdir(parents=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}"
        try:
            yield
        except Exception as error:
            self.page.screenshot(path=f"{path}-FAILED.png", full_page=True)
            pytest.fail(
                f"step {name!r} failed: {error}\nscreenshots: {self.folder}\ndagster dev's log: {self.server_log}",
                pytrace=False,
            )
        self.page.screenshot(path=f"{path}.png", full_page=True)


@pytest.fixture
def page(dagster_ui) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/ensure-services installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000}, base_url=dagster_ui.url)
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def go_to(page: Page, section: str) -> None:
    """A section of the main navigation (Runs, Jobs, Lineage, ...)."""
    # A link's name starts with its icon's ("column_lineage Jobs").
    page.get_by_role("navigation").get_by_role("link", name=re.compile(rf"\b{section}$")).click()


def launch_refresh(page: Page) -> None:
    """What a person does to refresh the features now: the refresh_features job's Materialize all, for the latest
    as-of day (today's partition: its hours up to now)."""
    go_to(page, "Jobs")
    page.get_by_role("link", name="refresh_features").click()
    page.get_by_role("button", name="Materialize all").click()
    page.get_by_role("button", name="Latest", exact=True).click()
    page.get_by_role("button", name="Launch 1 run").click()


# The status tags of the runs list and of a run's page.
RUN_ENDED = re.compile(r"^(Success|Failure|Canceled)$")
RUN_NOT_SUCCEEDED = re.compile(r"^(Queued|Not started|Starting|Started|Canceling|Failure|Canceled)$")
RUN_ANY = re.compile(r"^(Queued|Not started|Starting|Started|Canceling|Success|Failure|Canceled)$")


def open_launched_run(page: Page) -> None:
    """The run a launch just started, from the toast that announces it (it fades after a few seconds)."""
    page.get_by_text(re.compile(r"^Launched run")).wait_for()
    page.get_by_role("link", name="View", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]+$"))
    expect(page.get_by_text(RUN_ANY).first).to_be_visible()


def run_status(page: Page) -> str:
    """The run page's status once the run has ended."""
    ended = page.get_by_text(RUN_ENDED).first
    ended.wait_for(timeout=RUN_SECONDS * 1000)
    return ended.inner_text()


def wait_for_automation(page: Page, *sensors: str) -> None:
    """The runs list shows runs launched by each sensor, and every run in it succeeded."""
    go_to(page, "Runs")
    for sensor in sensors:
        expect(page.get_by_role("link", name=sensor, exact=True).first).to_be_visible(timeout=RUN_SECONDS * 1000)
    expect(page.get_by_text(RUN_NOT_SUCCEEDED)).to_have_count(0, timeout=RUN_SECONDS * 1000)


def test_what_a_person_reads_from_runs_to_a_drift_that_fails_the_skew_check_naming_the_feature(dagster_ui, home, page):
    steps = Steps(page, SCREENSHOTS / "drift", dagster_ui.log)
    # A command run from a shell while the UI is open: its run is the job's, as one launched from the UI.
    assert "sync wrote" in featurestore(home, "sync")
    with steps.step("alerts-sensor-says-what-to-set"):
        page.goto("/locations/featurestore/sensors/alerts")
        expect(
            page.get_by_text(re.compile("Stopped: no alert channel is configured: set FEATURE_STORE_ALERT_WEBHOOK_URL"))
        ).to_be_visible()
    with steps.step("schedule-says-what-it-runs"):
        page.goto("/locations/featurestore/schedules/hourly_refresh")
        expect(
            page.get_by_text(re.compile(r"^Every hour on the hour \(UTC\), one run of refresh_features"))
        ).to_be_visible()
    with steps.step("model-described-with-its-floor-check"):
        page.goto("/assets/churn_model")
        expect(
            page.get_by_text(re.compile("^Probability that a user has no activity in the next 30 days"))
        ).to_be_visible()
        page.goto("/assets/churn_model?view=checks")
        page.get_by_text("validation_above_floor", exact=True).first.click()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"may be promoted: auc 0\.\d{4} >= 0\.6")).first).to_be_visible()

    # The automation must have started watching before the refresh lands, or it never sees the refresh.
    wait_until(
        lambda: "Finished auto-materialization tick for online_sync" in dagster_ui.log.read_text(),
        "the first tick of the online_sync sensor",
        timeout=SERVER_START_SECONDS,
    )

    with steps.step("refresh-launched"):
        page.goto("/")
        launch_refresh(page)
        open_launched_run(page)
    with steps.step("refresh-succeeded"):
        assert run_status(page) == "Success"

    with steps.step("cli-and-ui-runs-under-their-jobs"):
        page.goto("/locations/featurestore/jobs/sync_online_store/runs")
        expect(page.get_by_text("featurestore/command: online sync").first).to_be_visible()
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        page.goto("/overview/activity/timeline")
        for job in ("sync_online_store", "refresh_features"):
            expect(page.get_by_text(job, exact=True).first).to_be_visible()

    with steps.step("lineage"):
        page.goto("/")
        go_to(page, "Lineage")
        page.get_by_role("button", name="settings", exact=True).click()  # the graph's options
        page.get_by_role("menuitem", name="Expand all groups").click()
        for asset in ("raw_events", "stg_app__events", "country_features", "churn_model", "user_features"):
            expect(page.get_by_text(asset, exact=True)).to_be_visible()
        page.get_by_text("user_features", exact=True).click()
        # Its as-of days (partitions), the one the refresh built among them.
        expect(page.locator("body")).to_contain_text(re.compile(r"Materialized\s*[1-9]\d*/\d+"))

    with steps.step("partitions-where-the-history-is"):
        # The as-of days start on the history's first day: every one is built, none shows as missing.
        page.goto("/assets/user_features?view=partitions")
        expect(page.get_by_text("Missing (0)", exact=True)).to_be_visible()
        expect(page.get_by_text(re.compile(r"^Materialized \([1-9]\d*\)$"))).to_be_visible()

    with steps.step("synced-and-reported-by-the-automation"):
        wait_for_automation(page, "online_sync", "skew_monitoring")

    out = featurestore(home, "inject-drift", DRIFTED_FEATURE)
    assert f"user_features.{DRIFTED_FEATURE} +" in out

    with steps.step("skew-report-launched"):
        page.goto("/assets/user_features_skew_report")
        page.get_by_role("button", name="Materialize").click()
        open_launched_run(page)
        # Launched from an asset's page: a run of the job named for it, not Dagster's implicit __ASSET_JOB.
        expect(page.get_by_text("Run of Selected_assets").first).to_be_visible()
    with steps.step("skew-report-run-succeeded"):
        # The report is built; the drift fails its check (and would hold a promotion back), not the run.
        assert run_status(page) == "Success"

    with steps.step("drift-check-names-the-feature"):
        page.goto("/assets/user_features_skew_report?view=checks")
        page.get_by_text("no_drift_error", exact=True).first.click()
        expect(page.get_by_text("Failed", exact=True).first).to_be_visible()
        expect(page.get_by_role("row").filter(has_text="drifted_features")).to_contain_text(DRIFTED_FEATURE)
        expect(page.get_by_text("Holds back promotion").first).to_be_visible()

    with steps.step("skew-report-reads-its-reasons-and-thresholds"):
        page.goto("/assets/user_features_skew_report")
        # The drifted feature's line: its grade and reasons, then each statistic beside its threshold.
        reasons = page.get_by_text(re.compile(rf"^{DRIFTED_FEATURE}: error \(psi \d\.\d+ >= 0\.25"))
        expect(reasons.first).to_be_visible()

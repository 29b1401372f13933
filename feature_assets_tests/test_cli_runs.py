"""The runs the command line starts, as the UI shows them: runs of their jobs in the workspace's code location; and
a command killed mid-run (SIGKILL, Ctrl-C) never leaves the warehouse pool held for the next one."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import wait_until
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.cli import main
from feature_assets.cli_runs import fail_runs_of_dead_commands
from feature_assets.job_runs import HOST_TAG, PID_TAG
from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.serving import SqliteOnlineStore
from feature_assets.settings import Settings, dbt_manifest_path

FEATURESTORE = Path(sys.executable).with_name("featurestore")
ROOT = Path(__file__).resolve().parent.parent
[LOCATION] = [
    entry["python_module"]["location_name"]
    for entry in yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
]


@pytest.fixture(scope="module")
def synced(trained) -> Path:
    """The trained folder (warehouse.duckdb, models/) with its SQLite online store synced."""
    warehouse, models = trained
    with SqliteOnlineStore(models.parent / "online.sqlite") as online:
        for view in load_registry(dbt_manifest_path()).views.values():
            sync_online_store(warehouse, online, view, full_resync=True)
    return models.parent


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A FEATURE_STORE_HOME of the test's own with the local Dagster instance in it, as the first command seeds it;
    the commands and the test share it through DAGSTER_HOME."""
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(ROOT / "deploy" / "local" / "dagster.yaml", home / "dagster" / "dagster.yaml")
    monkeypatch.setenv("FEATURE_STORE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    for name in ("FEATURE_STORE_ENV", "FEATURE_STORE_ONLINE", "FEATURE_STORE_DEMO_DATA"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def store(home, synced) -> Path:
    """The home holding a copy of the synced warehouse, models and online store (not the instance the models were
    trained on: the test's runs are the only ones)."""
    shutil.copytree(synced, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("dagster"))
    return home


@pytest.fixture
def instance(home) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.fixture
def online_store_held(store) -> Iterator[sqlite3.Connection]:
    """The SQLite online store locked by another writer: a sync's step waits on it, holding the warehouse pool."""
    holder = sqlite3.connect(store / "online.sqlite", isolation_level=None)
    holder.execute("begin exclusive")
    yield holder
    holder.close()


def start(*argv: str) -> subprocess.Popen:
    """A command in a session of its own, so that killing it kills what it started (dbt) too."""
    return subprocess.Popen(
        [FEATURESTORE, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def holding_the_pool(instance: dg.DagsterInstance, command: subprocess.Popen) -> dg.DagsterRun:
    """The command's run once it has started and a step of it holds the warehouse pool's slot."""
    found: list[dg.DagsterRun] = []

    def holds() -> bool:
        assert command.poll() is None, command.communicate()[1]
        slots = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
        runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        found[:] = [run for run in runs if run.tags.get(PID_TAG) == str(command.pid)]
        return bool(found) and any(slot.run_id == found[0].run_id for slot in slots)

    wait_until(holds, "the command's run holding the warehouse pool", timeout=300)
    return found[0]


def assert_failed_for_its_dead_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"(pid {run.tags[PID_TAG]} on {run.tags[HOST_TAG]}) ended without finishing it" in failure.message
    slots = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
    assert all(slot.run_id != run.run_id for slot in slots)


def cpu_seconds(pid: int) -> float:
    """User and system time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_commands_run_is_a_run_of_its_job_in_the_workspace_code_location(store, instance, capsys):
    assert main(["sync"]) == 0, capsys.readouterr().err
    [run] = instance.get_runs()
    origin = run.remote_job_origin
    assert (origin.location_name, origin.repository_origin.repository_name, origin.job_name) == (
        LOCATION,
        "__repository__",
        "sync_online_store",
    )
    # What the job's Runs tab asks for: the job's name in its code location.
    label = f"__repository__@{LOCATION}"
    in_job = instance.get_runs(filters=RunsFilter(job_name="sync_online_store", tags={".dagster/repository": label}))
    assert [r.run_id for r in in_job] == [run.run_id]
    assert run.tags[PID_TAG] == str(os.getpid()) and run.tags["featurestore/command"] == "online sync"
    assert not (store / "dagster" / "running" / f"{run.run_id}.lock").exists(), "a finished run leaves no lock behind"


def test_a_command_waits_asleep_for_the_run_holding_the_pool_and_runs_once_its_process_is_killed(
    instance, online_store_held
):
    first = start("sync")
    holder = holding_the_pool(instance, first)
    second = start("sync")
    waiting = next(line for line in second.stderr if line.startswith("waiting for"))
    assert waiting.startswith(
        f"waiting for the warehouse pool, held by run {holder.run_id[:8]} (sync_online_store, online sync in pid "
        f"{first.pid}, started "
    )
    # Dagster's own wait for a slot spins a core; this one sleeps. A margin a loaded machine keeps: 0.5 s of 3.
    before = cpu_seconds(second.pid)
    time.sleep(3)
    assert second.poll() is None, "it still waits"
    assert cpu_seconds(second.pid) - before < 0.5

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    online_store_held.rollback()
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert f"marked run {holder.run_id[:8]} (sync_online_store, online sync in pid {first.pid}, started" in err
    assert "user_features_online parity: passed" in out
    assert_failed_for_its_dead_process(instance, holder)


@pytest.mark.parametrize("command", [["train"], ["refresh"]])
def test_a_command_killed_mid_run_is_marked_failed_and_the_next_command_runs(store, instance, command):
    killed = start(*command)
    run = holding_the_pool(instance, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED, "what Dagster leaves"

    after = subprocess.run([FEATURESTORE, "sync"], capture_output=True, text=True, timeout=600)
    assert after.returncode == 0, after.stderr
    [note] = [line for line in after.stderr.splitlines() if line.startswith("marked run")]
    assert note.startswith(f"marked run {run.run_id[:8]} ({run.job_name}, ")
    assert note.endswith("failed: its process ended before the run did; its pool slots are free")
    assert_failed_for_its_dead_process(instance, run)


def test_ctrl_c_ends_the_command_in_one_line_and_gives_the_pool_back(instance, online_store_held):
    command = start("sync")
    run = holding_the_pool(instance, command)
    command.send_signal(signal.SIGINT)
    online_store_held.rollback()  # the step's write returns, and the interrupt stops it
    _, err = command.communicate(timeout=300)
    assert (command.returncode, err) == (130, "featurestore: interrupted\n")
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots


HOLD = """
import sys, time
from pathlib import Path
import dagster as dg
from feature_assets.job_runs import run_in_this_process

@dg.op(pool=sys.argv[2] or None)
def hold():
    print("holding", flush=True)
    time.sleep(600)

@dg.job
def hold_job():
    hold()

with dg.DagsterInstance.get() as instance:
    defs = dg.Definitions(jobs=[hold_job])
    run_in_this_process(instance, defs, "hold_job", {}, {"featurestore/command": "hold"}, Path(sys.argv[1]))
"""


def test_featurestore_dev_fails_the_run_of_a_killed_command_and_leaves_a_live_ones_alone(home, instance):
    def hold(pool: str) -> subprocess.Popen:
        command = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(home / "dagster" / "running"), pool], stdout=subprocess.PIPE, text=True
        )
        assert command.stdout.readline() == "holding\n"
        return command

    killed, live = hold(WAREHOUSE_POOL), hold("")
    try:
        killed.kill()
        killed.wait()
        fail_runs_of_dead_commands(Settings.from_env())  # what `featurestore dev` does before the UI starts
        runs = {int(run.tags[PID_TAG]): run for run in instance.get_runs()}
        assert_failed_for_its_dead_process(instance, runs[killed.pid])
        assert instance.get_run_by_id(runs[live.pid].run_id).status == DagsterRunStatus.STARTED
    finally:
        live.kill()
        live.wait()

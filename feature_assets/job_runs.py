"""A job run executed in this process, recorded as a run of the workspace's code location; and runs whose process
died, found and failed so their pool slots come back.

Dagster gives a run a code-location origin only when it is launched through a workspace (the UI, the daemon,
`dagster job launch`), and its UI files a run under its job, in the Overview timeline and on the assets' pages only
by that origin (dagster issue #17707: runs executed in the calling process have none). Launching would start a code
server and a run worker, two more imports of the definitions per command; so the run is created here with the
origin a launch from workspace.yaml gives it, then executed in this process as the run worker would.

A run's process that dies (SIGKILL, the OOM killer, a reboot) leaves it STARTED and its pool slots claimed for ever,
and Dagster's run monitoring cannot see it: the default run launcher has no worker health check. So each run holds a
lock file while its process lives, and the next command fails the runs whose lock nobody holds.
"""

import fcntl
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

__all__ = ["HOST_TAG", "PID_TAG", "fail_runs_of_dead_processes", "run_in_this_process"]

HOST_TAG = "featurestore/host"
PID_TAG = "featurestore/pid"
_WORKSPACE = Path(__file__).resolve().parent.parent / "workspace.yaml"
# Between two looks at the runs holding a pool: short enough to start soon after it is given back.
_POLL_SECONDS = 1.0


def _note(line: str) -> None:
    """What the command waits for or did to other runs: on stderr, so that --json output stays parseable."""
    print(line, file=sys.stderr, flush=True)


def run_in_this_process(
    instance: "dg.DagsterInstance",
    defs: "dg.Definitions",
    job_name: str,
    run_config: dict,
    tags: dict[str, str],
    folder: Path,
    assets: tuple[str, ...] = (),
    note: Callable[[str], None] = _note,
) -> "dg.ExecuteInProcessResult":
    """Runs a job (or some of its assets) in this process as a run of the code location's job, once every pool its
    steps use has room, holding `folder`/<run id>.lock while it runs; the run's slots are given back however it ends."""
    import dagster as dg
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run_iterator

    # In this process whatever the environment's executor (prod's starts a process per step), as before.
    job = defs.resolve_job_def(job_name).with_executor_def(dg.in_process_executor)
    selection = {dg.AssetKey(a) for a in assets} or None
    pools = (job.get_subset(asset_selection=selection) if selection else job).graph.pools
    origin = _workspace_origin(defs.get_repository_def().name, job_name)
    run_id = str(uuid.uuid4())
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f"{run_id}.lock"
    with open(lock, "w") as alive:
        # Taken before the run exists and held until it ends: a run whose lock is free has lost its process.
        fcntl.flock(alive, fcntl.LOCK_EX)
        try:
            run = _create_when_pools_have_room(
                instance,
                folder,
                pools,
                note,
                lambda: instance.create_run_for_job(
                    job_def=job,
                    run_id=run_id,
                    run_config=run_config,
                    tags={**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())},
                    asset_selection=selection,
                    remote_job_origin=origin,
                ),
            )
            events = list(execute_run_iterator(InMemoryJob(job), run, instance))
            if any(_interrupted(event) for event in events):
                # Dagster turns Ctrl-C into the failure of the step it stopped: the command was interrupted.
                raise KeyboardInterrupt
            finished = instance.get_run_by_id(run_id)
            assert finished is not None
            return dg.ExecuteInProcessResult(events, finished, None, job)
        finally:
            # A step stopped by Ctrl-C may keep its slot; nothing of this run runs any more.
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            lock.unlink(missing_ok=True)


def _interrupted(event) -> bool:
    data = event.event_specific_data
    error = getattr(data, "error", None)
    while error is not None:
        if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
            return True
        error = error.cause
    return False


def _workspace_origin(repository_name: str, job_name: str):
    """The origin a run of `job_name` launched from the UI of workspace.yaml's code location carries."""
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    [location] = location_origins_from_yaml_paths([str(_WORKSPACE)])
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, repository_name), job_name)


@contextmanager
def _held(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _create_when_pools_have_room(instance, folder: Path, pools: AbstractSet[str], note: Callable[[str], None], create):
    """Creates the run once fewer runs use each of its pools than the pool's limit, failing first the runs whose
    process died. Waits asleep, saying once which run it waits for. Dagster's in-process executor spins a core on a
    step that waits for a slot (dagster 1.13.27: the pending claim's sleep is min(0, ...), so it never sleeps), so a
    run starts only when its steps will find room, unless a run launched elsewhere (the UI) takes it meanwhile.
    Commands start their runs one at a time, so two never both see room for one."""
    said = ""
    while True:
        with _held(folder / ".start.lock"):
            _fail_runs_of_dead_processes(instance, folder, note)
            holders = _runs_filling(instance, pools, note) if pools else []
            if not holders:
                return create()
        line = "; ".join(_waiting(pool, record, folder) for pool, record in holders)
        if line != said:
            note(line)
            said = line
        time.sleep(_POLL_SECONDS)


def _runs_filling(instance, pools: AbstractSet[str], note: Callable[[str], None]) -> list[tuple[str, object]]:
    """(pool, the oldest run using it) for each of `pools` that as many runs use as its limit allows: runs started
    or starting, the CLI's runs about to start, and runs holding a slot. Slots still held by finished runs (stopped
    from the UI, say) are given back first."""
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
    from dagster._core.storage.tags import POOL_TAG_PREFIX

    storage = instance.event_log_storage
    limits = {pool.name: pool.limit for pool in storage.get_pool_limits()}
    default = storage.get_pool_config().default_pool_limit
    statuses = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    full = []
    for pool in sorted(pools):
        limit = limits.get(pool, default)
        if limit is None:
            continue
        records = instance.get_run_records(RunsFilter(statuses=statuses, tags={f"{POOL_TAG_PREFIX}{pool}": "true"}))
        # A run not started that no command of ours created waits for its launch; it holds nothing yet.
        using = {
            r.dagster_run.run_id: r
            for r in records
            if r.dagster_run.status != DagsterRunStatus.NOT_STARTED or PID_TAG in r.dagster_run.tags
        }
        claimants = {slot.run_id for slot in storage.get_concurrency_info(pool).claimed_slots} - set(using)
        known = (
            {r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(run_ids=list(claimants)))}
            if claimants
            else {}
        )
        for run_id in claimants:
            record = known.get(run_id)
            if record is None or record.dagster_run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                note(f"gave back the {pool} pool slots that the ended run {run_id[:8]} still held")
            else:
                using[run_id] = record
        if len(using) >= limit:
            full.append((pool, min(using.values(), key=lambda r: r.create_timestamp)))
    return full


def _describe(record) -> str:
    """A run as a person finds it in the UI: its id's first 8 characters (as the Runs list shows them), its job,
    the command and process that run it, and since when."""
    run = record.dagster_run
    started = record.start_time or record.create_timestamp.timestamp()
    since = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    who = f", {run.tags['featurestore/command']} in pid {run.tags[PID_TAG]}" if PID_TAG in run.tags else ""
    return f"run {run.run_id[:8]} ({run.job_name}{who}, started {since})"


def _waiting(pool: str, record, folder: Path) -> str:
    line = f"waiting for the {pool} pool, held by {_describe(record)}"
    run = record.dagster_run
    if run.tags.get(HOST_TAG) != socket.gethostname() or not (folder / f"{run.run_id}.lock").exists():
        # Launched from the UI, the daemon or another instance folder: its process is not ours to judge.
        line += "; if nothing runs it any more, terminate it in the Dagster UI (Runs)"
    return line


def fail_runs_of_dead_processes(
    instance: "dg.DagsterInstance", folder: Path, note: Callable[[str], None] = _note
) -> list[str]:
    """Marks failed, with the reason, each unfinished run a command of this host started whose process is gone,
    and gives back its pool slots; returns their ids."""
    with _held(folder / ".start.lock"):
        return _fail_runs_of_dead_processes(instance, folder, note)


def _fail_runs_of_dead_processes(instance, folder: Path, note: Callable[[str], None]) -> list[str]:
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    unfinished = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    failed = []
    for record in instance.get_run_records(RunsFilter(statuses=unfinished, tags={HOST_TAG: host})):
        run = record.dagster_run
        with _lock_if_dead(folder / f"{run.run_id}.lock") as dead:
            current = instance.get_run_by_id(run.run_id) if dead else None
            if current is None or current.is_finished:
                continue
            what = run.tags.get("featurestore/command", "command")
            instance.report_run_failed(
                current,
                f"The process of this {what} (pid {run.tags[PID_TAG]} on {host}) ended without finishing it: "
                f"killed, or the machine restarted. Marked failed by the next command (pid {os.getpid()}), "
                "which gave back its pool slots.",
            )
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            (folder / f"{run.run_id}.lock").unlink(missing_ok=True)
            note(f"marked {_describe(record)} failed: its process ended before the run did; its pool slots are free")
            failed.append(run.run_id)
    return failed


@contextmanager
def _lock_if_dead(path: Path) -> Iterator[bool]:
    """True, holding its lock, when the run's process is gone: its lock file is here and nobody holds it. A run
    without one here belongs to an instance folder elsewhere on this host: not ours to judge."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        dead = True
    except BlockingIOError:
        dead = False
    try:
        yield dead
    finally:
        os.close(fd)

"""A local Spark for the Spark warehouse without a cluster (tests, the demo): one Spark Connect server per folder.

One server, not a SparkSession in each process: dbt runs in a process of its own next to Dagster's, and the Hive
metastore of a local Spark (embedded Derby) admits one JVM. The server owns the folder (warehouse/ holds the Parquet
tables, metastore_db/ the catalog) and both dbt (dbt-spark's session method, through SPARK_REMOTE) and the warehouse
resource connect to it. It keeps running after the process that started it, so later runs start in a second, not
ten; `stop_local_spark` ends it.
"""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from feature_assets.errors import WarehouseError

__all__ = ["LOCAL_SPARK_START_TIMEOUT_S", "local_spark_url", "stop_local_spark"]

LOCAL_SPARK_START_TIMEOUT_S = 180
_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
_DEFAULT_SIGTERM_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(state_file: Path) -> dict | None:
    """The server recorded in the folder, if its process lives and its port answers."""
    try:
        state = json.loads(state_file.read_text())
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, TypeError, KeyError):  # none, or not one this module wrote
        return None
    return {"pid": pid, "port": port} if _alive(pid) and _listening(port) else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(folder: Path, port: int) -> list[str]:
    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    metastore = f"jdbc:derby:;databaseName={folder / 'metastore_db'};create=true"
    settings = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(folder / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": metastore,
        # C1 only (TieredStopAtLevel=1) starts queries sooner, but shrinks the JIT's code cache to 48 MB, which a
        # server answering queries for long fills: the JVM then fails ("Out of space in CodeCache") and the server
        # stops. The full tiered size keeps it running.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={folder} -XX:TieredStopAtLevel=1 "
        "-XX:ReservedCodeCacheSize=240m",
        "spark.driver.memory": "2g",
        # As-of times and label times are UTC hours: the session zone every query computes and reads in.
        "spark.sql.session.timeZone": "UTC",
        # A few partitions per core: the default 200 shuffle partitions cost more than they share on one machine.
        "spark.sql.shuffle.partitions": "8",
        # insert_overwrite of a partitioned table replaces the partitions the query writes, no others.
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.ui.enabled": "false",
    }
    arguments = [item for name, value in settings.items() for item in ("--conf", f"{name}={value}")]
    server = [
        str(spark_submit),
        "--class",
        _SERVER_CLASS,
        "--name",
        "featurestore",
        "--master",
        "local[*]",
        *arguments,
        "spark-internal",
    ]
    # Through a Python one-liner that gives SIGTERM its default action back before it becomes the server: an ignored
    # signal stays ignored across exec, and a process running Dagster in a background job ignores SIGTERM (Dagster
    # gives it SIGINT's handler, which such a job ignores). The JVM would then never stop on stop_local_spark's
    # SIGTERM, only on its SIGKILL 30 s later, without closing its catalog.
    return [sys.executable, "-c", _DEFAULT_SIGTERM_THEN_EXEC, *server]


def local_spark_url(folder: Path) -> str:
    """The Spark Connect URL of the local server serving `folder`, started (once, whatever the number of
    processes asking) when none runs."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / "server.json"
    if state := _running(state_file):
        return f"sc://127.0.0.1:{state['port']}"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise WarehouseError(
            "the local Spark warehouse needs Java 17 (Debian: apt-get install openjdk-17-jre-headless)"
        )
    with open(folder / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if state := _running(state_file):
            return f"sc://127.0.0.1:{state['port']}"
        port = _free_port()
        log = folder / "server.log"
        with open(log, "wb") as output:
            # A session of its own: the server outlives the process (and the terminal) that started it.
            process = subprocess.Popen(
                _command(folder, port),
                cwd=folder,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + LOCAL_SPARK_START_TIMEOUT_S
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                lines = log.read_text(errors="replace").strip().splitlines()
                raise WarehouseError(
                    f"the local Spark did not start: {lines[-1] if lines else 'no output'} (its log: {log})"
                )
            time.sleep(0.2)
        state_file.write_text(json.dumps({"pid": process.pid, "port": port}))
    return f"sc://127.0.0.1:{port}"


def stop_local_spark(folder: Path, timeout: float = 30.0) -> bool:
    """Stops the local server serving `folder`; False when none ran."""
    state_file = Path(folder).resolve() / "server.json"
    state = _running(state_file)
    if state is None:
        return False
    os.killpg(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(state["pid"]) and time.monotonic() < deadline:
        try:
            os.waitpid(state["pid"], os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _alive(state["pid"]):
        os.killpg(state["pid"], signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    return True

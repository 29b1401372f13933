"""`featurestore serve` under bounded HTTP load on loopback, next to the in-process predict_one figure (not a test).

    .venv/bin/python benchmarks/serve.py [--workers 2] [--connections 32] [--seconds 15] [--soak-seconds 60]
        [--users 2000] [--redis-url redis://127.0.0.1:6379/6]

What is served: the registry's two models (churn_model reads two views, its country derived from the user's; ltv_model
one view), trained on synthetic rows by their own `train`, and synthetic snapshots of every view written to Redis
(the production online store) as a sync writes them (feature_assets_tests/served_models.py; benchmarks/predict.py
builds from the real dbt history instead, which takes minutes and times the same code).

Measured, in one run:
- in-process churn_model predict_one p50/p99 and its floor (a bare HGETALL of the user's hash), in a fresh process
  that imports only what the server imports (it checks that no Dagster or dbt module is loaded);
- the server (`featurestore serve --workers N`) answering POST /v1/predict/churn_model for one user at fixed offered
  rates and at saturation, and for 100 users at a fixed rate and at saturation;
- a soak at a fixed rate: errors, and the workers' resident memory before and after.

The load generator is open-loop: request i is due at start + i / rate whatever happened before, and its latency is
counted from when it was due, so a stalled server shows in the percentiles instead of slowing the generator down
(coordinated omission). It keeps --connections keep-alive connections (HTTP/1.1 written and parsed by hand on asyncio,
a few tens of microseconds a request) and never more requests in flight than that; every run is bounded in time.
Saturation is closed-loop: every connection sends its next request as soon as the last is answered. The server and
the generator share this machine's cores: the figures say what one box does, with the load average printed next to
them, and the CPU time the workers and the generator spent per request (from /proc and process_time), which other
load on the box does not change. The Redis database is flushed before and after.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "feature_assets_tests"))

MODEL = "churn_model"
TARGETS = {  # the figures for 2 cores
    "single_rate": 1000.0,  # requests/s a single-entity predict must reach
    "single_p99_ms_at_500": 20.0,
    "batch_p99_ms_at_50": 30.0,
    "in_process_p99_ms": 1.0,
}

IN_PROCESS = r"""
import json, sys, time, random
from feature_assets.serving.server import create_app  # exactly what a worker imports
from feature_assets.serving import FolderModelStore, Predictor, RedisOnlineStore
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"dagster", "dagster_dbt", "dbt"})
url, models, users, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = RedisOnlineStore.from_url(url)
predictor = Predictor(store, FolderModelStore(models))
client = store.client
rng = random.Random(1)
ids = [rng.randint(1, users) for _ in range(calls)]
def timed(fn):
    for i in ids[:500]:
        fn(i)
    samples = []
    for i in ids:
        started = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99)] * 1e3
floor = timed(lambda i: client.hgetall(f"features:user:{i}"))
predict = timed(lambda i: predictor.predict_one("churn_model", i))
print(json.dumps({"heavy_modules": heavy, "floor": floor, "predict_one": predict}))
"""


@dataclass
class Run:
    name: str
    offered: float | None  # requests/s; None: saturation
    seconds: float
    sent: int
    answered: int
    errors: int
    latencies: list[float]  # seconds, of the answered requests
    error_samples: list[str]
    generator_cpu: float = 0.0  # seconds of the load generator's CPU
    server_cpu: float = 0.0  # seconds of the workers' CPU

    @property
    def rate(self) -> float:
        return self.answered / self.seconds

    def percentile(self, share: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1e3

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1e3 if self.latencies else float("nan")


class Connection:
    """One keep-alive HTTP/1.1 connection: a request written by hand, the answer's status and body read back."""

    def __init__(self, host: str, port: int, headers: bytes = b""):
        self.host, self.port, self.headers = host, port, headers  # more header lines, each ending in \r\n
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path.encode(), self.host.encode(), len(body), self.headers, body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(connection: Connection, path: str, body: bytes, due: float, run: Run) -> None:
    try:
        status, payload = await connection.request(path, body)
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        connection.close()
        run.errors += 1
        if len(run.error_samples) < 3:
            run.error_samples.append(f"{type(error).__name__}: {error}")
        return
    if status != 200:
        run.errors += 1
        if len(run.error_samples) < 3:
            run.error_samples.append(f"{status} {payload[:200]!r}")
        return
    run.answered += 1
    run.latencies.append(time.perf_counter() - due)


async def load(host: str, port: int, path: str, bodies: list[bytes], *, name: str, rate: float | None, seconds: float,
               connections: int, headers: bytes = b"") -> Run:  # fmt: skip
    """Open-loop at `rate` requests/s (None: closed-loop saturation) for `seconds`, over `connections` connections."""
    run = Run(name, rate, seconds, 0, 0, 0, [], [])
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(Connection(host, port, headers))
    start = time.perf_counter()
    end = start + seconds

    async def send(connection: Connection, body: bytes, due: float) -> None:
        try:
            await _one(connection, path, body, due, run)
        finally:
            idle.put_nowait(connection)

    tasks: set[asyncio.Task] = set()
    cpu = time.process_time()
    if rate is None:

        async def closed_loop(connection: Connection) -> None:
            # The bodies in order over all connections (run.sent counts them): a body is sent again only once every
            # other one was, however unevenly the connections are answered.
            while time.perf_counter() < end:
                body = bodies[run.sent % len(bodies)]
                run.sent += 1
                await _one(connection, path, body, time.perf_counter(), run)

        await asyncio.gather(*(closed_loop(idle.get_nowait()) for _ in range(connections)))
    else:
        index = 0
        while True:
            due = start + index / rate
            if due >= end:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            connection = await idle.get()  # a free connection; waiting for one counts in the latency
            run.sent += 1
            task = asyncio.create_task(send(connection, bodies[index % len(bodies)], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    run.seconds = max(seconds, time.perf_counter() - start) if rate is None else seconds
    run.generator_cpu = time.process_time() - cpu
    while not idle.empty():
        idle.get_nowait().close()
    return run


def _workers(server_pid: int) -> list[int]:
    """The worker processes of the server (not multiprocessing's resource tracker)."""
    children = map(int, Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split())
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _workers_rss_kb(server_pid: int) -> dict[int, int]:
    """Resident memory (kB) of each worker process of the server."""
    sizes = {}
    for child in _workers(server_pid):
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes[child] = int(line.split()[1])
    return sizes


def _workers_cpu_seconds(server_pid: int) -> float:
    """CPU time (user + system) the server's workers have used: what a request costs, whatever else runs."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for child in _workers(server_pid):
        fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _build(directory: Path, url: str, users: int) -> None:
    from served_models import serve_models, write_snapshots

    from feature_assets.registry import load_registry
    from feature_assets.serving import FolderModelStore, RedisOnlineStore
    from feature_assets.settings import dbt_manifest_path

    registry = load_registry(dbt_manifest_path())
    with RedisOnlineStore.from_url(url) as store:
        write_snapshots(store, registry, users=users)
    serve_models(FolderModelStore(directory / "models"), registry)


def _start_server(directory: Path, url: str, workers: int, log_name: str = "server.log", ready: str = "/healthz",
                  **more: str) -> tuple[subprocess.Popen, int]:  # fmt: skip
    """`featurestore serve` on a free port, once `ready` answers 200; `more`: environment settings."""
    env = {**os.environ, "FEATURE_STORE_HOME": str(directory), "FEATURE_STORE_ONLINE": "redis",
           "FEATURE_STORE_REDIS_URL": url, "FEATURE_STORE_SERVED_LOG_RATE": "0.1", **more}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(directory / log_name, "wb") as log:  # the server writes to its own copy of the file descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "feature_assets.cli", "serve", "--port", "0", "--workers", str(workers)],
            env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )  # fmt: skip
    line = server.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"the server did not start: {line}{(directory / log_name).read_text()[-2000:]}")
    port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
    deadline = time.monotonic() + 120
    import http.client

    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", ready)
            if connection.getresponse().status == 200:
                connection.close()
                break
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(f"the server did not become healthy; log:\n{(directory / log_name).read_text()[-2000:]}")
        time.sleep(0.5)
    return server, port


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the load generator")
    parser.add_argument("--seconds", type=float, default=15.0, help="each fixed-rate and saturation run")
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=5000, help="in-process predict_one calls")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6", help="the online store (flushed)")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    directory = Path(tempfile.mkdtemp(prefix="featurestore-serve-bench-"))
    try:
        print(
            f"Building: {args.users:,} users online in {args.redis_url.rsplit('@', 1)[-1]}, churn + ltv trained ...",
            flush=True,
        )
        _build(directory, args.redis_url, args.users)
        done = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, args.redis_url, str(directory / "models"), str(args.users),
             str(args.calls)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        in_process = json.loads(done.stdout)
        server, port = _start_server(directory, args.redis_url, args.workers)
        try:
            rng = np.random.default_rng(7)
            single = [
                json.dumps({"entities": [{"user_id": int(u)}]}).encode() for u in rng.integers(1, args.users + 1, 5000)
            ]
            batch = [
                json.dumps({"entities": [{"user_id": int(u)} for u in rng.integers(1, args.users + 1, 100)]}).encode()
                for _ in range(200)
            ]
            path = f"/v1/predict/{MODEL}"
            plan = [
                ("warm-up", single, 200.0, 3.0),
                ("1 user @ 250/s", single, 250.0, args.seconds),
                ("1 user @ 500/s", single, 500.0, args.seconds),
                ("1 user @ 1000/s", single, 1000.0, args.seconds),
                ("1 user, saturation", single, None, args.seconds),
                ("100 users @ 50/s", batch, 50.0, args.seconds),
                ("100 users, saturation", batch, None, args.seconds),
            ]
            runs = []
            for name, bodies, rate, seconds in plan:
                cpu = _workers_cpu_seconds(server.pid)
                run = asyncio.run(load("127.0.0.1", port, path, bodies, name=name, rate=rate, seconds=seconds,
                                       connections=args.connections))  # fmt: skip
                run.server_cpu = _workers_cpu_seconds(server.pid) - cpu
                if name != "warm-up":
                    runs.append(run)
                print(f"  {name}: {run.rate:,.0f}/s answered, p50 {run.p50:.2f} ms, p99 {run.percentile(0.99):.2f} ms, "
                      f"errors {run.errors}", flush=True)  # fmt: skip
            rss_before = _workers_rss_kb(server.pid)
            cpu = _workers_cpu_seconds(server.pid)
            soak = asyncio.run(load("127.0.0.1", port, path, single,
                                    name=f"soak: 1 user @ 500/s for {args.soak_seconds:g} s",
                                    rate=500.0, seconds=args.soak_seconds, connections=args.connections))  # fmt: skip
            rss_after = _workers_rss_kb(server.pid)
            soak.server_cpu = _workers_cpu_seconds(server.pid) - cpu
            runs.append(soak)
            load_average = os.getloadavg()
        finally:
            _stop(server)
    finally:
        client.flushdb()
        client.close()
        shutil.rmtree(directory, ignore_errors=True)

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    floor, predict_one = in_process["floor"], in_process["predict_one"]
    print(f"\nfeaturestore serve --workers {args.workers} on {cores} cores, shared with the load generator "
          f"({args.connections} keep-alive connections, one process); Redis at {args.redis_url.rsplit('@', 1)[-1]}; "
          f"load average at the end {load_average[0]:.2f}, {load_average[1]:.2f}, {load_average[2]:.2f}\n")  # fmt: skip
    heavy = ", ".join(in_process["heavy_modules"]) or "none"
    print(f"in-process {MODEL} predict_one (a process importing only the server; Dagster/dbt modules loaded: {heavy}):")
    print(f"  floor (bare HGETALL) p50 {floor[0]:.3f} ms, p99 {floor[1]:.3f} ms")
    print(f"  predict_one          p50 {predict_one[0]:.3f} ms, p99 {predict_one[1]:.3f} ms "
          f"({predict_one[1] / floor[1]:.1f}x the floor's p99); p99 < {TARGETS['in_process_p99_ms']:g} ms: "
          f"{verdict(predict_one[1] < TARGETS['in_process_p99_ms'])}\n")  # fmt: skip
    rows = [("POST /v1/predict/churn_model", "offered/s", "answered/s", "p50 ms", "p99 ms", "errors",
             "vs in-process p50", "CPU ms/request: server, generator", "target")]  # fmt: skip
    for run in runs:
        target = ""
        if run.name == "1 user @ 500/s":
            target = (f"p99 < {TARGETS['single_p99_ms_at_500']:g} ms: "
                      f"{verdict(run.percentile(0.99) < TARGETS['single_p99_ms_at_500'])}")  # fmt: skip
        elif run.name == "1 user, saturation":
            target = f">= {TARGETS['single_rate']:,.0f}/s: {verdict(run.rate >= TARGETS['single_rate'])}"
        elif run.name == "100 users @ 50/s":
            target = (f"p99 < {TARGETS['batch_p99_ms_at_50']:g} ms: "
                      f"{verdict(run.percentile(0.99) < TARGETS['batch_p99_ms_at_50'])}")  # fmt: skip
        elif run is soak:
            grown = sum(rss_after.values()) - sum(rss_before.values())
            target = (f"0 errors: {verdict(run.errors == 0)}; workers' RSS {sum(rss_before.values()) / 1024:.0f} -> "
                      f"{sum(rss_after.values()) / 1024:.0f} MB ({grown / 1024:+.1f} MB)")  # fmt: skip
        rows.append((run.name, "max" if run.offered is None else f"{run.offered:,.0f}", f"{run.rate:,.0f}",
                     f"{run.p50:.2f}", f"{run.percentile(0.99):.2f}", f"{run.errors}",
                     f"{run.p50 / predict_one[0]:.1f}x",
                     f"{run.server_cpu / max(run.answered, 1) * 1e3:.2f}, "
                     f"{run.generator_cpu / max(run.sent, 1) * 1e3:.2f}",
                     target))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    for run in runs:
        for sample in run.error_samples:
            print(f"  {run.name}: {sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

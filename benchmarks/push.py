"""Pushing features over HTTP: rows/s in batches of 500, and one-row latency at a fixed rate (not a test).

    .venv/bin/python benchmarks/push.py [--workers 2] [--seconds 10] [--connections 4]
        [--redis-url redis://127.0.0.1:6379/7] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]

What runs: `featurestore serve --workers N` with the production stores, PostgreSQL (a schema of its own, dropped
afterwards) and Redis (the database given, flushed before and after), taking POST /v1/push/user_features; every
accepted row goes to the warehouse's pushed history and then to Redis, and the run checks that both hold every row.

Measured, in one run:
- the baseline: the same batches pushed in this process through FeatureStore.push, one at a time (no HTTP);
- over HTTP, batches of 500 rows, closed loop on --connections connections (each sends its next batch once the last
  is answered): rows/s, p50/p99 per batch;
- over HTTP, one row per request, open loop at 200 requests/s (latency counted from when a request was due, see
  benchmarks/serve.py): p50/p99, next to one-entity reads (POST /v1/features) at the same rate, the same server's
  floor.
The server and the load generator share this machine's cores; compare ratios within one run.
"""

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve import _start_server, _stop, _workers_cpu_seconds, load  # noqa: E402

from feature_assets.registry import load_registry  # noqa: E402
from feature_assets.serving import RedisOnlineStore  # noqa: E402
from feature_assets.settings import dbt_manifest_path  # noqa: E402
from feature_assets.store import FeatureStore  # noqa: E402
from feature_assets.warehouses import PostgresWarehouse  # noqa: E402

VIEW = load_registry(dbt_manifest_path()).view("user_features")
TARGETS = {"batch_rows_per_second": 20_000.0, "single_p99_ms_at_200": 10.0}  # the figures for 2 cores
BATCH = 500


def _rows(first_user: int, count: int, computed_at: datetime) -> list[dict]:
    stamp = computed_at.isoformat() + "Z"
    return [
        {"user_id": user, "computed_at": stamp, "age": 20 + user % 50, "country": ("DE", "FR", "US")[user % 3],
         "plan": ("free", "basic", "pro")[user % 3], "events_30d": user % 97, "avg_order_30d": user / 7}
        for user in range(first_user, first_user + count)
    ]  # fmt: skip


def _bodies(count: int, rows: int, start: datetime) -> list[bytes]:
    """`count` request bodies of `rows` rows each, every row a new (user, computed_at)."""
    return [
        json.dumps({"rows": _rows(1 + index * rows % 1_000_000, rows, start + timedelta(microseconds=index))}).encode()
        for index in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4, help="connections of the batch run (closed loop)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each HTTP run")
    parser.add_argument("--baseline-batches", type=int, default=40)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)

    schema = f"fs_bench_push_{secrets.token_hex(4)}"
    flush = redis.Redis.from_url(args.redis_url)
    flush.flushdb()
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    warehouse = PostgresWarehouse(args.postgres_url, schema)
    try:
        # The baseline: FeatureStore.push in this process, batch after batch (users 1..), no HTTP.
        baseline = [json.loads(body)["rows"] for body in _bodies(args.baseline_batches, BATCH, start)]
        with RedisOnlineStore.from_url(args.redis_url) as online:
            store = FeatureStore(warehouse=warehouse, online_store=online)
            store.push("user_features", baseline[0])  # creates the table
            began = time.perf_counter()
            for rows in baseline[1:]:
                store.push("user_features", rows)
            in_process = (len(baseline) - 1) * BATCH / (time.perf_counter() - began)

        later = start + timedelta(seconds=1)  # new computed_at for every HTTP row: nothing is a replay
        # Room for 120,000 rows/s: a run that outpaces its bodies would send replays, which write nothing.
        bodies = _bodies(int(args.seconds * 240), BATCH, later)
        singles = [
            json.dumps({"rows": _rows(2_000_000 + i, 1, later)}).encode() for i in range(int(args.seconds * 200))
        ]
        warm_up = [json.dumps({"rows": _rows(3_000_000 + i, 1, later)}).encode() for i in range(600)]
        with tempfile.TemporaryDirectory(prefix="featurestore-push-bench-") as directory:
            server, port = _start_server(
                Path(directory), args.redis_url, args.workers, ready="/metrics",  # healthz wants served models
                FEATURE_STORE_WAREHOUSE="postgres", FEATURE_STORE_POSTGRES_URL=args.postgres_url,
                FEATURE_STORE_POSTGRES_SCHEMA=schema, FEATURE_STORE_SERVED_LOG_RATE="0",
            )  # fmt: skip
            try:
                cpu = _workers_cpu_seconds(server.pid)
                batches = asyncio.run(load("127.0.0.1", port, "/v1/push/user_features", bodies, name="batches",
                                           rate=None, seconds=args.seconds, connections=args.connections))  # fmt: skip
                batch_cpu = _workers_cpu_seconds(server.pid) - cpu
                # A warm-up at the same rate, not counted: each worker opens the warehouse connections it needs.
                asyncio.run(load("127.0.0.1", port, "/v1/push/user_features", warm_up, name="warm-up",
                                 rate=200.0, seconds=3.0, connections=32))  # fmt: skip
                cpu = _workers_cpu_seconds(server.pid)
                single = asyncio.run(load("127.0.0.1", port, "/v1/push/user_features", singles, name="one row",
                                          rate=200.0, seconds=args.seconds, connections=32))  # fmt: skip
                single_cpu = _workers_cpu_seconds(server.pid) - cpu
                reads = [json.dumps({"entities": [{"user_id": 2_000_000 + i}]}).encode() for i in range(len(singles))]
                read = asyncio.run(load("127.0.0.1", port, "/v1/features/user_features", reads, name="one read",
                                        rate=200.0, seconds=args.seconds, connections=32))  # fmt: skip
            finally:
                _stop(server)
        if batches.sent > len(bodies):
            raise SystemExit(
                f"the batch run sent {batches.sent} batches of the {len(bodies)} made: the rest were replays, which "
                "write nothing, so its rate would be wrong; make more bodies"
            )
        pushed = warehouse.query(f"select count(*) as n from {VIEW.name}_pushed")["n"].iat[0]
        expected = len(baseline) * BATCH + min(batches.answered, len(bodies)) * BATCH + single.answered + len(warm_up)
        keys = sum(1 for _ in flush.scan_iter(match="features:user:*", count=10_000))
    finally:
        flush.flushdb()
        with psycopg.connect(args.postgres_url, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")

    rows_per_second = batches.answered * BATCH / batches.seconds
    print(f"\npush to PostgreSQL + Redis, featurestore serve --workers {args.workers} on {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f}), shared with the load generator:")  # fmt: skip
    print(f"  in-process FeatureStore.push, batches of {BATCH}: {in_process:,.0f} rows/s (baseline)")
    print(f"  HTTP, batches of {BATCH}, {args.connections} connections: {rows_per_second:,.0f} rows/s "
          f"({rows_per_second / in_process:.2f}x the baseline), {batches.errors} errors, per batch p50 "
          f"{batches.p50:.1f} ms p99 {batches.percentile(0.99):.1f} ms, workers' CPU "
          f"{batch_cpu / max(1, batches.answered) * 1e3 / BATCH * 1000:.0f} us a row; "
          f">= {TARGETS['batch_rows_per_second']:,.0f} rows/s: "
          f"{'yes' if rows_per_second >= TARGETS['batch_rows_per_second'] else 'NO'}")  # fmt: skip
    print(f"  HTTP, one row a request at 200/s: {single.rate:,.0f}/s answered, {single.errors} errors, p50 "
          f"{single.p50:.2f} ms p99 {single.percentile(0.99):.2f} ms, workers' CPU "
          f"{single_cpu / max(1, single.answered) * 1e3:.2f} ms a request; "
          f"p99 < {TARGETS['single_p99_ms_at_200']:g} ms: "
          f"{'yes' if single.percentile(0.99) < TARGETS['single_p99_ms_at_200'] else 'NO'}")  # fmt: skip
    print(
        f"  HTTP, one-row read (POST /v1/features) at 200/s, the same server's floor: p50 {read.p50:.2f} ms p99 "
        f"{read.percentile(0.99):.2f} ms; the push's p99 is {single.percentile(0.99) / read.percentile(0.99):.1f}x"
    )
    print(f"  written: {pushed:,} rows in the warehouse (expected {expected:,}), {keys:,} users in Redis")
    for run in (batches, single, read):
        for sample in run.error_samples:
            print(f"  {run.name}: {sample}")
    return 0 if pushed == expected and not (batches.errors or single.errors or read.errors) else 1


if __name__ == "__main__":
    sys.exit(main())

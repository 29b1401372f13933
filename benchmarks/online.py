"""Online store figures, all measured in one run on the same kind of data (not a test).

    .venv/bin/python benchmarks/online.py [--users 200000] [--sync-users 100000]
        [--redis-url redis://127.0.0.1:6379/12] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]

Sync throughput:
- the Redis write path through the public API (encode_batch + store.writer().write, the warehouse already read),
  against the naive sync of the design note (pandas iterrows / itertuples, a redis-py pipeline with
  hset(mapping=...) + expire per row) and against Redis alone executing the same bytes, encoded beforehand (with
  the CPU time redis-server spends per row, which caps any sync on this box);
- the end-to-end sync (sync_online_store, full resync: the latest-snapshot query included) from DuckDB and from
  PostgreSQL (a schema of its own, dropped afterwards; skipped with --postgres-url '').
Typed read latency against the floor, a bare redis-py HGETALL (pipelined for batches), on one Redis and on a local
3-master cluster (throwaway servers on loopback ports, from feature_assets_tests/redis_servers.py).

Sync figures are the median of --repeats runs; the box is shared, so compare ratios within one run. The Redis
database given is flushed before and after. Snapshots are dated in the current hour (the sync skips snapshots
older than the view's TTL).
"""

import argparse
import gc
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "feature_assets_tests"))

from redis_servers import start_cluster  # noqa: E402

from feature_assets.online_sync import iter_latest_snapshots, sync_online_store  # noqa: E402
from feature_assets.registry import load_registry  # noqa: E402
from feature_assets.serving import FeatureReader, RedisOnlineStore, SqliteOnlineStore, encode_batch  # noqa: E402
from feature_assets.serving.online_store.redis import WRITE_NEWER  # noqa: E402
from feature_assets.serving.redis_io import read  # noqa: E402
from feature_assets.settings import dbt_manifest_path  # noqa: E402
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, Warehouse  # noqa: E402

AS_OF = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
VIEW = load_registry(dbt_manifest_path()).view("user_features")
# The warehouse table's SQL types: the features' from the registry (the dbt contract), the key's and time's fixed.
COLUMNS = {VIEW.entity_key: "bigint", VIEW.timestamp: "timestamp", **{f.name: f.data_type for f in VIEW.features}}
PREFIX = "features:user:"

TARGET_WRITE = 250_000
TARGET_DUCKDB = 200_000
TARGET_POSTGRES = 100_000
BEFORE = {"duckdb": 132_000, "postgres": 33_000}  # end to end, 100,000 users, before the redis-py rewrite


def frames(users: int, seed: int = 1) -> list[pd.DataFrame]:
    """user_features with two snapshots per user (the sync keeps the latest), shaped like the demo's."""
    rng = np.random.default_rng(seed)
    out = []
    for as_of in (AS_OF - timedelta(days=1), AS_OF):
        has_orders = rng.random(users) < 0.6
        out.append(
            pd.DataFrame(
                {
                    "user_id": np.arange(1, users + 1, dtype=np.int64),
                    "computed_at": np.full(users, np.datetime64(as_of, "us")),
                    "age": rng.integers(18, 80, users),
                    "country": pd.array(
                        rng.choice(np.array(["US", "DE", "FR", "GB", "BR", "IN", "JP"], dtype=object), users),
                        dtype="str",
                    ),
                    "plan": pd.array(rng.choice(np.array(["free", "basic", "pro"], dtype=object), users), dtype="str"),
                    "events_30d": rng.poisson(40, users),
                    "avg_order_30d": np.where(has_orders, rng.lognormal(3, 0.6, users), np.nan),
                }
            )
        )
    return out


def fill(warehouse: Warehouse, users: int) -> Warehouse:
    with warehouse.connect() as con:
        for frame in frames(users):
            warehouse.append(con, "user_features", frame, COLUMNS)
        if warehouse.kind == "postgres":
            con.execute("analyze user_features")
    return warehouse


def naive_sync(client: redis.Redis, frame: pd.DataFrame, ttl: int, rows: str) -> float:
    """The design note's sync: per-row Python over the frame, HSET(mapping) + EXPIRE per key, pipelined."""
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    iterator = frame.iterrows() if rows == "iterrows" else enumerate(frame.itertuples(index=False))
    for n, (_, row) in enumerate(iterator, start=1):
        if rows == "iterrows":
            mapping = {k: str(v) for k, v in row.items() if k != "user_id" and not pd.isna(v)}
            key = f"{PREFIX}{row['user_id']}"
        else:
            mapping = {k: str(v) for k, v in row._asdict().items() if k != "user_id" and not pd.isna(v)}
            key = f"{PREFIX}{row.user_id}"
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl)
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return len(frame) / (time.perf_counter() - started)


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU time of the thread that executes Redis commands (the process's figure also counts background threads)."""
    cpu = client.info("cpu")
    return cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"]


def median_sync(client: redis.Redis, run, new_keys: bool, repeats: int) -> tuple[float, float]:
    """The median run of `repeats` (one run is at the mercy of whatever else the box does that second): rows/s,
    and Redis's CPU time per row (only meaningful for a run that sends nothing else to Redis)."""
    runs = []
    for _ in range(repeats):
        if new_keys:
            client.flushdb()
        cpu = redis_cpu_seconds(client)
        rows, seconds = run()
        runs.append((rows / seconds, (redis_cpu_seconds(client) - cpu) / rows))
    return sorted(runs)[len(runs) // 2]


def write_path(store: RedisOnlineStore, latest: list[pd.DataFrame]):
    """The sync's Redis side through the public API: encode each frame, write it."""

    def run() -> tuple[int, float]:
        started = time.perf_counter()
        with store.writer(VIEW) as writer:
            for frame in latest:
                writer.write(encode_batch(VIEW, frame))
        return sum(map(len, latest)), time.perf_counter() - started

    return run


def redis_alone(store: RedisOnlineStore, latest: list[pd.DataFrame]):
    """Redis executing the write path's exact bytes (the same script calls), encoded beforehand and sent the same way
    (one batch in flight while the replies of the last are read): what a sync with free encoding would reach."""
    writer = store.writer(VIEW)
    payloads = []
    for frame in latest:
        batch = encode_batch(VIEW, frame)
        keep = batch.expires_at_ms > time.time() * 1000
        ((_node, calls),) = writer.commands(batch, keep).items()
        payloads.append((b"".join(call for call, _ in calls), len(calls), sum(rows for _, rows in calls)))
    writer.abort()
    store.sync_client.script_load(WRITE_NEWER)  # the writer sends SCRIPT LOAD ahead of each batch; here once

    def run() -> tuple[int, float]:
        pool = store.sync_client.connection_pool
        connection = pool.get_connection()
        try:
            started = time.perf_counter()
            in_flight = 0
            for payload, calls, _ in payloads:
                connection.send_packed_command([payload])
                read(connection, in_flight, 30)
                in_flight = calls
            read(connection, in_flight, 30)
            seconds = time.perf_counter() - started
        finally:
            pool.release(connection)
        return sum(rows for _, _, rows in payloads), seconds

    return run


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


def read_figures(store: RedisOnlineStore, users: int, reads: int, seed: int = 2) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of the bare HGETALL floor and of the typed reads, interleaved in rounds so a noisy second of the
    box hits both alike."""
    client = store.client
    reader = FeatureReader(store, VIEW)
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, users + 1, reads).tolist()
    single = {"hgetall": [], "get_entity": []}
    for user_id in ids[:200]:  # warm up connections and caches before any timing
        client.hgetall(f"{PREFIX}{user_id}")
        reader.get_entity(user_id)
    gc.collect()
    gc.disable()
    try:
        for user_id in ids:
            started = time.perf_counter()
            client.hgetall(f"{PREFIX}{user_id}")
            middle = time.perf_counter()
            reader.get_entity(user_id)
            single["hgetall"].append(middle - started)
            single["get_entity"].append(time.perf_counter() - middle)
    finally:
        gc.enable()

    def pipelined_hgetall(batch: list[int]) -> list:
        pipe = client.pipeline(transaction=False)
        for user_id in batch:
            pipe.hgetall(f"{PREFIX}{user_id}")
        return pipe.execute()

    # 1,000 batches: the p99 is the 10th worst.
    sample = [rng.integers(1, users + 1, 1000).tolist() for _ in range(1000)]
    pipelined_hgetall(sample[0])
    reader.get_online_features(sample[0])
    batch = {"hgetall": [], "get_online_features": []}
    gc.collect()
    gc.disable()
    try:
        for entity_ids in sample:
            for name, fn in (("hgetall", pipelined_hgetall), ("get_online_features", reader.get_online_features)):
                started = time.perf_counter()
                fn(entity_ids)
                batch[name].append(time.perf_counter() - started)
    finally:
        gc.enable()
    return {
        "1 hgetall": percentiles(single["hgetall"]),
        "1 get_entity": percentiles(single["get_entity"]),
        "1000 hgetall": percentiles(batch["hgetall"]),
        "1000 get_online_features": percentiles(batch["get_online_features"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000, help="users for the Redis write path and the reads")
    parser.add_argument("--sync-users", type=int, default=100_000, help="users for the end-to-end syncs")
    parser.add_argument("--naive-users", type=int, default=20_000, help="rows for the (slow) naive syncs")
    parser.add_argument("--reads", type=int, default=5000, help="single-entity reads per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per sync figure (the median is shown)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-cluster", action="store_true", help="skip the local-cluster figures")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    rows_out: list[tuple[str, str, str, str]] = []
    schema = f"fs_bench_{secrets.token_hex(4)}"

    def row(name: str, figure: str, ratio: str = "", note: str = "") -> None:
        rows_out.append((name, figure, ratio, note))

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        print(
            f"Preparing user_features, 2 snapshots per user: {args.users:,} and {args.sync_users:,} users (DuckDB)",
            flush=True,
        )
        big = fill(DuckDBWarehouse(str(directory / "big.duckdb")), args.users)
        duck = fill(DuckDBWarehouse(str(directory / "sync.duckdb")), args.sync_users)
        postgres = None
        if args.postgres_url:
            print(f"... and {args.sync_users:,} users in PostgreSQL schema {schema}", flush=True)
            postgres = fill(PostgresWarehouse(args.postgres_url, schema), args.sync_users)
        with big.connect() as con:
            latest = list(iter_latest_snapshots(big, con, VIEW))
        ttl = int(VIEW.online_ttl.total_seconds())
        store = RedisOnlineStore.from_url(args.redis_url, timeout=5)

        try:
            print("Syncs ...", flush=True)
            naive_frame = pd.concat(latest).head(args.naive_users)
            naive_iterrows = naive_sync(client, naive_frame, ttl, "iterrows")
            client.flushdb()
            naive_itertuples = naive_sync(client, naive_frame, ttl, "itertuples")

            fresh = median_sync(client, write_path(store, latest), True, args.repeats)
            overwrite = median_sync(client, write_path(store, latest), False, args.repeats)
            alone = redis_alone(store, latest)
            ceiling_fresh = median_sync(client, alone, True, args.repeats)
            ceiling_overwrite = median_sync(client, alone, False, args.repeats)

            def end_to_end(warehouse: Warehouse):
                def run() -> tuple[int, float]:
                    result = sync_online_store(warehouse, store, VIEW, full_resync=True)
                    return result.rows_written, result.seconds

                return run

            e2e = {"duckdb": median_sync(client, end_to_end(duck), True, args.repeats)}
            if postgres is not None:
                e2e["postgres"] = median_sync(client, end_to_end(postgres), True, args.repeats)
            with SqliteOnlineStore(directory / "online.sqlite") as sqlite_store:
                sqlite = sync_online_store(duck, sqlite_store, VIEW, full_resync=True).rows_per_second
        finally:
            if postgres is not None:
                with psycopg.connect(args.postgres_url, autocommit=True) as con:
                    con.execute(f"drop schema if exists {schema} cascade")

        def sync(name: str, figures: tuple[float, float] | float, note: str = "", cpu: bool = False) -> None:
            rate, cpu_per_row = figures if isinstance(figures, tuple) else (figures, 0.0)
            if cpu:
                note = f"Redis CPU {cpu_per_row * 1e6:.2f} us/row: <= {1 / cpu_per_row:,.0f} rows/s on a whole core"
            row(name, f"{rate:,.0f} rows/s", f"{rate / naive_iterrows:.1f}x", note)

        sync("sync: naive, iterrows", naive_iterrows)
        sync("sync: naive, itertuples", naive_itertuples)
        for name, figures in (("new keys", fresh), ("overwrite", overwrite)):
            sync(
                f"write path ({args.users:,}): ours, {name}",
                figures,
                f">= {TARGET_WRITE:,} rows/s: {verdict(figures[0] >= TARGET_WRITE)}",
            )
        sync("write path: Redis alone (pre-encoded), new keys", ceiling_fresh, cpu=True)
        sync("write path: Redis alone (pre-encoded), overwrite", ceiling_overwrite, cpu=True)
        for kind, target in (("duckdb", TARGET_DUCKDB), ("postgres", TARGET_POSTGRES)):
            if kind in e2e:
                rate = e2e[kind][0]
                note = f">= {target:,} rows/s: {verdict(rate >= target)} (before: {BEFORE[kind]:,})"
                sync(f"end to end ({args.sync_users:,}) from {kind}", e2e[kind], note)
        sync("end to end from duckdb, SQLite store", sqlite, "orientation")

        print("Reads on one Redis ...", flush=True)
        sync_online_store(big, store, VIEW, full_resync=True)
        read_sets = {store.describe(): read_figures(store, args.users, args.reads)}
        store.close()
        client.flushdb()
        if not args.no_cluster:
            print("Reads on a local 3-master cluster ...", flush=True)
            cluster = start_cluster(directory / "cluster")
            try:
                with RedisOnlineStore.from_url(cluster.url, timeout=5) as cluster_store:
                    rate = sync_online_store(big, cluster_store, VIEW).rows_per_second
                    cluster_row = (f"end to end ({args.users:,}) from duckdb, 3-master cluster", f"{rate:,.0f} rows/s")
                    rows_out.insert(
                        len(rows_out) - 1, (*cluster_row, f"{rate / naive_iterrows:.1f}x", "orientation (one run)")
                    )
                    read_sets["local 3-master cluster"] = read_figures(cluster_store, args.users, args.reads)
            finally:
                cluster.stop()

    def latency(name: str, figures: tuple[float, float], floor: tuple[float, float], note: str = "") -> None:
        ratio = f"{figures[0] / floor[0]:.2f}x / {figures[1] / floor[1]:.2f}x"
        row(name, f"p50 {figures[0]:.3f} ms, p99 {figures[1]:.3f} ms", ratio, note)

    for where, figures in read_sets.items():
        where = "cluster" if "cluster" in where else "one Redis"
        floor_1, ours_1 = figures["1 hgetall"], figures["1 get_entity"]
        floor_k, ours_k = figures["1000 hgetall"], figures["1000 get_online_features"]
        latency(f"read 1, {where}: bare HGETALL (floor)", floor_1, floor_1)
        latency(
            f"read 1, {where}: get_entity", ours_1, floor_1, f"<= 1.3x p50: {verdict(ours_1[0] <= 1.3 * floor_1[0])}"
        )
        latency(f"read 1000, {where}: pipelined HGETALL (floor)", floor_k, floor_k)
        latency(f"read 1000, {where}: get_online_features", ours_k, floor_k, f"p99 < 10 ms: {verdict(ours_k[1] < 10)}")

    client.flushdb()
    print(
        f"\nuser_features: write path and reads on {args.users:,} users, end-to-end syncs on {args.sync_users:,}, "
        f"naive syncs on {min(args.naive_users, args.users):,} rows; {store.describe()}\n"
    )
    header = ("measure", "figure", "vs baseline", "target")
    widths = [max(len(r[i]) for r in [*rows_out, header]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in rows_out:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    print(
        "\nBaselines: syncs vs naive iterrows; reads vs a bare redis-py HGETALL of the same batch size on the same "
        "server"
        " (p50 / p99 ratios). Write path = encode_batch + writer.write on frames already read from the warehouse."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Online store figures, all measured in one run on the same data (not a test).

    .venv/bin/python benchmarks/online.py [--users 200000] [--redis-url redis://127.0.0.1:6379/12]

Sync throughput against the naive sync of the design note (pandas iterrows / itertuples, a redis-py
pipeline with hset(mapping=...) + expire per row) and against Redis alone executing the same commands
(with the CPU time redis-server spends per row, which caps any sync on this box); typed read latency
against the floor, a bare redis-py HGETALL (pipelined for batches). Sync figures are the median of
--repeats runs; the box is shared, so compare ratios within one run. The Redis database given is
flushed before and after.
"""

import argparse
import gc
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_assets.online_sync import iter_latest_snapshots, sync_online_store  # noqa: E402
from feature_assets.project import dbt_project  # noqa: E402
from feature_assets.registry import load_registry  # noqa: E402
from feature_assets.resources.warehouse import Warehouse  # noqa: E402
from feature_assets.serving import FeatureReader, RedisOnlineStore, SqliteOnlineStore, encode_batch  # noqa: E402

AS_OF = datetime(2026, 3, 31)
VIEW = load_registry(dbt_project.manifest_path).view("user_features")
# The warehouse table's SQL types: the features' from the registry (the dbt contract), the key's and time's fixed.
COLUMNS = {VIEW.entity_key: "bigint", VIEW.timestamp: "timestamp", **{f.name: f.data_type for f in VIEW.features}}


def make_warehouse(directory: Path, users: int, seed: int = 1) -> Warehouse:
    """user_features with two snapshots per user (the sync keeps the latest), shaped like the demo's."""
    rng = np.random.default_rng(seed)
    warehouse = Warehouse(kind="duckdb", duckdb_path=str(directory / "warehouse.duckdb"), schema_name="main")
    with warehouse.connect() as con:
        for as_of in (AS_OF - timedelta(days=1), AS_OF):
            has_orders = rng.random(users) < 0.6
            frame = pd.DataFrame(
                {
                    "user_id": np.arange(1, users + 1, dtype=np.int64),
                    "computed_at": np.full(users, np.datetime64(as_of, "us")),
                    "age": rng.integers(18, 80, users),
                    "country": pd.array(
                        rng.choice(np.array(["US", "DE", "FR", "GB", "BR", "IN", "JP"], dtype=object), users), dtype="str"
                    ),
                    "plan": pd.array(rng.choice(np.array(["free", "basic", "pro"], dtype=object), users), dtype="str"),
                    "events_30d": rng.poisson(40, users),
                    "avg_order_30d": np.where(has_orders, rng.lognormal(3, 0.6, users), np.nan),
                }
            )
            warehouse.append(con, "user_features", frame, COLUMNS)
    return warehouse


def latest_frame(warehouse: Warehouse) -> pd.DataFrame:
    return warehouse.query("select * from user_features where computed_at = ?", [AS_OF])


def naive_sync(client: redis.Redis, frame: pd.DataFrame, ttl: int, rows: str) -> float:
    """The design note's sync: per-row Python over the frame, HSET(mapping) + EXPIRE per key, pipelined."""
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    iterator = frame.iterrows() if rows == "iterrows" else enumerate(frame.itertuples(index=False))
    for n, (_, row) in enumerate(iterator, start=1):
        if rows == "iterrows":
            mapping = {k: str(v) for k, v in row.items() if k != "user_id" and not pd.isna(v)}
            key = f"features:user:{row['user_id']}"
        else:
            mapping = {k: str(v) for k, v in row._asdict().items() if k != "user_id" and not pd.isna(v)}
            key = f"features:user:{row.user_id}"
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


def redis_alone(store: RedisOnlineStore, warehouse: Warehouse):
    """Redis executing the sync's exact commands, encoded beforehand: what the sync would reach with free encoding."""
    with warehouse.connect() as con:
        batches = [encode_batch(VIEW, frame) for frame in iter_latest_snapshots(warehouse, con, VIEW)]
    with store.writer(VIEW) as writer:
        payloads = [(writer._payload(batch), len(batch)) for batch in batches]

    def run() -> tuple[int, float]:
        writer = store.writer(VIEW)
        started = time.perf_counter()
        for payload in payloads:
            writer._queue.put(payload)
        writer.finish()
        return sum(n for _, n in payloads), time.perf_counter() - started

    return run


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


def timed(fn, args_list) -> tuple[float, float]:
    gc.collect()
    gc.disable()
    try:
        samples = []
        for args in args_list:
            started = time.perf_counter()
            fn(*args)
            samples.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return percentiles(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--naive-users", type=int, default=50_000, help="rows for the (slow) naive syncs")
    parser.add_argument("--reads", type=int, default=5000, help="single-entity reads per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per sync figure (the median is shown)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    rows_out: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        print(f"Preparing user_features: {args.users:,} users x 2 snapshots (DuckDB) ...", flush=True)
        warehouse = make_warehouse(directory, args.users)
        ttl = int(VIEW.online_ttl.total_seconds())

        naive_frame = latest_frame(warehouse).head(args.naive_users)
        naive_iterrows = naive_sync(client, naive_frame, ttl, "iterrows")
        client.flushdb()
        naive_itertuples = naive_sync(client, naive_frame, ttl, "itertuples")
        client.flushdb()

        store = RedisOnlineStore(client)

        def ours() -> tuple[int, float]:
            result = sync_online_store(warehouse, store, VIEW, full_resync=True)
            return result.rows_written, result.seconds

        fresh = median_sync(client, ours, True, args.repeats)
        overwrite = median_sync(client, ours, False, args.repeats)
        alone = redis_alone(store, warehouse)
        ceiling_fresh = median_sync(client, alone, True, args.repeats)
        ceiling_overwrite = median_sync(client, alone, False, args.repeats)
        with SqliteOnlineStore(directory / "online.sqlite") as sqlite_store:
            sqlite = sync_online_store(warehouse, sqlite_store, VIEW, full_resync=True).rows_per_second

        def sync(name: str, rate: float, note: str) -> None:
            rows_out.append((name, f"{rate:,.0f} rows/s", f"{rate / naive_iterrows:.1f}x", note))

        def ceiling(name: str, figures: tuple[float, float]) -> None:
            rate, cpu_per_row = figures
            note = f"Redis CPU {cpu_per_row * 1e6:.1f} us/row: <= {1 / cpu_per_row:,.0f} rows/s on a whole core"
            sync(name, rate, note)

        sync("sync: naive, iterrows", naive_iterrows, "")
        sync("sync: naive, itertuples", naive_itertuples, "")
        target = 200_000
        for name, (rate, _) in (("new keys", fresh), ("overwrite", overwrite)):
            sync(f"sync: ours, {name}", rate, f">= {target:,} rows/s: {'yes' if rate >= target else 'NO'}")
        ceiling("sync: Redis alone (pre-encoded), new keys", ceiling_fresh)
        ceiling("sync: Redis alone (pre-encoded), overwrite", ceiling_overwrite)
        sync("sync: ours, SQLite store", sqlite, "orientation")

        reader = FeatureReader(store, VIEW)
        rng = np.random.default_rng(2)
        prefix = "features:user:"
        ids = rng.integers(1, args.users + 1, args.reads).tolist()

        def design_note_read(user_id: int) -> pd.DataFrame:
            raw = client.hgetall(f"{prefix}{user_id}")
            row = {k.decode(): v.decode() for k, v in raw.items()}
            typed = {"user_id": user_id, "age": int(row["age"]), "events_30d": int(row["events_30d"])}
            typed["avg_order_30d"] = float(row["avg_order_30d"]) if row.get("avg_order_30d", "\x00") != "\x00" else None
            typed.update(country=row["country"], plan=row["plan"], computed_at=pd.Timestamp(row["computed_at"]))
            return pd.DataFrame([typed])

        # Warm up connections and caches before any timing.
        for user_id in ids[:200]:
            client.hgetall(f"{prefix}{user_id}")
            reader.get_entity(user_id)
        floor_1 = timed(lambda i: client.hgetall(f"{prefix}{i}"), [(i,) for i in ids])
        ours_1 = timed(reader.get_entity, [(i,) for i in ids])
        note_1 = timed(design_note_read, [(i,) for i in ids[: args.reads // 5]])

        def pipelined_hgetall(batch: list[int]) -> list:
            pipe = client.pipeline(transaction=False)
            for user_id in batch:
                pipe.hgetall(f"{prefix}{user_id}")
            return pipe.execute()

        batches = {}
        for size, count in ((100, 1000), (1000, 1000)):  # a p99 of 1,000 samples: the 10th worst
            sample = [rng.integers(1, args.users + 1, size).tolist() for _ in range(count)]
            pipelined_hgetall(sample[0])
            reader.get_online_features(sample[0])
            batches[size] = (timed(pipelined_hgetall, [(b,) for b in sample]), timed(reader.get_online_features, [(b,) for b in sample]))

        def latency(name: str, figures: tuple[float, float], floor: tuple[float, float], note: str) -> None:
            rows_out.append(
                (name, f"p50 {figures[0]:.3f} ms, p99 {figures[1]:.3f} ms", f"{figures[0] / floor[0]:.2f}x / {figures[1] / floor[1]:.2f}x", note)
            )

        latency("read 1: bare HGETALL (floor)", floor_1, floor_1, "")
        latency(
            "read 1: get_entity (typed dict)",
            ours_1,
            floor_1,
            f"<= 1.3x p50 / 2x p99: {'yes' if ours_1[0] <= 1.3 * floor_1[0] and ours_1[1] <= 2 * floor_1[1] else 'NO'}",
        )
        latency("read 1: design note (HGETALL, cast, 1-row frame)", note_1, floor_1, "orientation")
        for size, (floor, ours) in batches.items():
            latency(f"read {size}: pipelined HGETALL (floor)", floor, floor, "")
            note = f"p99 < 10 ms: {'yes' if ours[1] < 10 else 'NO'}" if size == 1000 else ""
            latency(f"read {size}: get_online_features (frame)", ours, floor, note)

    client.flushdb()
    print(f"\nuser_features: {args.users:,} users; naive syncs on {min(args.naive_users, args.users):,} rows; Redis {store.describe()}\n")
    widths = [max(len(r[i]) for r in rows_out + [("measure", "figure", "vs baseline", "target")]) for i in range(4)]
    header = ("measure", "figure", "vs baseline", "target")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows_out:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print("\nBaselines: syncs vs naive iterrows; reads vs the bare HGETALL of the same batch size (p50 / p99 ratios).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

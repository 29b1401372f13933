"""One-entity predict latency per model and key path, with and without served-feature logging, all measured in
one run (not a test).

    .venv/bin/python benchmarks/predict.py [--users 2000] [--days 150] [--calls 6000]
        [--redis-url redis://127.0.0.1:6379/8] [--log-url redis://127.0.0.1:6379/7] [--profile]

Builds what a deployment serves, with the project's own code: demo data for --users users, the dbt build of
daily snapshots over --days days on DuckDB (through dagster materialize, as the tests do: user_features,
country_features, the label tables), both models trained by their assets, and the latest snapshots of every
view synced to Redis. Then times end to end `Predictor.predict_one` for random users that have a country:
ltv_model (one view, one command), churn_model (two views; country_code derived from the user's online
country: two exchanges), churn_model with the country passed by the caller (both views in one exchange),
churn_model with a RedisServedLog at sample rate 1.0 and 0.1 (its own client, another database; its writer
thread drains while the calls are timed), and the floors: a bare redis-py HGETALL of the user's hash, and the
user's and the country's HGETALL pipelined in one exchange. The variants take turns in rounds, so whatever
else the box does hits them alike; compare ratios within one run. --profile prints where a churn_model
predict_one spends its time (cProfile). Both Redis databases are flushed before and after.
"""

import argparse
import atexit
import contextlib
import cProfile
import gc
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Everything the run writes goes to a temporary folder, never the working tree (as in the tests).
if "FEATURE_STORE_HOME" not in os.environ:
    os.environ["FEATURE_STORE_HOME"] = tempfile.mkdtemp(prefix="featurestore-bench-")
    atexit.register(shutil.rmtree, os.environ["FEATURE_STORE_HOME"], ignore_errors=True)
os.environ.pop("DAGSTER_HOME", None)

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_assets.serving import FolderModelStore, ModelStore, RedisOnlineStore
from feature_assets.serving.predictor import Predictor
from feature_assets.serving.served_log import RedisServedLog

# Snapshots must be recent: one older than its online TTL is neither synced nor served.
ANCHOR = datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
USER_MODEL, TWO_VIEW_MODEL = "ltv_model", "churn_model"  # one view; two views, the country derived
TARGET_P99_MS = 2.0
TARGET_LOG_OVERHEAD = 0.10
Entity = tuple[int, str]  # (user_id, country_code)


def build_served_model(
    directory: Path, store: RedisOnlineStore, users: int, days: int
) -> tuple[ModelStore, list[Entity]]:
    """Demo data, dbt daily snapshots and labels on DuckDB, both models trained, every view's latest snapshots
    synced to `store`. Returns the model store and the (user, country) pairs both online views hold."""
    import dagster as dg
    from dagster_dbt import DbtCliResource

    from feature_assets.assets.features import dbt_assets_for
    from feature_assets.assets.models import model_assets
    from feature_assets.assets.raw import demo_raw_data
    from feature_assets.assets.training import training_set_assets
    from feature_assets.automation import as_of_days_tags
    from feature_assets.definitions import _dbt_executable
    from feature_assets.online_sync import sync_online_store
    from feature_assets.project import dbt_project
    from feature_assets.registry import load_registry
    from feature_assets.resources.model_store import ModelStoreResource
    from feature_assets.settings import dbt_manifest_path, dbt_project_dir
    from feature_assets.warehouses import DuckDBWarehouse

    registry = load_registry(dbt_manifest_path())
    warehouse = DuckDBWarehouse(str(directory / "warehouse.duckdb"))
    start = ANCHOR - timedelta(days=days - 1)
    built = dg.materialize(
        [demo_raw_data, *dbt_assets_for(registry, dbt_manifest_path())],
        resources={
            "warehouse": warehouse,
            "dbt": DbtCliResource(project_dir=dbt_project(dbt_project_dir()), dbt_executable=_dbt_executable()),
        },
        run_config={"ops": {
            "demo_raw_data": {"config": {"users": users, "days": days, "anchor": ANCHOR.isoformat()}},
            "dbt_feature_views": {"config": {"as_of_start": start.isoformat(), "as_of_end": ANCHOR.isoformat()}},
        }},
        instance=dg.DagsterInstance.ephemeral(),
        tags=as_of_days_tags(start, ANCHOR),
    )  # fmt: skip
    assert built.success
    training_sets, _ = training_set_assets(registry)
    trained = dg.materialize(
        [*training_sets, *model_assets(registry)],
        resources={"warehouse": warehouse, "model_store": ModelStoreResource(root=str(directory / "models"))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert trained.success
    models = FolderModelStore(directory / "models")
    for name in registry.feature_sets:  # serve what was just trained, whichever asset promotes in the full graph
        models.promote(name, models.versions(name)[-1])
    for view in registry.views.values():
        sync_online_store(warehouse, store, view, full_resync=True)
    users_view, countries_view = registry.view("user_features"), registry.view("country_features")
    latest = warehouse.query(
        f"""
        select u.{users_view.entity_key} as user_id, u.country as country_code
        from {users_view.name} u
        join {countries_view.name} c
            on c.{countries_view.entity_key} = u.country and c.{countries_view.timestamp} = u.{users_view.timestamp}
        where u.{users_view.timestamp} = (select max({users_view.timestamp}) from {users_view.name})
        """
    )
    return models, [(int(u), str(c)) for u, c in zip(latest["user_id"], latest["country_code"])]


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Sends this process's stdout and stderr (dbt's and Dagster's run logs included) to a file meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


def time_variants(
    variants: Mapping[str, Callable[[Entity], object]],
    entities: Sequence[Entity],
    *,
    calls: int,
    rounds: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) per variant over `calls` calls for random entities; the variants take turns in `rounds`
    rounds, each after a warm-up of connections, caches and loaded models."""
    picked = np.random.default_rng(seed).integers(0, len(entities), calls)
    chosen = [entities[i] for i in picked]
    for fn in variants.values():
        for entity in chosen[:200]:
            fn(entity)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    per_round = -(-calls // rounds)
    for start in range(0, calls, per_round):
        chunk = chosen[start : start + per_round]
        for name, fn in variants.items():
            gc.collect()
            gc.disable()
            try:
                for entity in chunk:
                    started = time.perf_counter()
                    fn(entity)
                    samples[name].append(time.perf_counter() - started)
            finally:
                gc.enable()
    return {name: _percentiles(values) for name, values in samples.items()}


def predict_latency_figures(
    store: RedisOnlineStore,
    models: ModelStore,
    entities: Sequence[Entity],
    *,
    log_url: str,
    calls: int = 6000,
    rounds: int = 12,
    seed: int = 2,
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """p50 and p99 (ms) of every variant (see the module's docstring), and each served log's counters. The log
    database at log_url is flushed before and after."""
    log_client = redis.Redis.from_url(log_url)
    log_client.flushdb()
    logs = {
        "log 1.0": RedisServedLog(log_url, sample_rate=1.0),
        "log 0.1": RedisServedLog(log_url, sample_rate=0.1, seed=seed),
    }
    plain = Predictor(store, models)
    logged = {name: Predictor(store, models, log) for name, log in logs.items()}
    user_view, country_view = models.card(TWO_VIEW_MODEL).feature_views()
    user_prefix, country_prefix = store.prefix(user_view).decode(), store.prefix(country_view).decode()
    client = store.client

    def both_hashes(entity: Entity) -> object:
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{user_prefix}{entity[0]}")
            pipe.hgetall(f"{country_prefix}{entity[1]}")
            return pipe.execute()

    variants: dict[str, Callable[[Entity], object]] = {
        "floor": lambda entity: client.hgetall(f"{user_prefix}{entity[0]}"),
        "floor, two hashes": both_hashes,
        USER_MODEL: lambda entity: plain.predict_one(USER_MODEL, entity[0]),
        TWO_VIEW_MODEL: lambda entity: plain.predict_one(TWO_VIEW_MODEL, entity[0]),
        f"{TWO_VIEW_MODEL}, country passed": lambda entity: plain.predict_one(
            TWO_VIEW_MODEL, {"user_id": entity[0], "country_code": entity[1]}
        ),
        **{
            f"{TWO_VIEW_MODEL}, {name}": (lambda entity, p=p: p.predict_one(TWO_VIEW_MODEL, entity[0]))
            for name, p in logged.items()
        },
    }
    figures = time_variants(variants, entities, calls=calls, rounds=rounds, seed=seed)
    counters = {}
    for name, log in logs.items():
        log.flush(10)
        stats = log.stats()
        counters[f"{TWO_VIEW_MODEL}, {name}"] = (
            f"logged {stats.logged:,}, dropped {stats.dropped_full_queue:,}, failed {stats.failed_writes:,}"
        )
        log.close()
    log_client.flushdb()
    log_client.close()
    return figures, counters


def profile_predict_one(predictor: Predictor, entities: Sequence[Entity], calls: int = 3000) -> str:
    """cProfile of `calls` churn_model predict_one calls: the top functions by their own time and by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for user, _ in entities[:calls]:
        predictor.predict_one(TWO_VIEW_MODEL, user)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--calls", type=int, default=6000, help="predict_one calls per variant")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8", help="the online store (flushed)")
    parser.add_argument("--log-url", default="redis://127.0.0.1:6379/7", help="the served log (flushed)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of predict_one")
    args = parser.parse_args(argv)

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    store = RedisOnlineStore(client)
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"Building: {args.users:,} users, daily snapshots over {args.days} days (DuckDB), churn + ltv trained, "
            "synced ...",
            flush=True,
        )
        started = time.perf_counter()
        with _output_to(Path(tmp) / "build.log"):
            models, entities = build_served_model(Path(tmp), store, args.users, args.days)
        print(
            f"built in {time.perf_counter() - started:.0f} s; {len(entities):,} users online with an online country",
            flush=True,
        )
        figures, counters = predict_latency_figures(store, models, entities, log_url=args.log_url, calls=args.calls)
        if args.profile:
            rng = np.random.default_rng(3)
            print(
                profile_predict_one(
                    Predictor(store, models), [entities[i] for i in rng.integers(0, len(entities), 3000)]
                )
            )
    client.flushdb()

    floor = figures["floor"]
    rows = [("measure", "p50 / p99", "vs floor", f"vs {TWO_VIEW_MODEL}", "target")]
    for name, (p50, p99) in figures.items():
        target = ""
        if name in (USER_MODEL, TWO_VIEW_MODEL, f"{TWO_VIEW_MODEL}, country passed"):
            target = f"p99 < {TARGET_P99_MS:g} ms: {'yes' if p99 < TARGET_P99_MS else 'NO'}"
        elif name in counters:
            overhead = p50 / figures[TWO_VIEW_MODEL][0] - 1
            target = (
                f"p50 overhead <= {TARGET_LOG_OVERHEAD:.0%}: {'yes' if overhead <= TARGET_LOG_OVERHEAD else 'NO'}; "
                f"{counters[name]}"
            )
        label = {
            "floor": "bare HGETALL of the user (floor)",
            "floor, two hashes": "user + country HGETALL, one pipelined exchange (floor, two views)",
            USER_MODEL: f"predict_one {USER_MODEL} (1 view, 1 exchange)",
            TWO_VIEW_MODEL: f"predict_one {TWO_VIEW_MODEL} (2 views, derived country: 2 exchanges)",
            f"{TWO_VIEW_MODEL}, country passed": f"predict_one {TWO_VIEW_MODEL}, country passed (2 views, 1 exchange)",
        }.get(name, f"predict_one {name}")
        plain = figures[TWO_VIEW_MODEL]
        rows.append((label, f"{p50:.3f} / {p99:.3f} ms", f"{p50 / floor[0]:.2f}x / {p99 / floor[1]:.2f}x",
                     f"{p50 / plain[0]:.3f}x / {p99 / plain[1]:.3f}x", target))  # fmt: skip
    print(f"\n{args.calls:,} predict_one calls per variant for random users; online store {store.describe()}\n")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
        if n == 0:
            print("  ".join("-" * width for width in widths) + "  " + "-" * 6)
    return 0


if __name__ == "__main__":
    sys.exit(main())

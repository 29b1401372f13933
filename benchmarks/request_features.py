"""One-entity predict latency of a model with a request-time feature against the same model without it, measured in
one run (not a test).

    .venv/bin/python benchmarks/request_features.py [--users 2000] [--rows 3000] [--calls 4000]
        [--redis-url redis://127.0.0.1:6379/8]

checkout_model as the registry declares it (user_features' events_30d, avg_order_30d and plan, the order_amount sent
with each user, and order_to_avg_ratio computed from them at request time) and a copy without its request field and
request-time feature, both fitted by the models' own `train` on the same synthetic rows and served from Redis (the
database is flushed before and after) with --users users of user_features. The two take turns in rounds, so whatever
else the box does hits them alike; the figure to read is the ratio of their medians (target: at most 1.2).
"""

import argparse
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_assets.as_of import current_hour, utc_now
from feature_assets.assets.models import train
from feature_assets.registry import LABEL_ROW, FeatureSet, FeatureView, load_registry
from feature_assets.serving import FolderModelStore, ModelCard, RedisOnlineStore, SyncRecord, encode_batch
from feature_assets.serving.codec import view_schema
from feature_assets.serving.predictor import Predictor
from feature_assets.settings import dbt_manifest_path
from feature_assets.training import with_request_features

TARGET_RATIO = 1.2
PLAIN = "plain_checkout_model"


def user_frame(view: FeatureView, users: int, rng: np.random.Generator) -> pd.DataFrame:
    """user_features rows for users 1..users, some without an average order (null)."""
    average = rng.gamma(2.0, 15.0, users)
    return pd.DataFrame(
        {
            "user_id": pd.array(np.arange(1, users + 1), dtype="int64"),
            view.timestamp: pd.Series([current_hour()] * users, dtype="datetime64[us]"),
            "age": pd.array(rng.integers(18, 80, users), dtype="Int64"),
            "country": pd.array(rng.choice(["DE", "FR", "US"], users), dtype="string"),
            "plan": pd.array(rng.choice(["free", "pro", "team"], users), dtype="string"),
            "events_30d": pd.array(rng.poisson(12, users), dtype="Int64"),
            "avg_order_30d": pd.array(np.where(rng.random(users) < 0.2, np.nan, average), dtype="Float64"),
        }
    )


def training_rows(feature_set: FeatureSet, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Orders over 400 days whose repeat depends on the amount against the user's average."""
    users = user_frame(feature_set.reads[0].view, rows, rng)
    frame = users[[f.name for f in feature_set.features]].copy()
    frame[LABEL_ROW] = np.arange(rows)
    frame[feature_set.labels.label_time] = pd.Timestamp(current_hour()) - pd.to_timedelta(
        rng.integers(0, 400, rows), unit="D"
    )
    frame["order_amount"] = rng.gamma(2.0, 15.0, rows)
    ratio = frame["order_amount"] / frame["avg_order_30d"].astype(float)
    frame[feature_set.target] = rng.random(rows) < 1 / (1 + np.exp(ratio.fillna(1.0).to_numpy() - 1))
    return with_request_features(feature_set, frame)


def serve(models: FolderModelStore, feature_set: FeatureSet, frame: pd.DataFrame) -> None:
    trained = train(feature_set, frame)
    card = ModelCard.for_feature_set(
        feature_set,
        version="v1",
        trained_at=utc_now().isoformat(),
        training_window=trained.window,
        rows={**trained.rows, "without_features": 0},
        metrics=trained.metrics,
    )
    models.save(card, trained.pipeline)
    models.promote(feature_set.model, "v1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=3000, help="training rows")
    parser.add_argument("--calls", type=int, default=4000, help="predictions per variant")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = parser.parse_args(argv)

    registry = load_registry(dbt_manifest_path())
    checkout = registry.feature_set("checkout_model")
    plain = replace(checkout, model=PLAIN, request=(), request_features=())
    view = checkout.reads[0].view
    rng = np.random.default_rng(0)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    try:
        with tempfile.TemporaryDirectory(prefix="featurestore-bench-") as folder:
            models = FolderModelStore(Path(folder) / "models")
            frame = training_rows(checkout, args.rows, rng)
            serve(models, checkout, frame)
            serve(models, plain, frame)
            store = RedisOnlineStore.from_url(args.redis_url)
            users = user_frame(view, args.users, rng)
            with store.writer(view, replace=True) as writer:
                writer.write(encode_batch(view, users))
            definitions = tuple((f.name, f.definition_checksum) for f in view.features)
            record = SyncRecord(
                view.version, view_schema(view), definitions, current_hour(), utc_now(), len(users), True
            )
            store.record_sync(view, record)
            predictor = Predictor(store, models)
            ids = rng.integers(1, args.users + 1, args.calls).tolist()
            amounts = rng.gamma(2.0, 15.0, args.calls).tolist()
            variants = {
                "with order_to_avg_ratio": lambda i: predictor.predict_one(
                    "checkout_model", {"user_id": ids[i], "order_amount": amounts[i]}
                ),
                "without (same features)": lambda i: predictor.predict_one(PLAIN, ids[i]),
            }
            for call in variants.values():  # warm: models loaded, schemas checked, connections open
                for i in range(50):
                    call(i)
            samples: dict[str, list[float]] = {name: [] for name in variants}
            rounds = 20
            per_round = args.calls // rounds
            gc.disable()
            try:
                for round_ in range(rounds):
                    for name, call in variants.items():
                        for i in range(round_ * per_round, (round_ + 1) * per_round):
                            started = time.perf_counter()
                            call(i)
                            samples[name].append(time.perf_counter() - started)
            finally:
                gc.enable()
            store.close()
    finally:
        client.flushdb()
        client.close()
    print(f"predict_one of checkout_model, {args.calls} calls per variant, Redis {args.users} users")
    medians = {}
    for name, values in samples.items():
        values.sort()
        medians[name] = statistics.median(values)
        p99 = values[int(len(values) * 0.99) - 1]
        print(f"  {name:28s} p50 {medians[name] * 1000:.3f} ms   p99 {p99 * 1000:.3f} ms")
    ratio = medians["with order_to_avg_ratio"] / medians["without (same features)"]
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"  ratio of medians: {ratio:.3f} ({verdict} the {TARGET_RATIO:g}x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

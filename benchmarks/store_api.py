"""The Python API's costs against the paths it is built on, measured in one run on the same data (not a test).

    .venv/bin/python benchmarks/store_api.py [--users 100000] [--days 29] [--labels 1000000] [--repeats 3]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test] [--redis-url redis://127.0.0.1:6379/6]

historical_features: a frame of label rows in memory (user_id, country_code, label_time, churned: the data of
benchmarks/training.py, with its ties and duplicates) through FeatureStore.historical_features for both views of
churn_model, returned as pandas; against the baseline of building the same training set as a table from the same
rows already in the warehouse (point_in_time_sql + build_table) and fetching it whole. On DuckDB and PostgreSQL.
The target: within 1.3x. The rows of both are compared: a benchmark of wrong answers is worthless.

online_features: 1 and 1,000 users of user_features through FeatureStore.online_features against
FeatureReader.get_online_features, the path it uses, on SQLite and Redis. The target: within 1.2x.

A saved model of one's own (gradient boosting through a pipeline, saved with FeatureStore.save_model): predict_one's
p99 against the same estimator's bare predict_proba on one row plus the online read. The target: within 1.5x.
Medians of --repeats runs (online: of 2,000 and 200 calls), each printed with the 1-minute load average.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import training as data

from feature_assets import FeatureStore
from feature_assets.as_of import current_hour, utc_now
from feature_assets.registry import LABEL_ROW
from feature_assets.serving import (
    FeatureReader,
    FolderModelStore,
    OnlineStore,
    Predictor,
    RedisOnlineStore,
    SqliteOnlineStore,
    SyncRecord,
    encode_batch,
)
from feature_assets.serving.codec import view_schema
from feature_assets.serving.predictor import feature_frame
from feature_assets.training import build_table, point_in_time_sql
from feature_assets.warehouses import DuckDBWarehouse, PostgresWarehouse, Warehouse

FEATURES = [f"{read.view.name}:{f.name}" for read in data.TWO_VIEWS.reads for f in read.features]


def median_seconds(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved(calls: int, baseline: Callable[[], object], ours: Callable[[], object]) -> tuple[float, float]:
    """Seconds per call of each, median of 7 rounds that alternate between them (the box's load moves)."""
    rounds: list[list[float]] = [[], []]
    for _ in range(7):
        for side, run in enumerate((baseline, ours)):
            started = time.perf_counter()
            for _ in range(calls):
                run()
            rounds[side].append((time.perf_counter() - started) / calls)
    return statistics.median(rounds[0]), statistics.median(rounds[1])


def historical(warehouse: Warehouse, case: data.Case, rows: int, repeats: int) -> None:
    feature_set, labels = case.at(rows), case.labels[rows]
    store = FeatureStore(registry=data.REGISTRY, warehouse=warehouse)
    fetched: dict[str, pd.DataFrame] = {}

    def baseline() -> None:
        sql, params = point_in_time_sql(warehouse, feature_set)
        with warehouse.connect() as con:
            build_table(warehouse, con, "bench_api_training_set", sql, params)
            fetched["baseline"] = warehouse.fetch(con, f"select * from bench_api_training_set order by {LABEL_ROW}")

    def ours() -> None:
        fetched["ours"] = store.historical_features(labels, FEATURES)

    base, api = median_seconds(repeats, baseline), median_seconds(repeats, ours)
    # The same rows? The baseline numbers them in its own order: both sorted, every label column and feature.
    columns = [*labels.columns, *(f.name for f in feature_set.features)]
    numbers = {f.name: float for f in feature_set.features if f.dtype != "string"}
    same = [
        sorted(
            map(
                str,
                frame[columns]
                .astype(numbers)
                .astype(object)
                .where(frame[columns].notna(), None)
                .itertuples(index=False),
            )
        )
        for frame in (fetched["baseline"].reset_index(drop=True), fetched["ours"].reset_index(drop=True))
    ]
    print(
        f"{warehouse.kind:8} {len(labels):>9,} rows: build + fetch {base:6.2f} s, historical_features {api:6.2f} s, "
        f"ratio {api / base:4.2f} (target <= 1.3); same rows: {same[0] == same[1]}; load {os.getloadavg()[0]:.1f}"
    )


def online(store: OnlineStore, users: pd.DataFrame, calls: int) -> None:
    """The latest snapshot of every user, stamped this hour, written and recorded as a full sync leaves them."""
    view = data.USERS
    latest = users.drop_duplicates(view.entity_key, keep="last").copy()
    latest[view.timestamp] = pd.Timestamp(current_hour())
    with store.writer(view, replace=True) as writer:
        writer.write(encode_batch(view, latest))
    definitions = tuple((f.name, f.definition_checksum) for f in view.features)
    store.record_sync(
        view, SyncRecord(view.version, view_schema(view), definitions, current_hour(), utc_now(), len(latest), True)
    )
    api = FeatureStore(registry=data.REGISTRY, online_store=store)
    reader = FeatureReader(store, view)
    names = list(view.feature_names)
    rng = np.random.default_rng(1)
    for count in (1, 1000):
        ids = [int(i) for i in rng.choice(latest[view.entity_key].to_numpy(), count)]
        entities = [{view.entity_key: i} for i in ids]
        direct, ours = interleaved(
            calls if count == 1 else calls // 10,
            partial(reader.get_online_features, ids, names),
            partial(api.online_features, FEATURES[:5], entities),
        )
        print(
            f"{store.kind:8} {count:>5} entities: FeatureReader {direct * 1000:7.3f} ms, online_features "
            f"{ours * 1000:7.3f} ms, ratio {ours / direct:4.2f} (target <= 1.2); load {os.getloadavg()[0]:.1f}"
        )


def saved_model(store: OnlineStore, users: pd.DataFrame, folder: Path, calls: int) -> None:
    """A gradient-boosted model of one's own on user_features, saved and served: predict_one's p50/p99 against the
    same estimator's bare predict_proba on one row plus the online read it needs (FeatureReader.get_entity)."""
    view = data.USERS
    api = FeatureStore(registry=data.REGISTRY, online_store=store, model_store=FolderModelStore(folder / "models"))
    rows = users.sample(20_000, random_state=0)
    frame = rows.rename(columns={view.timestamp: "label_time"})
    inputs = api.model_input(frame, "user_features:*")
    target = rows["events_30d"].to_numpy(dtype=float, na_value=0.0) > rows["events_30d"].median()
    numbers = [name for name in inputs.columns if inputs[name].dtype == float]
    encode = ColumnTransformer(
        [("numbers", "passthrough", numbers), ("strings", OneHotEncoder(handle_unknown="ignore"), ["country", "plan"])]
    )
    estimator = make_pipeline(encode, HistGradientBoostingClassifier(max_iter=100, random_state=0))
    estimator.fit(inputs, target)
    version = api.save_model("bench_boosted", estimator, "user_features:*", "classification")
    api.model_store.promote("bench_boosted", version)
    predictor = Predictor(store, api.model_store)
    reader = FeatureReader(store, view)
    declared = [{"name": f.name, "dtype": f.dtype} for f in view.features]
    ids = [int(i) for i in np.random.default_rng(2).choice(users[view.entity_key].unique(), calls)]

    def bare(entity: int) -> None:
        row = reader.get_entity(entity)
        estimator.predict_proba(feature_frame({f["name"]: [row[f["name"]]] for f in declared}, declared))

    samples: list[list[float]] = [[], []]
    for entity in ids:
        for side, run in enumerate((bare, partial(predictor.predict_one, "bench_boosted"))):
            started = time.perf_counter()
            run(entity)
            samples[side].append(time.perf_counter() - started)
    (bare_p50, bare_p99), (ours_p50, ours_p99) = (np.percentile(np.array(s) * 1000, [50, 99]) for s in samples)
    print(
        f"{store.kind:8} saved model: bare read + predict_proba p50 {bare_p50:.2f} / p99 {bare_p99:.2f} ms, "
        f"predict_one p50 {ours_p50:.2f} / p99 {ours_p99:.2f} ms, p99 ratio {ours_p99 / bare_p99:4.2f} "
        f"(target <= 1.5); load {os.getloadavg()[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=29)
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres-url", default=os.environ.get("FEATURE_STORE_POSTGRES_URL", ""))
    parser.add_argument("--redis-url", default="", help="a database this may flush, e.g. redis://127.0.0.1:6379/6")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    users = data.make_history(args.users, args.days, rng)
    countries = data.make_countries(users, rng)
    labels = data.make_labels(args.labels, args.users, args.days, users, rng)
    case = data.Case("two views", data.TWO_VIEWS, {args.labels: labels}, "bench_api_labels")
    print(f"{len(users):,} user snapshots, {len(countries):,} country snapshots, {len(labels):,} label rows")
    with tempfile.TemporaryDirectory() as folder:
        warehouses: list[Warehouse] = [DuckDBWarehouse(Path(folder) / "bench.duckdb")]
        if args.postgres_url:
            warehouses.append(PostgresWarehouse(args.postgres_url, "bench_store_api"))
        for warehouse in warehouses:
            data.load(warehouse, users, countries, [case])
            historical(warehouse, case, args.labels, args.repeats)
        stores: list[OnlineStore] = [SqliteOnlineStore(Path(folder) / "online.sqlite")]
        if args.redis_url:
            stores.append(RedisOnlineStore.from_url(args.redis_url))
        for store in stores:
            with store:
                online(store, users, args.calls)
                saved_model(store, users, Path(folder) / store.kind, args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

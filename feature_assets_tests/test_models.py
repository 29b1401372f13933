"""Model artifacts and predictions: cards bound to the feature schema, strict serving, no train/serve skew."""

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from conftest import ANCHOR

from feature_assets.assets.models import train
from feature_assets.definitions import _dbt_executable
from feature_assets.errors import DataError, FeatureStoreError
from feature_assets.online_sync import sync_online_store
from feature_assets.registry import LABEL_ROW, load_registry
from feature_assets.serving import FolderModelStore, RedisOnlineStore
from feature_assets.serving.predictor import Predictor, SchemaMismatch, feature_matrix
from feature_assets.settings import dbt_manifest_path, dbt_project_dir
from feature_assets.training import build_table, point_in_time_sql
from feature_assets.warehouses import DuckDBWarehouse, Warehouse

REGISTRY = load_registry(dbt_manifest_path())
CHURN = REGISTRY.feature_set("churn_model")
USERS, COUNTRIES = REGISTRY.view("user_features"), REGISTRY.view("country_features")


def sync_views(warehouse: Warehouse, store) -> None:
    for view in REGISTRY.views.values():
        sync_online_store(warehouse, store, view, full_resync=True)


@pytest.fixture
def warehouse_copy(trained, tmp_path) -> Warehouse:
    """A private copy of the trained warehouse, for tests that rebuild features."""
    warehouse, _ = trained
    shutil.copyfile(warehouse.path, tmp_path / "warehouse.duckdb")
    return DuckDBWarehouse(str(tmp_path / "warehouse.duckdb"))


def _latest_users(warehouse: Warehouse, count: int) -> list[int]:
    frame = warehouse.query(
        "select user_id from user_features where computed_at = (select max(computed_at) from user_features) "
        "order by user_id limit ?",
        [count],
    )
    return [int(u) for u in frame["user_id"]]


def test_model_card_records_the_exact_feature_schema_and_metrics(trained):
    _, root = trained
    store = FolderModelStore(root)
    card = store.card("churn_model")
    assert card.version == store.current("churn_model") == store.versions("churn_model")[-1]
    assert [(f["view"], f["name"], f["dtype"]) for f in card.features] == [
        (read.view.name, f.name, f.dtype) for read in CHURN.reads for f in read.features
    ]
    assert [(v["name"], v["entity_key"], v["derived_from"]) for v in card.views] == [
        ("user_features", "user_id", None),
        ("country_features", "country_code", ["user_features", "country"]),
    ]
    assert [f["definition_checksum"] for f in card.features] == [f.definition_checksum for f in CHURN.features]
    assert 0.5 < card.metrics["auc"] <= 1.0
    assert card.rows["fit"] > card.rows["validation"] > 0
    # Validation is the latest label times; fit label times end one outcome window (30 days) before them.
    window = {name: datetime.fromisoformat(time) for name, time in card.training_window.items()}
    assert (
        window["first_label_time"]
        < window["last_fit_label_time"]
        < window["first_validation_label_time"]
        < window["last_label_time"]
    )
    assert window["first_validation_label_time"] - window["last_fit_label_time"] >= timedelta(days=30)
    ltv = store.card("ltv_model")
    assert ltv.metrics["mae"] < ltv.metrics["mae_of_mean_baseline"]
    ltv_window = {name: datetime.fromisoformat(time) for name, time in ltv.training_window.items()}
    assert ltv_window["first_validation_label_time"] - ltv_window["last_fit_label_time"] >= timedelta(days=90)
    on_disk = json.loads((root / "churn_model" / card.version / "card.json").read_text())
    assert on_disk["schema_version"] == card.schema_version


def test_the_model_asset_shows_its_card_features_dtypes_checksums_and_metrics(trained, tmp_path):
    from feature_assets.assets.models import model_assets
    from feature_assets.resources.model_store import ModelStoreResource

    warehouse, _ = trained
    churn = next(asset for asset in model_assets(REGISTRY) if asset.key.to_user_string() == "churn_model")
    result = dg.materialize(
        [churn],
        resources={"warehouse": warehouse, "model_store": ModelStoreResource(root=str(tmp_path))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    card = FolderModelStore(tmp_path).card("churn_model", metadata["version"].value)
    # One line per feature, wrapping in the UI's metadata column: view.name, dtype and the checksum's first 16 digits.
    shown = [line for line in metadata["feature_schema"].value.splitlines() if line.startswith("- ")]
    assert shown == [
        f"- {f['view']}.{f['name']}: {f['dtype']}, definition {f['definition_checksum'][:16]}" for f in card.features
    ]
    floor = result.get_asset_check_evaluations()[0]
    assert floor.check_name == "validation_above_floor" and floor.passed
    assert floor.description == f"version {card.version} may be promoted: auc {card.metrics['auc']:.4f} >= 0.6"
    assert metadata["card"].value["schema_version"] == card.schema_version == metadata["schema_version"].value
    assert metadata["auc"].value == round(card.metrics["auc"], 4) and metadata["rows_fit"].value == card.rows["fit"]
    assert metadata["trainer"].value == card.trainer["function"] == "builtin"
    assert (
        metadata["estimator"].value == card.trainer["estimator"] == "sklearn.linear_model._logistic.LogisticRegression"
    )
    assert metadata["estimator_params"].value == card.trainer["params"] and card.trainer["params"]["max_iter"] == 2000
    assert metadata["training_rows"].value == card.training

    # The version keeps the training set's rows it was fitted and validated on, as the table holds them.
    kept = FolderModelStore(tmp_path).training_set("churn_model", card.version)
    assert kept["split"].value_counts().to_dict() == {"fit": card.rows["fit"], "validation": card.rows["validation"]}
    table = warehouse.query(f"select * from {CHURN.training_set}")
    assert list(kept.columns) == [*table.columns, "split"] and card.training["rows"] == len(kept)
    rows = kept.drop(columns="split").set_index(LABEL_ROW).sort_index()
    pd.testing.assert_frame_equal(rows, table.set_index(LABEL_ROW).loc[rows.index])
    # Left out: rows without a snapshot of every view, and those in the outcome-window gap before validation.
    assert rows[["user_features_snapshot_at", "country_features_snapshot_at"]].notna().all().all()
    assert len(rows) < len(table) - card.rows["without_features"]


def _ltv_rows(days: int, per_day: int = 10) -> pd.DataFrame:
    """Training rows of the LTV model, one label time a day, with features that predict the target."""
    rng = np.random.default_rng(0)
    n = days * per_day
    events = rng.poisson(20, n)
    return pd.DataFrame(
        {
            LABEL_ROW: np.arange(n),
            "label_time": pd.Timestamp(ANCHOR) - pd.to_timedelta(np.arange(n)[::-1] // per_day, unit="D"),
            "age": rng.integers(18, 70, n),
            "country": rng.choice(["DE", "US"], n),
            "plan": rng.choice(["free", "pro"], n),
            "events_30d": events,
            "avg_order_30d": rng.gamma(2.0, 10.0, n),
            "revenue_90d": 5.0 * events + rng.gamma(2.0, 5.0, n),
        }
    ).sample(frac=1.0, random_state=0)


def test_no_fit_label_time_is_within_one_outcome_window_of_the_first_validation_one():
    """A fit label's outcome (90 days of revenue) must end by the first validation label time, or the fit
    targets would have seen the period validation predicts; the label times in between are left out."""
    ltv = REGISTRY.feature_set("ltv_model")
    assert ltv.labels.outcome_window == timedelta(days=90)
    frame = _ltv_rows(days=200)
    trained = train(ltv, frame)
    metrics, rows, window = trained.metrics, trained.rows, trained.window
    times = {name: pd.Timestamp(time) for name, time in window.items()}
    # Validation: the latest 20% of the label times, whole days here.
    assert rows["validation"] == 400 and times["first_validation_label_time"] == pd.Timestamp(ANCHOR) - pd.Timedelta(
        days=39
    )
    assert times["last_fit_label_time"] == times["first_validation_label_time"] - pd.Timedelta(days=90)
    assert rows["fit"] == 10 * (200 - 40 - 89) and times["first_label_time"] == frame.label_time.min()
    assert metrics["mae"] < metrics["mae_of_mean_baseline"]
    # The version keeps exactly the rows it was fitted and validated on, each with its split; not those of the gap.
    kept = trained.kept
    assert list(kept.columns) == [*frame.columns, "split"]
    assert kept["split"].value_counts().to_dict() == {"fit": rows["fit"], "validation": rows["validation"]}
    fit_times = kept.loc[kept["split"] == "fit", "label_time"]
    assert fit_times.max() == times["last_fit_label_time"]
    assert kept.loc[kept["split"] == "validation", "label_time"].min() == times["first_validation_label_time"]
    gap = frame[
        (frame.label_time > times["last_fit_label_time"]) & (frame.label_time < times["first_validation_label_time"])
    ]
    assert len(gap) and not kept[LABEL_ROW].isin(gap[LABEL_ROW]).any()
    assert trained.trainer["function"] == "builtin" and trained.trainer["params"]["loss"] == "poisson"
    assert trained.trainer["estimator"].endswith(".HistGradientBoostingRegressor")


def test_a_history_too_short_for_the_gap_is_refused_asking_for_a_longer_one():
    ltv = REGISTRY.feature_set("ltv_model")
    with pytest.raises(
        DataError, match=r"ltv_model: 0 fit and 80 validation rows .* 90 days, 0:00:00 before .* a longer history"
    ):
        train(ltv, _ltv_rows(days=40, per_day=10))


def test_prediction_reads_both_views_online_and_refuses_missing_entities_by_view(trained, redis_client):
    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse, store)
    predictor = Predictor(store, FolderModelStore(root))
    users = _latest_users(warehouse, 3)
    one = predictor.predict_one("churn_model", users[0])
    assert 0.0 <= one.score <= 1.0 and one.version == FolderModelStore(root).current("churn_model")
    country = redis_client.hget(f"features:user:{users[0]}", "country").decode()
    assert one.entity == {"user_id": users[0], "country_code": country}  # derived from the user's online country
    assert one.features["country_paid_share"] == float(
        redis_client.hget(f"features:country:{country}", "country_paid_share")
    )
    # The caller may pass the derived key: the same answer, in one exchange.
    assert predictor.predict_one("churn_model", {"user_id": users[0], "country_code": country}).score == one.score
    with pytest.raises(DataError, match="user_id 987654 has no user_features in the online store"):
        predictor.predict_one("churn_model", 987654)
    with pytest.raises(DataError, match="country_code ZZ has no country_features in the online store"):
        predictor.predict_one("churn_model", {"user_id": users[0], "country_code": "ZZ"})
    with pytest.raises(DataError, match="model churn_model needs user_id"):
        predictor.predict_one("churn_model", {"country_code": country})
    many = predictor.predict("churn_model", [users[0], 987654, users[1]])
    assert many["score"].isna().tolist() == [False, True, False]
    assert many["score"].iloc[0] == pytest.approx(one.score)
    assert many["country_code"].iloc[0] == country
    assert "987654" in many["error"].iloc[1] and many["error"].isna().tolist() == [True, False, True]
    redis_client.hset(f"features:user:{users[2]}", "country", b"\x00")  # the online null marker
    with pytest.raises(
        DataError, match=f"country_code is derived from user_features.country, which is null for user_id {users[2]}"
    ):
        predictor.predict_one("churn_model", users[2])
    assert (
        predictor.predict("churn_model", [users[2]])["error"]
        .iloc[0]
        .startswith("country_code is derived from user_features.country")
    )
    # Revenue is never negative, and neither is its prediction (a Poisson loss for a non-negative target).
    revenue = predictor.predict("ltv_model", _latest_users(warehouse, 200))["score"]
    assert revenue.notna().all() and (revenue >= 0).all()
    card, pipeline = FolderModelStore(root).load("ltv_model")
    value = predictor.predict_one("ltv_model", users[2])
    matrix = feature_matrix({name: [value.features[name]] for name in card.feature_names}, card.features)
    assert value.score == pytest.approx(float(pipeline.predict(matrix)[0]), rel=1e-12)


def test_training_row_and_online_prediction_see_the_same_feature_vector(trained, redis_client):
    """No skew: a label just after the latest snapshot gets, offline, exactly the vector serving reads online."""
    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse, store)
    users = _latest_users(warehouse, 40)
    with warehouse.connect() as con:
        # The label carries the country the user had in the latest snapshot: the one serving derives the key from.
        warehouse.execute(
            con,
            "create or replace table skew_labels as select user_id, country as country_code, "
            "computed_at + interval '1 hour' as label_time, false as churned from user_features "
            f"where computed_at = ? and user_id in ({', '.join(map(str, users))})",
            [ANCHOR],
        )
        skew = replace(CHURN, labels=replace(CHURN.labels, name="skew_labels"))
        build_table(warehouse, con, "skew_training_set", *point_in_time_sql(warehouse, skew))
        rows = warehouse.fetch(con, "select * from skew_training_set order by user_id")
    card, pipeline = FolderModelStore(root).load("churn_model")
    offline = feature_matrix({name: rows[name].tolist() for name in card.feature_names}, card.features)
    predictor = Predictor(store, FolderModelStore(root))
    served = [predictor.predict_one("churn_model", user) for user in sorted(users)]
    online = feature_matrix({name: [p.features[name] for p in served] for name in card.feature_names}, card.features)
    assert offline.shape == (40, len(card.features))
    for column in range(offline.shape[1]):
        for a, b in zip(offline[:, column], online[:, column]):
            assert (a == b) or (a != a and b != b), (card.feature_names[column], a, b)  # NaN == NaN here
    # Same vectors; the scores differ at most in the last bits (a batch and single rows take other BLAS paths).
    np.testing.assert_allclose(pipeline.predict_proba(offline)[:, 1], [p.score for p in served], rtol=1e-12)


def _dbt_build_copy(project: Path, warehouse: Warehouse) -> None:
    env = {**os.environ, **warehouse.dbt_env()}
    vars_ = json.dumps({"as_of_start": ANCHOR.isoformat(), "as_of_end": ANCHOR.isoformat(), "cadence_hours": 24})
    for command in (["parse"], ["build", "--vars", vars_]):
        subprocess.run(
            [_dbt_executable(), *command, "--project-dir", str(project), "--profiles-dir", str(project), "--quiet"],
            env=env,
            check=True,
            capture_output=True,
        )


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_new_feature_keeps_the_old_model_and_a_changed_dtype_is_refused(
    trained, warehouse_copy, redis_client, tmp_path
):
    _, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse_copy, store)
    users = _latest_users(warehouse_copy, 5)
    before = [Predictor(store, FolderModelStore(root)).predict_one("churn_model", user).score for user in users]

    project = tmp_path / "dbt_features"
    shutil.copytree(dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs"))
    sql, yml = project / "models/features/user_features.sql", project / "models/features/user_features.yml"
    _edit(
        sql,
        "final as (",
        "orders_count as (\n    select user_id, computed_at, count(*) as n from orders_30d_rows group by 1, "
        "2\n),\n\nfinal as (",
    )
    _edit(
        sql,
        "orders_30d as (",
        "orders_30d_rows as (\n    select orders.user_id, as_of_times.computed_at from orders inner join as_of_times\n "
        "       on orders.created_at >= as_of_times.computed_at - interval '30 days' and orders.created_at < "
        "as_of_times.computed_at\n        and orders.loaded_at <= as_of_times.computed_at\n),\n\norders_30d as (",
    )
    _edit(
        sql,
        "as avg_order_30d\n    from users_at",
        "as avg_order_30d,\n        cast(coalesce(orders_count.n, 0) as integer) as orders_30d\n    from users_at",
    )
    _edit(
        sql,
        "\n)\n\nselect * from final",
        "\n    left join orders_count\n        on orders_count.user_id = users_at.user_id\n        and "
        "orders_count.computed_at = users_at.computed_at\n)\n\nselect * from final",
    )
    _edit(
        yml,
        "      - name: avg_order_30d",
        "      - name: orders_30d\n        description: Orders in the 30 days before computed_at.\n        data_type: "
        "integer\n      - name: avg_order_30d",
    )
    _dbt_build_copy(project, warehouse_copy)
    grown = load_registry(project / "target/manifest.json").view("user_features")
    assert "orders_30d" in grown.feature_names
    assert [grown.feature(f.name).definition_checksum for f in USERS.features] == [
        f.definition_checksum for f in USERS.features
    ]
    sync_online_store(warehouse_copy, store, grown)
    assert redis_client.hget(f"features:user:{users[0]}", "orders_30d") is not None

    after = [Predictor(store, FolderModelStore(root)).predict_one("churn_model", user).score for user in users]
    assert after == before

    _edit(
        yml,
        "the 30 days before computed_at.\n        data_type: integer",
        "the 30 days before computed_at.\n        data_type: double precision",
    )
    _edit(sql, "as integer) as events_30d", "as double precision) as events_30d")
    _dbt_build_copy(project, warehouse_copy)
    changed = load_registry(project / "target/manifest.json").view("user_features")
    sync_online_store(warehouse_copy, store, changed)
    with pytest.raises(
        SchemaMismatch,
        match=re.escape("reads user_features.events_30d as int64, but the online store holds it as float64"),
    ):
        Predictor(store, FolderModelStore(root)).predict_one("churn_model", users[0])


@pytest.mark.parametrize(
    "view, feature, edit, message",
    [
        (
            "user_features",
            "events_30d",
            "definition",
            re.escape("reads user_features.events_30d, but its definition (SQL) changed since the model was trained"),
        ),
        ("user_features", "plan", "missing", "reads user_features.plan, but redis .* has no such feature"),
        (
            "country_features",
            "country_paid_share",
            "definition",
            re.escape("reads country_features.country_paid_share, but its definition (SQL) changed"),
        ),
        (
            "country_features",
            "country_paid_share",
            "dtype",
            re.escape("reads country_features.country_paid_share as float64, but the online store holds it as string"),
        ),
    ],
)
def test_prediction_refuses_a_change_in_either_view_naming_view_and_feature(
    trained, redis_client, view, feature, edit, message
):
    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse, store)
    changed_view = REGISTRY.view(view)
    record = store.last_sync(changed_view)
    if edit == "definition":
        changed = replace(
            record, definitions=tuple((n, "edited" if n == feature else c) for n, c in record.definitions)
        )
    elif edit == "dtype":
        changed = replace(record, schema=tuple((n, "string" if n == feature else d) for n, d in record.schema))
    else:
        changed = replace(record, schema=tuple((n, d) for n, d in record.schema if n != feature))
    store.record_sync(changed_view, changed)
    with pytest.raises(SchemaMismatch, match=message):
        Predictor(store, FolderModelStore(root)).predict_one("churn_model", _latest_users(warehouse, 1)[0])
    # The model that does not read the changed view keeps serving.
    if view == "country_features":
        assert Predictor(store, FolderModelStore(root)).predict_one("ltv_model", _latest_users(warehouse, 1)[0]).version


def test_featurestore_predict_scores_one_or_many_users_and_names_bad_input(trained, monkeypatch, capsys):
    from feature_assets.cli import main
    from feature_assets.serving import SqliteOnlineStore

    warehouse, root = trained
    home = root.parent  # the trained folder: models/ is where the CLI looks
    monkeypatch.setenv("FEATURE_STORE_HOME", str(home))
    for name in ("FEATURE_STORE_ENV", "FEATURE_STORE_ONLINE", "FEATURE_STORE_DEMO_DATA"):
        monkeypatch.delenv(name, raising=False)
    with SqliteOnlineStore(home / "online.sqlite") as store:
        sync_views(warehouse, store)
    users = _latest_users(warehouse, 2)

    assert main(["predict", "churn", str(users[0]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["entity"]["user_id"] == users[0] and printed["entity"]["country_code"]
    assert {"age", "country_paid_share"} <= set(printed["features"])

    assert main(["predict", "churn", str(users[0]), str(users[1]), "987654"]) == 0
    table = capsys.readouterr().out
    assert (
        len(table.strip().splitlines()) == 4 and "user_id 987654 has no user_features" in table
    )  # a header, three rows

    cases = [
        (
            ["predict", "fraud", "1"],
            "no model 'fraud_model' declares a feature set; known: checkout_model, churn_model, ltv_model",
        ),
        (["predict", "ltv", "1", "--key", "country_code=DE"], "model ltv_model reads no view keyed by 'country_code'"),
        (["predict", "churn", "1", "--key", "country_code"], "--key takes NAME=VALUE"),
        (["predict", "churn", " "], "user_id cannot be empty"),
        (
            ["predict", "churn", str(users[0]), "--key", "country_code=ZZ"],
            "country_code ZZ has no country_features in the online store",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in capsys.readouterr().err


def test_a_card_written_before_models_read_several_views_still_loads_with_its_one_view(tmp_path):
    old = {
        "model": "churn_model", "version": "v1", "task": "classification", "target": "churned", "view": "user_features",
        "entity": "user", "entity_key": "user_id", "timestamp": "computed_at", "online_ttl_hours": 48.0,
        "features": [{"name": "age", "dtype": "int64", "definition_checksum": "c1"}], "schema_version": "s",
        "trained_at": "t", "training_window": {}, "rows": {}, "metrics": {},
    }  # fmt: skip
    (tmp_path / "churn_model" / "v1").mkdir(parents=True)
    (tmp_path / "churn_model" / "v1" / "card.json").write_text(json.dumps(old))
    card = FolderModelStore(tmp_path).card("churn_model", "v1")
    assert card.caller_keys == ["user_id"] and card.features[0]["view"] == "user_features"
    [view] = card.feature_views()
    assert (view.name, view.entity_key, view.feature_names, view.online_ttl) == (
        "user_features",
        "user_id",
        ("age",),
        timedelta(hours=48),
    )


def test_serving_refuses_a_non_finite_feature_value_by_name(trained, redis_client):
    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse, store)
    predictor = Predictor(store, FolderModelStore(root))
    bad, good = _latest_users(warehouse, 2)
    redis_client.hset(f"features:user:{bad}", "avg_order_30d", "inf")

    with pytest.raises(DataError, match=rf"user_features\.avg_order_30d is inf for user_id {bad}.*not a finite number"):
        predictor.predict_one("churn_model", bad)
    batch = predictor.predict("churn_model", [bad, good])
    assert "not a finite number" in batch.loc[0, "error"] and batch["score"].isna().tolist() == [True, False]


def test_a_long_lived_predictor_notices_a_resync_with_a_changed_definition(trained, redis_client):
    import time

    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse, store)
    predictor = Predictor(store, FolderModelStore(root))
    user = _latest_users(warehouse, 1)[0]
    predictor.predict_one("churn_model", user)

    # Another process re-syncs user_features after the SQL of events_30d changed.
    record = store.last_sync(USERS)
    changed = tuple((name, "changed" if name == "events_30d" else checksum) for name, checksum in record.definitions)
    store.record_sync(USERS, replace(record, definitions=changed, version="changed"))

    deadline = time.monotonic() + 5
    while True:  # noticed within about a second (RECHECK_SECONDS), without a restart
        try:
            predictor.predict_one("churn_model", user)
        except SchemaMismatch as refused:
            assert "user_features.events_30d" in str(refused) and "definition (SQL) changed" in str(refused)
            break
        assert time.monotonic() < deadline, "the predictor kept serving after the definition changed"
        time.sleep(0.1)


def test_a_predict_against_a_hung_redis_fails_within_its_deadline(trained, tmp_path):
    import signal
    import time

    from redis_servers import start_acl_redis

    warehouse, root = trained
    server = start_acl_redis(tmp_path)
    try:
        store = RedisOnlineStore.from_url(server.url, timeout=10)  # the socket would wait 10 s; the deadline is 0.3 s
        sync_views(warehouse, store)
        predictor = Predictor(store, FolderModelStore(root), deadline=0.3)
        user = _latest_users(warehouse, 1)[0]
        predictor.predict_one("churn_model", user)
        os.killpg(server.processes[0].pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(FeatureStoreError, match="no answer"):
                predictor.predict_one("churn_model", user)
            assert time.monotonic() - started < 5
        finally:
            os.killpg(server.processes[0].pid, signal.SIGCONT)
        store.close()
    finally:
        server.stop()


def test_scoring_by_fitted_parameters_equals_the_pipeline_on_every_training_row(trained):
    """predict_one and predict apply the fitted parameters in numpy (scikit-learn's validation costs more than the
    arithmetic for one row, or a hundred): every training row must encode exactly as the pipeline does, one row at a
    time and all at once, and score the same."""
    from scipy import sparse

    from feature_assets.serving.fitted_steps import fitted_steps

    warehouse, root = trained
    models = FolderModelStore(root)
    for name in ("churn_model", "ltv_model"):
        card, pipeline = models.load(name, models.current(name))
        frame = warehouse.query(f"select * from {REGISTRY.feature_set(name).training_set}")
        matrix = feature_matrix({f["name"]: frame[f["name"]].tolist() for f in card.features}, card.features)
        encoders, score = fitted_steps(pipeline, card.task == "classification")

        expected = pipeline.steps[0][1].transform(matrix)
        expected = expected.toarray() if sparse.issparse(expected) else expected
        encoded = np.concatenate([encode(matrix) for encode in encoders], axis=1)
        assert np.array_equal(encoded, expected), name
        one_by_one = np.vstack(
            [np.concatenate([encode(matrix[i : i + 1]) for encode in encoders], axis=1) for i in range(len(matrix))]
        )
        assert np.array_equal(one_by_one, expected), name

        rows = slice(None) if card.task == "classification" else slice(0, 300)  # gradient boosting scores itself
        reference = (
            pipeline.predict_proba(matrix[rows])[:, 1]
            if card.task == "classification"
            else pipeline.predict(matrix[rows])
        )
        np.testing.assert_allclose(score(encoded[rows]), reference, rtol=0, atol=1e-12, err_msg=name)
        singles = np.array([score(row.reshape(1, -1))[0] for row in encoded[rows]])
        np.testing.assert_allclose(singles, reference, rtol=0, atol=1e-12, err_msg=name)


def _openmp_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp")


def test_one_entity_is_scored_on_one_openmp_thread_exactly_as_the_pipeline_and_a_batch_keeps_the_pool(
    trained, redis_client
):
    """predict_one holds OpenMP to one thread while it scores (gradient boosting woke its whole pool per tree for the
    one row, the tail of ltv_model's latency), for any estimator; the score is the pipeline's own, to the bit, and
    afterwards the process's thread pools are as they were."""
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_info

    from feature_assets.serving.predictor import _Served

    class OpenMPThreads(RegressorMixin, BaseEstimator):
        """A team's own estimator: scores each row with the OpenMP threads it may use while it scores."""

        def fit(self, X, y=None):
            return self

        def predict(self, X):
            return np.full(len(X), float(_openmp_threads()))

    warehouse, root = trained
    store = RedisOnlineStore(redis_client)
    sync_views(warehouse, store)
    models = FolderModelStore(root)
    card, pipeline = models.load("ltv_model", models.current("ltv_model"))
    pools, threads = threadpool_info(), _openmp_threads()

    predictions = [Predictor(store, models).predict_one("ltv_model", user) for user in _latest_users(warehouse, 40)]
    matrix = feature_matrix(
        {f["name"]: [p.features[f["name"]] for p in predictions] for f in card.features}, card.features
    )
    assert [p.score for p in predictions] == pipeline.predict(matrix).tolist()
    assert threadpool_info() == pools

    served = _Served(store, card, Pipeline([pipeline.steps[0], ("own", OpenMPThreads())]))
    assert served.score_row(matrix[:1]) == 1.0
    assert served.score_matrix(matrix).tolist() == [float(threads)] * len(matrix)
    assert threadpool_info() == pools

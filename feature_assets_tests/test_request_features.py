"""Request-time features: checkout_model is sent the order's amount with each user and computes order_to_avg_ratio
from it and the user's stored avg_order_30d, with one function at training and serving. Trained on the demo's
orders (order_labels, the `trained` build) and served from a real SQLite or Redis online store."""

import hashlib
import inspect
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import redis
from conftest import REDIS_URL
from served_models import record, serve_models, train_and_save, user_rows, write_snapshots
from test_server import Server

from feature_assets.cli import main
from feature_assets.errors import InvalidEntity, RegistryError
from feature_assets.registry import load_registry
from feature_assets.request_features import order_to_avg_ratio
from feature_assets.request_time import request_fields
from feature_assets.serving import FolderModelStore, RedisOnlineStore, SqliteOnlineStore
from feature_assets.serving.predictor import Predictor, SchemaMismatch, feature_matrix, model_scorer
from feature_assets.settings import dbt_manifest_path
from feature_assets.store import FeatureStore

REGISTRY = load_registry(dbt_manifest_path())
CHECKOUT = REGISTRY.feature_set("checkout_model")
USERS = REGISTRY.view("user_features")


def test_the_registry_reads_the_request_fields_and_the_function_with_the_checksum_of_its_source():
    assert [(f.name, f.dtype) for f in CHECKOUT.request] == [("order_amount", "float64")]
    [feature] = CHECKOUT.request_features
    assert feature.function == "feature_assets.request_features:order_to_avg_ratio"
    assert feature.definition_checksum == hashlib.sha256(inspect.getsource(order_to_avg_ratio).encode()).hexdigest()
    assert [f.name for f in CHECKOUT.inputs] == [*CHECKOUT.feature_names, "order_to_avg_ratio"]


def test_a_request_field_its_label_table_does_not_carry_is_refused_by_name():
    block = {"request": {"basket_size": "bigint"}}
    with pytest.raises(
        RegistryError, match="request field basket_size is not a column of its label table order_labels"
    ):
        request_fields("checkout_model", block, CHECKOUT.labels, set())
    with pytest.raises(RegistryError, match="request field order_amount has data_type 'money'"):
        request_fields("checkout_model", {"request": {"order_amount": "money"}}, CHECKOUT.labels, set())


def test_the_model_card_lists_the_request_time_feature_with_its_definition_checksum(trained):
    _, models_root = trained
    card = FolderModelStore(models_root).card("checkout_model")
    assert card.request == [{"name": "order_amount", "dtype": "float64"}]
    assert card.request_features == [
        {
            "name": "order_to_avg_ratio",
            "dtype": "float64",
            "function": "feature_assets.request_features:order_to_avg_ratio",
            "definition_checksum": CHECKOUT.request_features[0].definition_checksum,
        }
    ]
    assert card.rows["fit"] >= 20 and card.metrics["auc"] > 0.5


def _online_users(kept: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """user_features rows holding each kept row's stored features (the others made up: the model reads none)."""
    frame = user_rows(kept["user_id"].to_numpy(), rng)
    for feature in CHECKOUT.features:
        frame[feature.name] = kept[feature.name].to_numpy()
    frame["events_30d"] = frame["events_30d"].astype("Int64")
    frame["avg_order_30d"] = frame["avg_order_30d"].astype("Float64")
    frame["plan"] = frame["plan"].astype("string")
    return frame


def test_request_time_features_are_equal_in_training_and_serving_on_every_training_row(trained, tmp_path):
    """Every row the served version was fitted and validated on, replayed: its user's stored features written to the
    online store, its order amount sent with the user; serving computes the ratio and the score it was trained on."""
    _, models_root = trained
    models = FolderModelStore(models_root)
    card, pipeline = models.load("checkout_model")
    kept = models.training_set("checkout_model").reset_index(drop=True)
    assert len(kept) == card.rows["fit"] + card.rows["validation"] >= 25
    assert kept["order_to_avg_ratio"].notna().any() and kept["order_to_avg_ratio"].isna().any()
    trained_scores = model_scorer(pipeline, card.inputs, True)(
        feature_matrix({f["name"]: kept[f["name"]].tolist() for f in card.inputs}, card.inputs)
    )
    rng = np.random.default_rng(0)
    compared = 0
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        predictor = Predictor(store, models)
        # Rows in rounds of distinct users: each round writes its users' stored features, then scores its rows.
        rounds = kept.groupby("user_id").cumcount()
        for round_ in range(int(rounds.max()) + 1):
            rows = kept[rounds == round_]
            users = _online_users(rows, rng)
            users.insert(1, USERS.timestamp, pd.Timestamp.now(tz="UTC").floor("h").tz_localize(None))
            users[USERS.timestamp] = users[USERS.timestamp].astype("datetime64[us]")
            record(store, USERS, users)
            for index, row in rows.iterrows():
                served = predictor.predict_one(
                    "checkout_model", {"user_id": int(row["user_id"]), "order_amount": float(row["order_amount"])}
                )
                expected = row["order_to_avg_ratio"]
                got = served.features["order_to_avg_ratio"]
                assert (got is None and pd.isna(expected)) or got == expected, (index, got, expected)
                assert served.score == pytest.approx(trained_scores[index], rel=1e-9, abs=1e-12), index
                compared += 1
    assert compared == len(kept)


def test_model_input_computes_the_request_time_features_as_training_did(trained):
    warehouse, models_root = trained
    kept = FolderModelStore(models_root).training_set("checkout_model")
    with FeatureStore(registry=REGISTRY, warehouse=warehouse) as store:
        inputs = store.model_input(kept.drop(columns="order_to_avg_ratio"), "checkout_model")
    assert list(inputs.columns) == [*CHECKOUT.feature_names, "order_to_avg_ratio"]
    np.testing.assert_array_equal(inputs["order_to_avg_ratio"].to_numpy(), kept["order_to_avg_ratio"].to_numpy())


# Serving: the registry's models trained on synthetic rows (served_models), users in the test's Redis database.
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    serve_models(FolderModelStore(folder / "models"), REGISTRY, "v1")
    return folder


@pytest.fixture(scope="module")
def online(home):
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    store = RedisOnlineStore.from_url(REDIS_URL)
    users = write_snapshots(store, REGISTRY)["user_features"]
    yield store, users.set_index("user_id")
    store.close()
    client.flushdb()
    client.close()


def _user_with_an_average(users: pd.DataFrame) -> int:
    return int(users.index[users["avg_order_30d"].notna()][0])


def test_serving_computes_the_ratio_from_the_request_and_refuses_a_missing_or_mistyped_field(home, online):
    store, users = online
    predictor = Predictor(store, FolderModelStore(home / "models"))
    user = _user_with_an_average(users)
    small = predictor.predict_one("checkout_model", {"user_id": user, "order_amount": 5.0})
    large = predictor.predict_one("checkout_model", {"user_id": user, "order_amount": "500"})
    assert small.features["order_to_avg_ratio"] == 5.0 / users.loc[user, "avg_order_30d"]
    assert large.features["order_to_avg_ratio"] == 500.0 / users.loc[user, "avg_order_30d"]
    assert small.score != large.score
    for entity, message in [
        ({"user_id": user}, "needs the request field order_amount"),
        ({"user_id": user, "order_amount": None}, "needs the request field order_amount"),
        ({"user_id": user, "order_amount": "abc"}, "request field order_amount must be a finite number"),
        ({"user_id": user, "order_amount": True}, "request field order_amount must be a finite number"),
        ({"user_id": user, "order_amount": "nan"}, "request field order_amount must be a finite number"),
    ]:
        with pytest.raises(InvalidEntity, match=message):
            predictor.predict_one("checkout_model", entity)
    with pytest.raises(InvalidEntity, match="needs the request field order_amount"):
        predictor.predict("checkout_model", pd.DataFrame({"user_id": [user, user + 1]}))
    with pytest.raises(InvalidEntity, match="request field order_amount must be a finite number"):
        predictor.predict("checkout_model", pd.DataFrame({"user_id": [user, user + 1], "order_amount": [1.0, "x"]}))
    batch = predictor.predict("checkout_model", pd.DataFrame({"user_id": [user, user], "order_amount": [5.0, 500.0]}))
    assert batch["score"].tolist() == pytest.approx([small.score, large.score])
    assert "order_amount" not in batch.columns


def test_a_changed_request_time_function_makes_the_old_version_refuse_to_serve(home, online, tmp_path):
    store, _ = online
    models = FolderModelStore(tmp_path / "models")
    [feature] = CHECKOUT.request_features
    older = replace(CHECKOUT, request_features=(replace(feature, definition_checksum="0" * 64),))
    train_and_save(models, older, "v1")
    models.promote("checkout_model", "v1")
    with pytest.raises(SchemaMismatch, match=r"order_to_avg_ratio .* changed since the model was trained; retrain"):
        Predictor(store, models).predict_one("checkout_model", {"user_id": 1, "order_amount": 5.0})


@pytest.fixture(scope="module")
def server(home, online):
    running = Server(home, REDIS_URL, workers=1)
    yield running.wait_healthy()
    running.stop()


def test_over_http_request_fields_travel_with_each_entity_and_a_bad_one_is_a_400_naming_it(server, online):
    _, users = online
    user = _user_with_an_average(users)
    answer = server.predict(
        "checkout_model", {"user_id": user, "order_amount": 25.0}, {"user_id": 2, "order_amount": 9}
    )
    assert answer.status_code == 200, answer.text
    one = server.predict("checkout_model", {"user_id": user, "order_amount": 25.0})
    assert one.status_code == 200, one.text
    for entity, message in [
        ({"user_id": user}, "needs the request field order_amount"),
        ({"user_id": user, "order_amount": "lots"}, "request field order_amount must be a finite number"),
    ]:
        refused = server.predict("checkout_model", entity)
        assert refused.status_code == 400
        body = refused.json()
        assert set(body) == {"error", "cause"} and message in body["error"], body
    assert server.predict("checkout_model", {"user_id": user}, {"user_id": 2}).status_code == 400


def _cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_takes_request_fields_and_refuses_a_bad_one_in_one_line(home, online, capsys, monkeypatch):
    _, users = online
    monkeypatch.setenv("FEATURE_STORE_HOME", str(home))
    monkeypatch.setenv("FEATURE_STORE_ONLINE", "redis")
    monkeypatch.setenv("FEATURE_STORE_REDIS_URL", REDIS_URL)
    user = str(_user_with_an_average(users))
    code, out, err = _cli(["predict", "checkout", user, "--request", "order_amount=25"], capsys)
    assert code == 0, err
    assert "order_to_avg_ratio=" in out and "score" in out
    for argv, message in [
        (["predict", "checkout", user], "needs the request field order_amount"),
        (["predict", "checkout", user, "--request", "order_amount=abc"], "request field order_amount must be"),
        (["predict", "checkout", user, "--request", "order_amount"], "--request takes NAME=VALUE"),
        (
            ["predict", "checkout", user, "--request", "order_amnt=25"],
            "checkout_model takes no request field order_amnt; its request fields: order_amount",
        ),
    ]:
        code, _, err = _cli(argv, capsys)
        assert code != 0 and "Traceback" not in err
        [line] = err.splitlines()
        assert line.startswith("featurestore: ") and message in line, line

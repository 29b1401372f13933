"""The model store contract, run against each implementation (folders, PostgreSQL): versions round-trip, unknown
ones are refused by name, promotion is atomic and seen by every host, and a serving Predictor follows it."""

import json
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pytest
from conftest import wait_until

from feature_assets.assets.monitoring import served_models_asset
from feature_assets.cli import main
from feature_assets.errors import ConfigError, ModelStoreError
from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.resources.model_store import model_store_for
from feature_assets.serving import (
    FolderModelStore,
    ModelCard,
    PostgresModelStore,
    Predictor,
    SqliteOnlineStore,
    open_model_store,
)
from feature_assets.serving.predictor import feature_matrix
from feature_assets.serving.reads import RECHECK_SECONDS
from feature_assets.settings import Settings, dbt_manifest_path

REGISTRY = load_registry(dbt_manifest_path())
MODEL = "churn_model"


def trained_version(root, model: str) -> tuple[ModelCard, Any, bytes]:
    """The served version of `model` in the trained folder: its card (without history), pipeline and kept rows."""
    card, pipeline = FolderModelStore(root).load(model)
    return replace(card, history=[]), pipeline, (root / model / card.version / "training.parquet").read_bytes()


@pytest.fixture
def trained_versions(trained):
    """The trained churn model (conftest) as two versions: its card and pipeline under two version names (keeping
    no training rows)."""
    warehouse, root = trained
    card, pipeline, _ = trained_version(root, MODEL)
    return warehouse, [(replace(card, version=f"20260101T00000{n}000000Z", training=None), pipeline) for n in (1, 2)]


def test_a_saved_version_loads_back_with_an_equal_card_and_the_same_predictions(trained, open_store):
    warehouse, root = trained
    writer, reader = open_store(), open_store()
    for model in ("churn_model", "ltv_model"):
        card, pipeline, training = trained_version(root, model)
        writer.save(card, pipeline, training)
        loaded_card, loaded = reader.load(model, card.version)
        assert loaded_card == card == reader.card(model, card.version)
        assert reader.versions(model) == [card.version]
        kept = reader.training_set(model, card.version)
        assert kept.equals(FolderModelStore(root).training_set(model)) and len(kept) == card.training["rows"]
        frame = warehouse.query(f"select * from {REGISTRY.feature_set(model).training_set} limit 500")
        matrix = feature_matrix({f["name"]: frame[f["name"]].tolist() for f in card.features}, card.features)
        score = (
            (lambda p, matrix=matrix: p.predict_proba(matrix)[:, 1])
            if card.task == "classification"
            else (lambda p, matrix=matrix: p.predict(matrix))
        )
        assert np.array_equal(score(loaded), score(pipeline)), model


def test_unknown_models_and_versions_are_refused_in_one_line_naming_them(trained_versions, open_store):
    _, [(card, pipeline), _] = trained_versions
    store = open_store()
    store.save(card, pipeline)
    refusals = [
        (lambda: store.current(MODEL), f"model '{MODEL}' has no served version in "),
        (lambda: store.card("fraud_model", "v1"), "model 'fraud_model' has no version 'v1' in "),
        (
            lambda: store.load(MODEL, "20990101T000000000000Z"),
            f"model '{MODEL}' has no version '20990101T000000000000Z' in ",
        ),
        (lambda: store.load(MODEL), f"model '{MODEL}' has no served version in "),
        (lambda: store.promote(MODEL, "v9"), f"model '{MODEL}' has no version 'v9' in "),
        (
            lambda: store.promote("fraud_model", card.version),
            f"model 'fraud_model' has no version '{card.version}' in ",
        ),
        (lambda: store.save(card, pipeline), f"model '{MODEL}' already has a version '{card.version}' in "),
    ]
    for attempt, message in refusals:
        with pytest.raises(ModelStoreError) as refused:
            attempt()
        assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert store.versions("fraud_model") == [] and store.versions(MODEL) == [card.version]
    store.promote(MODEL, card.version)  # the refused promotions left nothing behind
    assert store.current(MODEL) == card.version


def test_a_promotion_is_atomic_and_seen_by_another_host_at_once(trained_versions, open_store):
    _, versions = trained_versions
    (first, pipeline), (second, _) = versions
    here, there = open_store(), open_store()
    for card, _ in versions:
        here.save(card, pipeline)
    assert there.served_models() == []  # saved, none served yet
    here.promote(MODEL, first.version)
    assert there.served_models() == [MODEL]
    assert there.current(MODEL) == first.version and replace(there.card(MODEL), history=[]) == first
    here.promote(MODEL, second.version, note="after review")
    assert there.current(MODEL) == second.version and replace(there.load(MODEL)[0], history=[]) == second
    # Each version's card lists the events that promoted it, as every host reads them.
    [event] = there.card(MODEL, second.version).history
    assert (event["version"], event["note"]) == (second.version, "after review")
    assert there.load(MODEL)[0].history == [event]
    assert [e["note"] for e in there.card(MODEL, first.version).history] == [""]
    assert datetime.fromisoformat(event["promoted_at"]).utcoffset() == timedelta(0)
    assert event["promoted_at"] > there.card(MODEL, first.version).history[0]["promoted_at"]

    # Four hosts promote one version or the other while a fifth reads: every read is a whole version, never none.
    names, seen, failures = {first.version, second.version}, [], []
    stop = threading.Event()

    def promote(store, n):
        try:
            for i in range(40):
                store.promote(MODEL, versions[(i + n) % 2][0].version)
        except Exception as error:
            failures.append(error)

    def read(store):
        try:
            while not stop.is_set():
                seen.append(store.current(MODEL))
                seen.append(store.card(MODEL).version)
        except Exception as error:
            failures.append(error)

    reader = threading.Thread(target=read, args=(open_store(),))
    reader.start()
    writers = [threading.Thread(target=promote, args=(open_store(), n)) for n in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()
    assert failures == [] and seen and set(seen) <= names
    assert here.current(MODEL) == there.current(MODEL) == open_store().current(MODEL) in names
    # Every promotion is in the history, and the newest event names the version that is served.
    events = [event for card, _ in versions for event in here.card(MODEL, card.version).history]
    assert len(events) == 2 + 4 * 40
    assert max(events, key=lambda event: event["promoted_at"])["version"] == here.current(MODEL)


def test_a_serving_predictor_follows_a_promotion_within_a_second_without_a_failed_prediction(
    trained_versions, open_store, tmp_path
):
    warehouse, versions = trained_versions
    (first, pipeline), (second, _) = versions
    trainer = open_store()  # the training run, on another host than the server
    for card, _ in versions:
        trainer.save(card, pipeline)
    trainer.promote(MODEL, first.version)
    online = SqliteOnlineStore(tmp_path / "online.sqlite")
    for view in REGISTRY.views.values():
        sync_online_store(warehouse, online, view, full_resync=True)
    user = int(
        warehouse.query("select user_id from user_features order by computed_at desc, user_id limit 1")["user_id"].iloc[
            0
        ]
    )

    served = open_store()
    asked = {"current": 0, "load": []}
    current, load = served.current, served.load

    def counted_current(model):
        asked["current"] += 1
        return current(model)

    def counted_load(model, version=None):
        asked["load"].append(version)
        return load(model, version)

    served.current, served.load = counted_current, counted_load
    predictor = Predictor(online, served)
    answers, failures, stop = [], [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                answers.append((time.monotonic(), predictor.predict_one(MODEL, user).version))
            except Exception as error:
                failures.append(error)

    started = time.monotonic()
    server = threading.Thread(target=serve)
    server.start()
    try:
        wait_until(lambda: len(answers) > 50, "predictions with the first version")
        trainer.promote(MODEL, second.version)
        promoted = time.monotonic()
        wait_until(lambda: answers[-1][1] == second.version, "the switch to the promoted version")
        switched = next(at for at, version in answers if version == second.version)
        time.sleep(0.5)
    finally:
        stop.set()
        server.join()
    elapsed = time.monotonic() - started
    assert failures == []
    served_versions = [version for _, version in answers]
    switch = served_versions.index(second.version)
    assert set(served_versions[:switch]) == {first.version} and set(served_versions[switch:]) == {second.version}
    # The pointer is read about once a RECHECK_SECONDS (not per prediction), so the switch comes within about that;
    # the bound leaves room for a loaded machine.
    assert switched - promoted < 3 * RECHECK_SECONDS
    assert asked["current"] <= elapsed / RECHECK_SECONDS + 2 < len(answers)
    assert asked["load"] == [first.version, second.version]  # each version's artifact loaded once


def test_featurestore_predict_serves_from_either_store(trained, environment, open_store, monkeypatch, capsys):
    warehouse, root = trained
    store = open_store()
    for model in ("churn_model", "ltv_model"):
        store.save(*trained_version(root, model))
        store.promote(model, store.versions(model)[-1])
    settings = Settings.from_env(environment)
    with SqliteOnlineStore(settings.online_sqlite_path) as online:
        for view in REGISTRY.views.values():
            sync_online_store(warehouse, online, view, full_resync=True)
    for name in (
        "FEATURE_STORE_ENV",
        "FEATURE_STORE_ONLINE",
        "FEATURE_STORE_DEMO_DATA",
        "FEATURE_STORE_MODEL_STORE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    user = int(
        warehouse.query("select user_id from user_features order by computed_at desc, user_id limit 1")["user_id"].iloc[
            0
        ]
    )
    assert main(["predict", "churn", str(user), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == store.current("churn_model") and 0.0 <= printed["score"] <= 1.0


def test_the_served_models_asset_promotes_the_newest_version_in_either_store(
    trained_versions, environment, open_store, monkeypatch, duckdb_warehouse
):
    _, versions = trained_versions
    store = open_store()
    for card, pipeline in versions:
        store.save(card, pipeline)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)  # the resource reads the URL as an EnvVar when the run starts
    resource = model_store_for(Settings.from_env(environment))
    asset = served_models_asset(REGISTRY, [])
    # A warehouse without skew reports: no drift error holds the promotion back.
    resources = {"model_store": resource, "warehouse": duckdb_warehouse}
    result = dg.materialize([asset], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert store.current(MODEL) == versions[-1][0].version


def test_an_unreachable_model_store_is_one_line_without_the_password(tmp_path, monkeypatch, capsys):
    unreachable = "postgresql://nobody:s3cret@127.0.0.1:1/models"
    with pytest.raises(ModelStoreError) as refused:
        PostgresModelStore(unreachable, "public").current(MODEL)
    message = str(refused.value)
    assert message.startswith("cannot connect to the PostgreSQL model store at 127.0.0.1:1/models: ")
    assert "s3cret" not in message and "\n" not in message
    with pytest.raises(ModelStoreError, match="not a valid libpq URL") as refused:
        PostgresModelStore("postgresql://nobody:s3cret@127.0.0.1:5432/models?bogus=1", "public").versions(MODEL)
    assert "s3cret" not in str(refused.value)

    # The command line says the same in one line.
    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    monkeypatch.setenv("FEATURE_STORE_MODEL_STORE_URL", unreachable)
    for name in ("FEATURE_STORE_ENV", "FEATURE_STORE_ONLINE", "FEATURE_STORE_DEMO_DATA"):
        monkeypatch.delenv(name, raising=False)
    assert main(["predict", "churn", "42"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("featurestore: cannot connect to the PostgreSQL model store at 127.0.0.1:1/models")
    assert "s3cret" not in line


def test_the_settings_choose_the_folder_locally_and_postgres_when_a_url_is_set_or_in_prod(tmp_path):
    local = {"FEATURE_STORE_HOME": str(tmp_path)}
    store = open_model_store(Settings.from_env(local), local)
    assert isinstance(store, FolderModelStore) and store.root == tmp_path / "models"
    assert model_store_for(Settings.from_env(local)).kind == "folder"

    chosen = {**local, "FEATURE_STORE_MODEL_STORE_URL": "postgresql://u:secret@models.internal:5433/ml"}
    store = open_model_store(Settings.from_env(chosen), chosen)
    assert isinstance(store, PostgresModelStore) and "models.internal:5433/ml" in store.describe()
    assert "secret" not in repr(Settings.from_env(chosen)) + store.describe()

    # In prod the warehouse's PostgreSQL holds the models unless another URL is set.
    prod = {**local, "FEATURE_STORE_ENV": "prod", "FEATURE_STORE_POSTGRES_URL": "postgresql://u:secret@warehouse:5432/features",
            "FEATURE_STORE_ONLINE": "sqlite", "FEATURE_STORE_POSTGRES_SCHEMA": "features"}  # fmt: skip
    store = open_model_store(Settings.from_env(prod), prod)
    assert (
        isinstance(store, PostgresModelStore)
        and store.describe() == "the PostgreSQL model store at warehouse:5432/features (schema features)"
    )
    resource = model_store_for(Settings.from_env(prod))
    assert (resource.kind, resource.schema_name) == ("postgres", "features")
    store = open_model_store(Settings.from_env({**prod, **chosen}), {**prod, **chosen})
    assert "models.internal:5433/ml" in store.describe()

    with pytest.raises(ConfigError, match="FEATURE_STORE_MODEL_STORE_URL must be a postgresql:// URL") as refused:
        Settings.from_env({**local, "FEATURE_STORE_MODEL_STORE_URL": "s3://key:secret@bucket/models"})
    assert "secret" not in str(refused.value)

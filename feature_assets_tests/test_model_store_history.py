"""What the model store keeps beside each version, in either store: the training rows it was fitted and validated on
(checked against its card on every read), the history of its promotions, and versions stored by earlier code."""

import json
import pickle
import uuid
from dataclasses import asdict, replace
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.linear_model import LogisticRegression

from feature_assets.errors import ModelStoreError
from feature_assets.registry import LABEL_ROW, load_registry
from feature_assets.serving import FolderModelStore, ModelCard, PostgresModelStore
from feature_assets.serving.training_rows import decode_training_rows, encode_training_rows
from feature_assets.settings import dbt_manifest_path

CHURN = load_registry(dbt_manifest_path()).feature_set("churn_model")
MODEL = CHURN.model


def kept_rows(count: int = 40) -> pd.DataFrame:
    """Training rows as the model asset keeps them: keys, label time, row number, features with nulls, target, split."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            LABEL_ROW: pd.array(np.arange(count), dtype="int64"),
            "user_id": pd.array(rng.integers(1, 500, count), dtype="int64"),
            "label_time": pd.date_range("2026-01-01", periods=count, freq="D").astype("datetime64[us]"),
            "user_features_snapshot_at": pd.date_range("2025-12-31", periods=count, freq="D").astype("datetime64[us]"),
            "age": pd.array([None if i % 7 == 0 else 20 + i for i in range(count)], dtype="Int64"),
            "plan": pd.array([None if i % 5 == 0 else ("free", "pro")[i % 2] for i in range(count)], dtype="string"),
            "avg_order_30d": rng.gamma(2.0, 10.0, count),
            "churned": rng.random(count) < 0.3,
            "split": ["fit"] * (count - 8) + ["validation"] * 8,
        }
    )


def version(name: str, rows: pd.DataFrame | None) -> tuple[ModelCard, LogisticRegression, bytes | None]:
    """A churn_model version: its card (training summary included when rows are kept), a fitted estimator, the
    encoded rows."""
    encoded = None if rows is None else encode_training_rows(rows)
    card = ModelCard.for_feature_set(
        CHURN,
        version=name,
        trained_at="2026-01-01T00:00:00+00:00",
        training_window={},
        rows={"fit": 32, "validation": 8},
        metrics={"auc": 0.5},
        trainer={"function": "builtin", "estimator": "sklearn.linear_model._logistic.LogisticRegression", "params": {}},
        training=None if encoded is None else encoded.summary,
    )
    estimator = LogisticRegression().fit(np.arange(8.0).reshape(-1, 1), [0, 1] * 4)
    return card, estimator, None if encoded is None else encoded.data


def test_training_rows_round_trip_with_their_types_and_a_checksum_that_refuses_other_bytes():
    rows = kept_rows()
    encoded = encode_training_rows(rows)
    assert encoded.summary["format"] == "parquet" and encoded.summary["rows"] == 40
    assert encoded.summary["columns"] == list(rows.columns) and encoded.summary["bytes"] == len(encoded.data)
    decoded = decode_training_rows(encoded.data, encoded.summary)
    pd.testing.assert_frame_equal(decoded, rows)
    with pytest.raises(ModelStoreError, match=r"^model 'm' version 'v1': the kept training rows do not match the "):
        decode_training_rows(encoded.data[:-10], encoded.summary, what="model 'm' version 'v1'")


def test_a_version_keeps_the_rows_it_was_fitted_on_and_one_saved_without_them_says_so(open_store):
    writer, reader = open_store(), open_store()
    rows = kept_rows()
    writer.save(*version("20260101T000001000000Z", rows))
    writer.save(*version("20260101T000002000000Z", None))
    pd.testing.assert_frame_equal(reader.training_set(MODEL, "20260101T000001000000Z"), rows)
    writer.promote(MODEL, "20260101T000001000000Z")
    pd.testing.assert_frame_equal(reader.training_set(MODEL), rows)  # the served version's
    assert reader.card(MODEL).training == encode_training_rows(rows).summary
    with pytest.raises(
        ModelStoreError, match=r"^model 'churn_model' version '20260101T000002000000Z' kept no training"
    ):
        reader.training_set(MODEL, "20260101T000002000000Z")
    with pytest.raises(ModelStoreError, match=r"^model 'churn_model' has no version 'v9' in "):
        reader.training_set(MODEL, "v9")
    with pytest.raises(ModelStoreError, match=r"^model 'ltv_model' has no served version in "):
        reader.training_set("ltv_model")


def test_training_rows_that_are_not_the_ones_the_card_describes_are_refused_and_nothing_is_saved(open_store):
    store = open_store()
    card, estimator, data = version("v1", kept_rows())
    other = encode_training_rows(kept_rows(39)).data
    refusals = [
        ((replace(card, training=None), estimator, data), "training rows given without their summary in the card"),
        ((card, estimator, None), "its card describes kept training rows, but none were given to save"),
        ((card, estimator, other), "the training rows given are not the ones its card describes"),
    ]
    for arguments, message in refusals:
        with pytest.raises(ModelStoreError, match=f"^model 'churn_model' version 'v1': {message}"):
            store.save(*arguments)
    assert store.versions(MODEL) == []


def test_kept_training_rows_changed_in_the_store_are_refused_not_read(open_store, environment):
    store = open_store()
    card, estimator, data = version("v1", kept_rows())
    store.save(card, estimator, data)
    changed = encode_training_rows(kept_rows().assign(churned=False)).data
    if "FEATURE_STORE_MODEL_STORE_URL" in environment:
        with psycopg.connect(environment["FEATURE_STORE_MODEL_STORE_URL"], autocommit=True) as con:
            schema = environment["FEATURE_STORE_POSTGRES_SCHEMA"]
            con.execute(f"update {schema}.model_training_sets set data = %s", (changed,))
    else:
        (store.root / MODEL / "v1" / "training.parquet").write_bytes(changed)
    with pytest.raises(
        ModelStoreError, match=r"^model 'churn_model' version 'v1': the kept training rows do not match"
    ):
        store.training_set(MODEL, "v1")


def test_each_promotion_is_recorded_with_its_note_and_a_card_lists_those_of_its_version(open_store):
    store = open_store()
    for name in ("v1", "v2"):
        store.save(*version(name, None))
    store.promote(MODEL, "v1")
    store.promote(MODEL, "v2", note="better auc")
    store.promote(MODEL, "v1", note="rollback: v2 drifted")
    first, second = store.card(MODEL, "v1").history, store.card(MODEL, "v2").history
    assert [(e["version"], e["note"]) for e in first] == [("v1", ""), ("v1", "rollback: v2 drifted")]
    assert [(e["version"], e["note"]) for e in second] == [("v2", "better auc")]
    times = [datetime.fromisoformat(e["promoted_at"]) for e in (first[0], second[0], first[1])]
    assert times == sorted(times) and all(t.utcoffset().total_seconds() == 0 for t in times)
    assert store.card(MODEL) == store.load(MODEL)[0] and store.card(MODEL).history == first
    # A saved card holds no history: the store's record of promotions is the only one.
    card, estimator, _ = version("v3", None)
    store.save(
        replace(card, history=[{"promoted_at": "2026-01-01T00:00:00+00:00", "version": "v3", "note": "x"}]), estimator
    )
    assert store.card(MODEL, "v3").history == []


# What the previous code wrote: PostgreSQL's two tables, and a folder without history or kept rows.
OLD_TABLES = """
create table {schema}.model_versions (model text not null, version text not null, card text not null,
    artifact bytea not null, created_at timestamptz not null default now(), primary key (model, version));
create table {schema}.served_model_versions (model text primary key, version text not null,
    promoted_at timestamptz not null default now(), foreign key (model, version) references {schema}.model_versions)
"""


def old_card_json(card: ModelCard) -> str:
    return json.dumps({k: v for k, v in asdict(card).items() if k not in ("trainer", "training", "history")})


def test_a_store_written_by_earlier_code_serves_its_versions_and_keeps_history_from_now_on(
    tmp_path, postgres_url, request
):
    card, estimator, _ = version("v1", None)
    folder = tmp_path / "models"
    (folder / MODEL / "v1").mkdir(parents=True)
    (folder / MODEL / "v1" / "model.pkl").write_bytes(pickle.dumps(estimator))
    (folder / MODEL / "v1" / "card.json").write_text(old_card_json(card))
    (folder / MODEL / "current").write_text("v1")
    schema = f"fs_test_{uuid.uuid4().hex[:10]}"

    def drop_schema():
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")

    request.addfinalizer(drop_schema)
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"create schema {schema}")
        con.execute(OLD_TABLES.format(schema=schema))
        con.execute(
            f"insert into {schema}.model_versions (model, version, card, artifact) values (%s, 'v1', %s, %s)",
            (MODEL, old_card_json(card), pickle.dumps(estimator)),
        )
        con.execute(f"insert into {schema}.served_model_versions (model, version) values (%s, 'v1')", (MODEL,))

    for store in (FolderModelStore(folder), PostgresModelStore(postgres_url, schema)):
        with store:
            loaded, pipeline = store.load(MODEL)
            assert replace(loaded, trainer=card.trainer) == card and loaded.trainer is None and loaded.history == []
            np.testing.assert_array_equal(pipeline.coef_, estimator.coef_)
            with pytest.raises(ModelStoreError, match="version 'v1' kept no training rows"):
                store.training_set(MODEL)
            store.promote(MODEL, "v1", note="after the upgrade")
            assert [e["note"] for e in store.card(MODEL).history] == ["after the upgrade"]
            rows = kept_rows()
            store.save(*version("v2", rows))
            pd.testing.assert_frame_equal(store.training_set(MODEL, "v2"), rows)

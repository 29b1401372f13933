"""Predictions from the online store with the served version of a model, bound to the feature schema it was trained on.

A model version (in a `ModelStore`: folders locally, PostgreSQL in prod) is the fitted estimator (the built-in
pipeline, or any scikit-learn-compatible one: serving/estimators.py) and its card: the ordered feature columns with
their dtypes and definition checksums, the schema version, the training window, row counts and validation metrics.
The store's pointer names the version `predict` serves.

Serving reads exactly the card's features, casts them by the card's dtypes and refuses when the online
store holds another definition of any of them. Features the card does not list are ignored, so a feature
added to the view never breaks an older model.
"""

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from feature_assets.errors import DataError, FeatureStoreError, InvalidEntity, MissingFeatures, OnlineStoreError, shown
from feature_assets.registry import FeatureView
from feature_assets.request_time import (
    RequestFeature,
    compute,
    function_checksum,
    import_function,
    input_arrays,
    input_row,
)
from feature_assets.serving.codec import parse_entity_id
from feature_assets.serving.fitted_steps import Rows, fitted_steps
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.model_store import ModelStore
from feature_assets.serving.online_store import OnlineStore, SyncRecord
from feature_assets.serving.reads import MISSING, RECHECK_SECONDS, FeatureReader
from feature_assets.serving.request_fields import request_column, split_request
from feature_assets.serving.served_log import ServedLog
from feature_assets.settings import seconds_from_milliseconds

__all__ = [
    "ModelCard",
    "ModelStore",
    "Prediction",
    "Predictor",
    "SchemaMismatch",
    "deadline_from_env",
    "feature_frame",
    "feature_matrix",
    "model_scorer",
]


def deadline_from_env() -> float:
    """FEATURE_STORE_PREDICT_DEADLINE_MS in seconds: the most one prediction may take, reads included."""
    return seconds_from_milliseconds("FEATURE_STORE_PREDICT_DEADLINE_MS", 1000)


_NUMERIC = ("int64", "float64", "bool")
# What a loaded model was checked against, per view: the sync record's version, schema and definitions.
_Checked = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


class SchemaMismatch(FeatureStoreError):
    """The online store holds a feature the model reads with another name, dtype or definition than its card."""


def feature_matrix(columns: Mapping[str, Sequence[Any]], features: Sequence[Mapping[str, str]]) -> np.ndarray:
    """The model input: one object column per feature in card order; numbers as floats and every null as NaN.

    Training and serving both build their input here, so the two paths cannot encode a value differently.
    Plain numpy, no Series: serving calls this for one row, where pandas' per-call overhead was ~0.5 ms.
    """
    matrix = np.empty((len(next(iter(columns.values()))) if columns else 0, len(features)), dtype=object)
    for position, feature in enumerate(features):
        values = np.asarray(columns[feature["name"]], dtype=object)
        null = pd.isna(values)  # None, NaN, pd.NA and NaT alike
        if feature["dtype"] in _NUMERIC:
            # float() of each value: ints, floats, bools, Decimals and numeric strings; anything else raises ValueError
            matrix[:, position] = np.where(null, np.nan, values).astype(float)
        else:
            matrix[:, position] = np.where(null, np.nan, values)
    return matrix


def feature_frame(columns: Mapping[str, Sequence[Any]], features: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    """The input of an estimator fitted on a DataFrame (a team's own trainer, a notebook's model): a column per
    feature, named by it, in card order; numbers (int64, float64, bool) as float64 with NaN for nulls, strings as
    object with NaN for nulls. Built from feature_matrix, so it encodes every value as the built-in input does."""
    return _frame(feature_matrix(columns, features), features)


def _frame(matrix: np.ndarray, features: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    # Strings as Series of dtype object: from a bare object array the DataFrame would infer pandas' str dtype. Numbers
    # as bare float arrays: a one-row frame of 8 features is built in about half the time a Series each takes.
    return pd.DataFrame(
        {
            f["name"]: matrix[:, position].astype(float)
            if f["dtype"] in _NUMERIC
            else pd.Series(matrix[:, position], dtype=object)
            for position, f in enumerate(features)
        }
    )


def model_scorer(estimator: Any, features: Sequence[Mapping[str, str]], classifier: bool) -> Rows:
    """Scores (the positive class's probability, or the predicted value) of rows of feature_matrix.

    The built-in pipeline's shape goes through its fitted parameters in numpy (fitted_steps). Any other estimator
    through its own predict_proba or predict, given its input form: feature_frame's DataFrame when it was fitted on
    one (it has feature_names_in_), the matrix otherwise (as floats when every feature is a number). Validation and
    serving both score here, so a version's metrics measure what is served.
    """
    steps = fitted_steps(estimator, classifier)
    if steps is not None:
        encoders, score = steps
        return lambda matrix: score(np.concatenate([encode(matrix) for encode in encoders], axis=1))
    prepare: Callable[[np.ndarray], Any]
    if getattr(estimator, "feature_names_in_", None) is not None:
        prepare = partial(_frame, features=features)
    elif all(f["dtype"] in _NUMERIC for f in features):
        prepare = partial(np.asarray, dtype=float)
    else:
        prepare = np.asarray
    if classifier:
        return lambda matrix: np.asarray(estimator.predict_proba(prepare(matrix)))[:, 1]
    return lambda matrix: np.asarray(estimator.predict(prepare(matrix)))


@dataclass(frozen=True)
class Prediction:
    entity: dict[str, Any]  # every entity key the prediction used, derived ones included
    score: float
    model: str
    version: str
    features: dict[str, Any]


class _ViewPart:
    """One view a served model reads: its reader, the fields one read asks for, and how its key is found."""

    def __init__(self, store: OnlineStore, view: FeatureView, derived_from: list[str] | None, extra: tuple[str, ...]):
        self.view = view
        self.key = view.entity_key
        self.derived_from = tuple(derived_from) if derived_from else None
        self.reader = FeatureReader(store, view)
        self.names = [*view.feature_names, *(name for name in extra if name not in view.feature_names)]
        self.fields = self.reader.fields(self.names)


class _Served:
    """One loaded model version with a reader per view, checked against the sync records it was loaded with."""

    def __init__(self, store: OnlineStore, card: ModelCard, pipeline: Any):
        self.card, self.pipeline = card, pipeline
        views = card.feature_views()
        self.views = views
        self.records = [_check_online_schema(store, view, card) for view in views]  # names what differs
        self.checked_at = time.monotonic()
        # A view whose online feature gives another view's key reads that feature too, even if the model does not.
        sources: dict[str, list[str]] = {}
        for view in card.views:
            if view["derived_from"]:
                sources.setdefault(view["derived_from"][0], []).append(view["derived_from"][1])
        self.parts = [
            _ViewPart(store, view, entry["derived_from"], tuple(sources.get(view.name, ())))
            for view, entry in zip(views, card.views)
        ]
        self.names = card.feature_names
        self.request_features = [RequestFeature(**f) for f in card.request_features]
        self.functions = [_request_function(card, feature) for feature in self.request_features]
        self.input_dtypes = {f["name"]: f["dtype"] for f in (*card.features, *card.request)}
        # The served log keeps the request-time features in the vectors of the first view keyed by the caller, where
        # the skew report of that view compares them with the training set's (skew_reports.request_feature_values).
        logged_with = next((p.view.name for p in self.parts if p.derived_from is None), None)
        self.logged = {
            part.view.name: [*part.view.feature_names, *(f.name for f in self.request_features)]
            if part.view.name == logged_with
            else list(part.view.feature_names)
            for part in self.parts
        }
        self.floats = [(f["view"], f["name"]) for f in card.features if f["dtype"] == "float64"]
        self.classifier = card.task == "classification"
        self.score_matrix = model_scorer(pipeline, card.inputs, self.classifier)
        # Made after the pipeline was unpickled, so it sees every OpenMP runtime the pipeline's estimators loaded.
        self._openmp = ThreadpoolController().select(user_api="openmp")

    def with_request_features(self, columns: dict[str, list[Any]], rows: int) -> dict[str, list[Any]]:
        """The columns with each request-time feature added, computed as training computes them."""
        if not self.functions:
            return columns
        computed = compute(self.request_features, self.functions, input_arrays(columns, self.input_dtypes), rows)
        nulled = {name: [None if v != v else v for v in values.tolist()] for name, values in computed.items()}
        return {**columns, **nulled}

    def request_row(self, values: dict[str, Any]) -> dict[str, float | None]:
        """One row's request-time features from its stored features and request fields (as with_request_features)."""
        computed = compute(self.request_features, self.functions, input_row(values, self.input_dtypes), 1)
        return {name: None if math.isnan(column[0]) else float(column[0]) for name, column in computed.items()}

    def score_row(self, matrix: np.ndarray) -> float:
        """The score of one row, with OpenMP held to one thread in this thread meanwhile. An OpenMP estimator
        (HistGradientBoosting: a parallel loop over the rows per tree, 200 trees in ltv_model) wakes and joins every
        thread of its pool for one row that only one of them scores; on a loaded 2-core host, where a woken thread
        waits for a core, ltv_model's predict_one p99 was 1.4 s with the pool and 18 ms without (benchmarks/predict.py).
        The limit's scope is the calling thread (threadpoolctl), so the server's other threads and batch scoring keep
        their pool."""
        with self._openmp.limit(limits=1):
            return float(self.score_matrix(matrix)[0])


def _request_function(card: ModelCard, feature: RequestFeature) -> Any:
    """The function of a request-time feature, or SchemaMismatch when its source changed since the model was trained."""
    where = f"model {card.model} version {card.version} computes {feature.name} with {feature.function}"
    try:
        checksum = function_checksum(feature.function, card.model)
    except FeatureStoreError as error:
        raise SchemaMismatch(f"{where}, but {error}") from None
    if checksum != feature.definition_checksum:
        raise SchemaMismatch(f"{where}, but that function changed since the model was trained; retrain the model")
    return import_function(feature.function, f"model {card.model}")


def _check_online_schema(store: OnlineStore, view: FeatureView, card: ModelCard) -> _Checked | None:
    """The store's sync record of the view (what was checked), or SchemaMismatch naming what differs."""
    record = store.last_sync(view)
    if record is None:
        raise SchemaMismatch(f"{store.describe()} holds no synced {view.name}; run the online sync before predicting")
    online_dtypes, online_definitions = dict(record.schema), dict(record.definitions)
    for feature in card.features:
        if feature["view"] != view.name:
            continue
        name = feature["name"]
        where = f"model {card.model} version {card.version} reads {view.name}.{name}"
        if name not in online_dtypes:
            raise SchemaMismatch(
                f"{where}, but {store.describe()} has no such feature (it has {', '.join(online_dtypes)})"
            )
        if online_dtypes[name] != feature["dtype"]:
            raise SchemaMismatch(
                f"{where} as {feature['dtype']}, but the online store holds it as {online_dtypes[name]}; "
                "retrain the model"
            )
        if online_definitions.get(name) != feature["definition_checksum"]:
            raise SchemaMismatch(
                f"{where}, but its definition (SQL) changed since the model was trained; retrain the model"
            )
    return _what_was_checked(record)


def _what_was_checked(record: SyncRecord | None) -> _Checked | None:
    return None if record is None else (record.version, record.schema, record.definitions)


class Predictor:
    """Scores entities with the served version of a model, from the online store.

    A model may read several views: the caller passes the entity keys the card lists as caller keys (a single
    value when there is one), and may pass a derived key too; any other key is read from the online feature it is
    derived from. One prediction reads every view whose key is known in one exchange with the store, then the
    views whose keys were derived in a second. With a served_log, every scored feature vector is offered to it,
    per view (it samples and writes off the request path).
    """

    def __init__(
        self,
        store: OnlineStore,
        models: ModelStore,
        served_log: ServedLog | None = None,
        *,
        deadline: float | None = None,
    ):
        """deadline: seconds one predict_one may take in all (default FEATURE_STORE_PREDICT_DEADLINE_MS, 1000)."""
        self.store, self.models, self.served_log = store, models, served_log
        self.deadline = deadline_from_env() if deadline is None else deadline
        self._pointers: dict[str, tuple[str, float]] = {}  # model -> (its served version, when read)
        self._loaded: dict[str, tuple[ModelCard, Any]] = {}  # model -> card and pipeline of the version last loaded
        self._served: dict[str, _Served] = {}

    def _current(self, model: str) -> _Served:
        now = time.monotonic()
        pointer = self._pointers.get(model)
        if pointer is None or now - pointer[1] >= RECHECK_SECONDS:
            # The served version is read at most once a RECHECK_SECONDS, not per prediction (a round trip to
            # PostgreSQL): a promotion on any host takes effect here within about that, without a restart.
            pointer = self._pointers[model] = (self.models.current(model), now)
        loaded = self._loaded.get(model)
        if loaded is None or loaded[0].version != pointer[0]:
            loaded = self._loaded[model] = self.models.load(model, pointer[0])  # once per version served
        served = self._served.get(model)
        if served is None or served.card is not loaded[0]:
            served = self._served[model] = _Served(self.store, *loaded)
        elif now - served.checked_at >= RECHECK_SECONDS:
            # A long-lived server notices a re-sync (a changed definition or schema) as a new process would.
            records = [_what_was_checked(self.store.last_sync(view)) for view in served.views]
            if records != served.records:
                served = self._served[model] = _Served(self.store, *loaded)  # or SchemaMismatch naming what differs
            else:
                served.checked_at = now
        return served

    def served_card(self, model: str) -> ModelCard:
        """The card of the version of `model` served now, loaded and checked against the online store's schema."""
        return self._current(model).card

    def entity_keys(self, model: str) -> list[str]:
        """The keys a caller must pass to predict with the served version of `model`."""
        return self.served_card(model).caller_keys

    def predict_one(self, model: str, entity: Any) -> Prediction:
        """One prediction, the fast path: at most one exchange per level of derived keys, one model call.
        `entity` is the value of the one caller key, or a mapping of keys to values. A missing entity is an
        error naming the view, never zeros."""
        deadline = time.monotonic() + self.deadline
        served = self._current(model)
        card = served.card
        entity, request = split_request(card, entity)
        keys = _keys(card, entity)
        rows: dict[str, dict[str, Any]] = {}
        # Views whose key the caller passed, in one exchange; then those whose key derives from them (the registry
        # allows one level), in a second.
        passed = [part for part in served.parts if part.key in keys]
        for level in (passed, [part for part in served.parts if part.key not in keys]):
            for part in level:
                if part.key not in keys:
                    assert part.derived_from is not None  # the caller keys are in keys (_keys)
                    source_view, source_feature = part.derived_from
                    value = rows[source_view][source_feature]
                    if value is None:
                        raise MissingFeatures(
                            f"{part.key} is derived from {source_view}.{source_feature}, which is null for "
                            f"{_describe(keys)}; pass {part.key} explicitly"
                        )
                    keys[part.key] = value
            if not level:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OnlineStoreError(f"predict {model}: no answer within its {self.deadline * 1000:g} ms deadline")
            values = self.store.read_rows(
                [(part.view, keys[part.key], part.fields) for part in level], timeout=remaining
            )
            for part, raw in zip(level, values):
                row = part.reader.decode_row(keys[part.key], raw, part.names)
                if row[MISSING]:
                    raise MissingFeatures(_missing_message(card, part.view, keys[part.key]))
                rows[part.view.name] = row
        features = {f["name"]: rows[f["view"]][f["name"]] for f in card.features}
        for view, name in served.floats:
            value = features[name]
            if value is not None and not math.isfinite(value):
                raise DataError(_not_finite_message(view, name, value, keys))
        if served.functions:
            features.update(served.request_row({**features, **request}))
        matrix = feature_matrix({name: [value] for name, value in features.items()}, card.inputs)
        prediction = Prediction(keys, served.score_row(matrix), model, card.version, features)
        if self.served_log is not None:
            for part in served.parts:
                logged = {name: features[name] for name in served.logged[part.view.name]}
                self.served_log.log(part.view.name, part.key, keys[part.key], logged, model, card.version)
        return prediction

    def predict(self, model: str, entities: Iterable[Any] | pd.DataFrame) -> pd.DataFrame:
        """Many entities: one row per entity with its score, or with an error (missing or expired) and no score.
        `entities`: values of the one caller key, or a frame with a column per caller key. Each view is read for
        all entities in one exchange (views with derived keys after their source)."""
        served = self._current(model)
        card = served.card
        keys = _key_frame(card, entities)
        request = {f["name"]: request_column(card, f, keys) for f in card.request}
        errors = pd.array([None] * len(keys), dtype="string")
        frames: dict[str, pd.DataFrame] = {}
        for part in _in_dependency_order(served.parts):
            if part.key not in keys.columns:
                assert part.derived_from is not None  # the caller keys are in the frame (_key_frame)
                source_view, source_feature = part.derived_from
                keys[part.key] = (
                    frames[source_view][source_feature]
                    .astype(object)
                    .where(frames[source_view][source_feature].notna(), None)
                )
            ids = keys[part.key].tolist()
            known = np.array([entity_id is not None for entity_id in ids], dtype=bool)
            # A null derived key is read as the empty id, which no entity has, and then marked missing.
            frame = part.reader.get_online_features([i if ok else "" for i, ok in zip(ids, known)], part.names)
            frame.loc[~known, MISSING] = True
            frames[part.view.name] = frame
            for row in np.flatnonzero(frame[MISSING].to_numpy(dtype=bool)):
                if pd.isna(errors[row]):
                    if known[row]:
                        errors[row] = _missing_message(card, part.view, ids[row])
                    else:
                        assert part.derived_from is not None  # only derived keys are null: _key_frame parses the rest
                        derived_from = ".".join(part.derived_from)
                        errors[row] = f"{part.key} is derived from {derived_from}, which is null; no prediction"
        for view, name in served.floats:
            column = frames[view][name].to_numpy(dtype=np.float64, na_value=0.0)
            for row in np.flatnonzero(~np.isfinite(column)):
                if pd.isna(errors[row]):
                    errors[row] = _not_finite_message(view, name, column[row], keys.iloc[row].to_dict())
        found = np.asarray(pd.isna(errors), dtype=bool)
        scores = pd.array([None] * len(keys), dtype="Float64")
        if found.any():
            columns = {f["name"]: frames[f["view"]][f["name"]][found].tolist() for f in card.features}
            columns = served.with_request_features(
                {**columns, **{name: [v for v, ok in zip(values, found) if ok] for name, values in request.items()}},
                int(found.sum()),
            )
            scores[found] = served.score_matrix(feature_matrix(columns, card.inputs))
            if self.served_log is not None:
                for part in served.parts:
                    ids = keys[part.key][found].tolist()
                    logged = {name: columns[name] for name in served.logged[part.view.name]}
                    self.served_log.log_batch(part.view.name, part.key, ids, logged, model, card.version)
        result = keys[card.caller_keys + [k for k in keys.columns if k not in card.caller_keys]].copy()
        result["score"] = scores
        result["model_version"] = card.version
        result["error"] = errors
        return result.reset_index(drop=True)


def _in_dependency_order(parts: list[_ViewPart]) -> list[_ViewPart]:
    """Views with a caller key first, then views whose key derives from them (one level, the registry's rule)."""
    return [part for part in parts if part.derived_from is None] + [
        part for part in parts if part.derived_from is not None
    ]


def _keys(card: ModelCard, entity: Any) -> dict[str, Any]:
    caller = card.caller_keys
    if isinstance(entity, Mapping):
        keys = dict(entity)
    elif len(caller) == 1:
        keys = {caller[0]: entity}
    else:
        raise InvalidEntity(f"model {card.model} needs the keys {', '.join(caller)}; pass them as a mapping")
    missing = [key for key in caller if keys.get(key) is None]
    if missing:
        raise InvalidEntity(f"model {card.model} needs {', '.join(missing)} (its entity keys: {', '.join(caller)})")
    key_types = _key_types(card)
    unknown = [key for key in keys if key not in key_types]
    if unknown:
        known = ", ".join(sorted(key_types))
        raise InvalidEntity(
            f"model {card.model} reads no view keyed by {', '.join(map(shown, unknown))}; its keys: {known}"
        )
    return {key: parse_entity_id(value, key_types[key], key) for key, value in keys.items()}


def _key_types(card: ModelCard) -> dict[str, str | None]:
    return {view["entity_key"]: view.get("key_data_type") for view in card.views}


def _key_frame(card: ModelCard, entities: Any) -> pd.DataFrame:
    caller = card.caller_keys
    if isinstance(entities, pd.DataFrame):
        frame = entities.reset_index(drop=True).copy()
    elif len(caller) == 1:
        frame = pd.DataFrame({caller[0]: pd.Series(list(entities), dtype=object)})
    else:
        raise InvalidEntity(f"model {card.model} needs the keys {', '.join(caller)}; pass a frame with those columns")
    absent = [key for key in caller if key not in frame.columns]
    if absent:
        raise InvalidEntity(
            f"model {card.model} needs the columns {', '.join(absent)} (its entity keys: {', '.join(caller)})"
        )
    frame = frame.astype(object).where(frame.notna(), None)
    key_types = _key_types(card)
    for key in frame.columns.intersection(list(key_types)):
        parsed = [parse_entity_id(value, key_types[key], key) for value in frame[key].tolist()]
        frame[key] = pd.Series(parsed, index=frame.index, dtype=object)
    return frame


def _describe(keys: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in keys.items())


def _not_finite_message(view: str, name: str, value: float, keys: Mapping[str, Any]) -> str:
    return f"{view}.{name} is {value!r} for {_describe(keys)}, not a finite number; no prediction"


def _missing_message(card: ModelCard, view: FeatureView, entity_id: Any) -> str:
    ttl = next(v["online_ttl_hours"] for v in card.views if v["name"] == view.name)
    return (
        f"{view.entity_key} {entity_id} has no {view.name} in the online store (never synced, or expired after the "
        f"{ttl:g} h TTL); no prediction"
    )

"""Predictions from the online store with the served version of a model, bound to the feature schema it was trained on.

A model version (in a `ModelStore`: folders locally, PostgreSQL in prod) is the fitted scikit-learn pipeline and
its card: the ordered feature columns with their dtypes and definition checksums, the schema version, the
training window, row counts and validation metrics. The store's pointer names the version `predict` serves.

Serving reads exactly the card's features, casts them by the card's dtypes and refuses when the online
store holds another definition of any of them. Features the card does not list are ignored, so a feature
added to the view never breaks an older model.
"""

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import ThreadpoolController

from feature_assets.errors import DataError, FeatureStoreError, InvalidEntity, MissingFeatures, OnlineStoreError, shown
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import parse_entity_id
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.model_store import ModelStore
from feature_assets.serving.online_store import OnlineStore, SyncRecord
from feature_assets.serving.reads import MISSING, RECHECK_SECONDS, FeatureReader
from feature_assets.serving.served_log import ServedLog
from feature_assets.settings import seconds_from_milliseconds

__all__ = [
    "ModelCard",
    "ModelStore",
    "Prediction",
    "Predictor",
    "SchemaMismatch",
    "deadline_from_env",
    "feature_matrix",
]


def deadline_from_env() -> float:
    """FEATURE_STORE_PREDICT_DEADLINE_MS in seconds: the most one prediction may take, reads included."""
    return seconds_from_milliseconds("FEATURE_STORE_PREDICT_DEADLINE_MS", 1000)


_NUMERIC = ("int64", "float64", "bool")
_Rows = Callable[[np.ndarray], np.ndarray]  # rows in, rows (encoded) or scores out
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
        self.floats = [(f["view"], f["name"]) for f in card.features if f["dtype"] == "float64"]
        self.classifier = card.task == "classification"
        self._steps = _fitted_steps(pipeline, self.classifier)
        # Made after the pipeline was unpickled, so it sees every OpenMP runtime the pipeline's estimators loaded.
        self._openmp = ThreadpoolController().select(user_api="openmp")

    def score_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores of the rows (see _fitted_steps: the pipeline's fitted parameters in numpy where it can)."""
        scores: np.ndarray  # the pipeline is untyped (scikit-learn)
        if self._steps is None:
            if self.classifier:
                scores = self.pipeline.predict_proba(matrix)[:, 1]
            else:
                scores = self.pipeline.predict(matrix)
            return scores
        encoders, score = self._steps
        return score(np.concatenate([encode(matrix) for encode in encoders], axis=1))

    def score_row(self, matrix: np.ndarray) -> float:
        """The score of one row, with OpenMP held to one thread in this thread meanwhile. An OpenMP estimator
        (HistGradientBoosting: a parallel loop over the rows per tree, 200 trees in ltv_model) wakes and joins every
        thread of its pool for one row that only one of them scores; on a loaded 2-core host, where a woken thread
        waits for a core, ltv_model's predict_one p99 was 1.4 s with the pool and 18 ms without (benchmarks/predict.py).
        The limit's scope is the calling thread (threadpoolctl), so the server's other threads and batch scoring keep
        their pool."""
        with self._openmp.limit(limits=1):
            return float(self.score_matrix(matrix)[0])


def _fitted_steps(pipeline: Any, classifier: bool) -> tuple[list[_Rows], _Rows] | None:
    """For a Pipeline(ColumnTransformer, estimator) that drops unlisted columns: per transformer, a function
    encoding rows (a 2-D object matrix in, a 2-D float matrix out), and one scoring the encoded rows; None for any
    other shape (scored through the pipeline itself). For one row, or a hundred, scikit-learn's input validation
    (six calls, ~0.7 ms; ~3 ms a batch) costs far more than the arithmetic, so the transformers build_pipeline uses
    (imputer + scaler, one-hot) and a logistic regression are applied with their fitted parameters in numpy;
    anything else through its own transform or predict. test_models checks the result equals the pipeline's on
    every training row, one by one and all at once."""
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2 or not isinstance(steps[0][1], ColumnTransformer):
        return None
    columns, estimator = steps[0][1], steps[1][1]
    if columns.remainder != "drop":
        return None
    encoders = [
        _numpy_encoder(transformer, list(cols)) or _transform_encoder(transformer, list(cols))
        for _, transformer, cols in columns.transformers_
        if not isinstance(transformer, str) and len(cols)
    ]
    if isinstance(estimator, LogisticRegression) and classifier and len(estimator.classes_) == 2:
        coef, intercept = estimator.coef_.T, estimator.intercept_
        return encoders, lambda rows: expit(rows @ coef + intercept)[:, 0]
    if classifier:
        return encoders, lambda rows: estimator.predict_proba(rows)[:, 1]
    return encoders, estimator.predict


def _transform_encoder(transformer: Any, columns: list[int]) -> _Rows:
    def encode(rows: np.ndarray) -> np.ndarray:
        part = transformer.transform(rows[:, columns])
        return (part.toarray() if sparse.issparse(part) else np.asarray(part)).astype(float)

    return encode


def _numpy_encoder(transformer: Any, columns: list[int]) -> _Rows | None:
    """The fitted parameters of SimpleImputer(+ indicator) -> StandardScaler, or of OneHotEncoder(handle_unknown=
    "ignore"), as arithmetic on rows; None for other transformers or settings."""
    if isinstance(transformer, Pipeline) and [type(step) for _, step in transformer.steps] == [
        SimpleImputer,
        StandardScaler,
    ]:
        imputer, scaler = (step for _, step in transformer.steps)
        fill = np.asarray(imputer.statistics_, dtype=float)
        if np.isnan(fill).any():  # a column empty in training, which the imputer drops
            return None
        flagged = imputer.indicator_.features_ if imputer.add_indicator else np.array([], dtype=int)
        mean = scaler.mean_ if scaler.mean_ is not None else 0.0
        scale = scaler.scale_ if scaler.scale_ is not None else 1.0

        def impute_and_scale(rows: np.ndarray) -> np.ndarray:
            numbers = rows[:, columns].astype(float)
            missing = np.isnan(numbers)
            return (np.concatenate([np.where(missing, fill, numbers), missing[:, flagged]], axis=1) - mean) / scale

        return impute_and_scale
    if isinstance(transformer, OneHotEncoder):
        if (
            transformer.handle_unknown != "ignore"
            or transformer.drop is not None
            or getattr(transformer, "infrequent_categories_", None)
        ):
            return None
        # Per column, each category's position in the output; a null (NaN) is a category of its own if seen in training.
        positions, offset = [], 0
        for categories in transformer.categories_:
            positions.append({_category(value): offset + i for i, value in enumerate(categories.tolist())})
            offset += len(categories)
        width = offset

        def one_hot(rows: np.ndarray) -> np.ndarray:
            encoded = np.zeros((len(rows), width))
            for row, values in enumerate(rows[:, columns].tolist()):
                for position, value in zip(positions, values):
                    hit = position.get(_category(value))
                    if hit is not None:  # an unseen value encodes as all zeros, as handle_unknown="ignore" does
                        encoded[row, hit] = 1.0
            return encoded

        return one_hot
    return None


_NAN = object()  # NaN never equals itself, so nulls are looked up under this key


def _category(value: Any) -> Any:
    return _NAN if isinstance(value, float) and value != value else value


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
        matrix = feature_matrix({name: [value] for name, value in features.items()}, card.features)
        prediction = Prediction(keys, served.score_row(matrix), model, card.version, features)
        if self.served_log is not None:
            for part in served.parts:
                logged = {name: features[name] for name in part.view.feature_names}
                self.served_log.log(part.view.name, part.key, keys[part.key], logged, model, card.version)
        return prediction

    def predict(self, model: str, entities: Iterable[Any] | pd.DataFrame) -> pd.DataFrame:
        """Many entities: one row per entity with its score, or with an error (missing or expired) and no score.
        `entities`: values of the one caller key, or a frame with a column per caller key. Each view is read for
        all entities in one exchange (views with derived keys after their source)."""
        served = self._current(model)
        card = served.card
        keys = _key_frame(card, entities)
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
            scores[found] = served.score_matrix(feature_matrix(columns, card.features))
            if self.served_log is not None:
                for part in served.parts:
                    ids = keys[part.key][found].tolist()
                    logged = {name: columns[name] for name in part.view.feature_names}
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

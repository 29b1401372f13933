"""`FeatureStore`, the store's one Python face: a notebook, the CLI and the server call it, so each rule (the
point-in-time join, the TTL, strict ids, the schema binding of models) lives in one place.

    from feature_assets import FeatureStore
    store = FeatureStore()                       # the stores the environment names, as the CLI opens them
    frame = store.historical_features(rows, ["user_features:events_30d", "churn_model"])

Backends open on first use: online reads import no Dagster and no dbt, and touch no warehouse.
"""

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from feature_assets.errors import FeatureStoreError, InvalidEntity, ModelStoreError, shown
from feature_assets.feature_refs import declared_derivations, output_names, resolve_features, with_keys_from
from feature_assets.registry import TASKS, FeatureSet, Registry, ViewRead, load_registry, snake_case
from feature_assets.settings import Settings

if TYPE_CHECKING:
    from feature_assets.push import PushResult
    from feature_assets.serving.model_store import ModelStore
    from feature_assets.serving.online_store import OnlineStore
    from feature_assets.serving.reads import FeatureReader
    from feature_assets.warehouses.base import Warehouse

__all__ = ["FeatureStore", "PromotionRefused"]


class PromotionRefused(FeatureStoreError):
    """A version was not promoted: the newest skew report of a view it reads grades a drift error."""


class FeatureStore:
    """The feature store of one environment. Keyword overrides (a registry, a warehouse, an online store, a model
    store) replace what the settings would open, e.g. in a notebook or a test. Close it (or use `with`) to release
    the connections it opened."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        warehouse: "Warehouse | None" = None,
        online_store: "OnlineStore | None" = None,
        model_store: "ModelStore | None" = None,
    ):
        self.settings = settings or Settings.from_env()
        self._registry = registry
        self._warehouse = warehouse
        self._online_store, self._owns_online_store = online_store, online_store is None
        self._model_store, self._owns_model_store = model_store, model_store is None
        self._readers: dict[str, FeatureReader] = {}
        self._resolved: dict[tuple[Any, tuple[str, ...]], list[ViewRead]] = {}

    # --- the backends, opened on first use -----------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The feature views, label tables and models the dbt YAML declares."""
        if self._registry is None:
            self._registry = load_registry(self.settings.dbt_manifest_path)
        return self._registry

    @property
    def warehouse(self) -> "Warehouse":
        if self._warehouse is None:
            from feature_assets.backends import open_warehouse

            self._warehouse = open_warehouse(self.settings)
        return self._warehouse

    @property
    def online_store(self) -> "OnlineStore":
        if self._online_store is None:
            from feature_assets.backends import open_online_store

            self._online_store = open_online_store(self.settings)
        return self._online_store

    @property
    def model_store(self) -> "ModelStore":
        if self._model_store is None:
            from feature_assets.backends import open_model_store

            self._model_store = open_model_store(self.settings)
        return self._model_store

    def close(self) -> None:
        """Closes the backends this store opened (not those passed in)."""
        if self._owns_online_store and self._online_store is not None:
            self._online_store.close()
            self._online_store = None
        if self._owns_model_store and self._model_store is not None:
            self._model_store.close()
            self._model_store = None
        self._readers.clear()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- features --------------------------------------------------------------------------------------------------

    def historical_features(
        self,
        entities: pd.DataFrame,
        features: str | Sequence[str],
        timestamp: str = "label_time",
        full_feature_names: bool = False,
    ) -> pd.DataFrame:
        """The entity rows (in their order, all their columns) with each requested feature as of the row's own time:
        per view, its latest snapshot strictly before that time and within the view's TTL, else nulls, as training
        sets are built; and per view the snapshot's time, `<view>__computed_at`.

        features: "view:feature", "view:*", or a model's name (its declared features). Each view's entity key must be
        a column, except a key the registry derives from another view's feature (a user's country_code), which is
        then taken from that view's snapshot as of the row's time. Naive times are UTC; zoned ones are converted.
        A feature is named by itself, or `view__feature` with full_feature_names or when two views share its name.
        """
        from feature_assets.historical import historical_features

        reads = self._reads(features, list(entities.columns) if isinstance(entities, pd.DataFrame) else [])
        return historical_features(self.warehouse, self.registry, reads, entities, timestamp, full_feature_names)

    def online_features(
        self,
        features: str | Sequence[str],
        entities: pd.DataFrame | Sequence[Mapping[str, Any]],
        full_feature_names: bool = False,
    ) -> pd.DataFrame:
        """The online values of the features for each entity (a list of dicts or a frame of keys), typed by the
        registry: one row per entity in order, the keys, the features, each view's `<view>__computed_at`, and
        `missing`, which says why a row's features are null (never synced, or expired after the view's TTL).
        One round trip per view; a key derived from another view's feature is read after that view."""
        from feature_assets.online_features import online_features

        columns = _entity_columns(entities)
        reads = self._reads(features, list(columns))
        return online_features(self._reader, self.registry, reads, columns, output_names(reads, full_feature_names))

    def push(self, view: str, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> "PushResult":
        """Fresh values of a view between syncs: rows (a frame, or a list of dicts) of the entity key, computed_at
        (naive UTC, or zoned) and every feature of the view, checked against its contract; nothing is written when a
        row is refused. Appended to the view's pushed history in the warehouse, then written online per entity where
        the store holds nothing newer (push.py). Returns how many rows the online store took."""
        from feature_assets.push import push_rows, row_columns, typed_rows

        feature_view = self.registry.view(view)
        if isinstance(rows, pd.DataFrame):
            columns = {str(name): rows[name].tolist() for name in rows.columns}
            count = len(rows)
        else:
            rows = list(rows)
            columns = row_columns(feature_view, rows)
            count = len(rows)
        typed = typed_rows(feature_view, columns, count)
        return push_rows(self.warehouse, self.online_store, feature_view, typed)

    def model_input(self, frame: pd.DataFrame, features: str | Sequence[str]) -> pd.DataFrame:
        """The features of `frame` (as historical_features returns them) exactly as serving hands them to an estimator
        saved with these features: a column per feature in order, numbers as float64 with NaN for nulls, strings as
        objects. Fit on this, and the model sees the same encoding at training and at serving. For a model that
        declares request-time features, `frame` carries its request fields and they are computed as serving does."""
        from feature_assets.serving.predictor import feature_frame
        from feature_assets.training import with_request_features

        declared = [
            {"name": f.name, "dtype": f.dtype}
            for read in resolve_features(self.registry, features)
            for f in read.features
        ]
        model = self._model_named(features)
        if model is not None and model.request_features:
            needed = [*model.feature_names, *(f.name for f in model.request)]
            absent = [name for name in needed if name not in frame.columns]
            if absent:
                raise FeatureStoreError(
                    f"the frame has no columns {', '.join(absent)} (model {model.model} needs them)"
                )
            frame = with_request_features(model, frame)
            declared += [{"name": f.name, "dtype": f.dtype} for f in model.request_features]
        absent = [f["name"] for f in declared if f["name"] not in frame.columns]
        if absent:
            raise FeatureStoreError(f"the frame has no columns {', '.join(absent)} (historical_features adds them)")
        return feature_frame({f["name"]: frame[f["name"]].tolist() for f in declared}, declared)

    def _model_named(self, features: str | Sequence[str]) -> FeatureSet | None:
        """The declared model that `features` names alone, if it does."""
        if isinstance(features, str) and ":" not in features:
            return self.registry.feature_set(features)
        return None

    def _reads(self, features: str | Sequence[str], columns: list[str]) -> list[ViewRead]:
        """The reads of these references for a caller with these columns; remembered, as a server asks the same
        question on every request."""
        question = (features if isinstance(features, str) else tuple(features), tuple(columns))
        reads = self._resolved.get(question)
        if reads is None:
            reads = with_keys_from(self.registry, resolve_features(self.registry, features), columns)
            if len(self._resolved) < 1024:
                self._resolved[question] = reads
        return reads

    def _reader(self, view_name: str) -> "FeatureReader":
        """One reader per view (it checks the synced schema once, then every RECHECK_SECONDS)."""
        from feature_assets.serving.reads import FeatureReader

        reader = self._readers.get(view_name)
        if reader is None:
            reader = self._readers[view_name] = FeatureReader(self.online_store, self.registry.view(view_name))
        return reader

    # --- models ----------------------------------------------------------------------------------------------------

    def save_model(
        self,
        name: str,
        model: Any,
        features: str | Sequence[str],
        task: str,
        training: pd.DataFrame | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> str:
        """Stores a fitted estimator (anything scikit-learn-compatible: `predict`, and `predict_proba` for a
        classification) as a new version of `name`, bound like a built-in model to the views, dtypes and definition
        checksums of `features` (in the estimator's input order), with the `training` rows it was fit on kept
        beside it. Returns the version; `promote` serves it."""
        from feature_assets.model_saving import observe_in_dagster, save_model

        snake_case(name, "model")
        if task not in TASKS:
            raise FeatureStoreError(f"task must be one of {', '.join(TASKS)}, got {shown(task)}")
        reads = _served_keys(self.registry, resolve_features(self.registry, features))
        card, location = save_model(self.model_store, name, model, reads, task, training, dict(metrics or {}))
        observe_in_dagster(self.settings, card, location)
        return card.version

    def promote(self, name: str, version: str, force: bool = False) -> None:
        """Makes `version` the one `predict` serves. Refused, naming each reason, while the newest skew report of a
        view the model reads grades a drift error (naming view and feature), or when a model declared in the
        registry misses a floor of its validation metrics; force=True promotes anyway and records why in the
        version's history."""
        from feature_assets.skew_reports import drift_errors

        card = self.model_store.card(name, version)
        reasons = [f"drift error on {error}" for error in drift_errors(self.warehouse, card.feature_views())]
        feature_set = self.registry.feature_sets.get(name)
        if feature_set is not None:
            reasons += feature_set.validation_shortfalls(card.metrics)
        if reasons and not force:
            try:
                serving = f"; {name} {self.model_store.current(name)} keeps serving"
            except ModelStoreError:
                serving = ""
            raise PromotionRefused(
                f"{name} {version} not promoted: {'; '.join(reasons)}{serving}; promote(..., force=True) overrides"
            )
        note = f"forced past {'; '.join(reasons)}" if reasons else ""
        self.model_store.promote(name, version, note=note)

    def training_set(self, model: str, version: str | None = None) -> pd.DataFrame:
        """The rows `version` (default: the served one) was trained on, as kept with it."""
        return self.model_store.training_set(model, version)


def _served_keys(registry: Registry, reads: list[ViewRead]) -> list[ViewRead]:
    """Reads as serving takes them: a key the registry derives from another view's feature is derived when that
    view is read too (the caller may still pass it)."""
    names = {read.view.name for read in reads}
    declared = declared_derivations(registry)
    served = []
    for read in reads:
        source = read.derived_from or declared.get(read.key)
        served.append(ViewRead(read.view, read.features, source if source and source[0] in names else None))
    return served


def _entity_columns(entities: pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The entities as columns: a frame's own, or each dict key's values as given (a None beside ints stays None;
    in a frame it would make the ids floats, which strict ids refuse)."""
    if isinstance(entities, pd.DataFrame):
        return {str(name): entities[name].to_numpy(dtype=object) for name in entities.columns}
    rows = list(entities)
    if not all(isinstance(row, Mapping) for row in rows):
        raise InvalidEntity("entities must be a DataFrame of keys or a list of dicts like {'user_id': 7}")
    return {key: [row.get(key) for row in rows] for key in dict.fromkeys(key for row in rows for key in row)}

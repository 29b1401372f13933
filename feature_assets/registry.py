"""The feature registry, read from the dbt manifest: the models' YAML is the only place features are declared.

A model is a feature view when its meta has a `feature_view` block (entity, entity_key, timestamp,
history_starts, online_ttl_hours, refresh_hours); every other column is a feature whose dtype is the contract's
data_type.
A model is a label table when its meta has a `labels` block (the entity keys it carries, its label time
column, its target, and outcome_hours: how long after the label time the outcome is measured). An ML model
is a dbt exposure (type ml) whose meta has a `feature_set` block: its label table, its task, the features it
reads from each view, optionally keys that serving derives from another view's online feature, and optionally
its trainer: "package.module:function", a team's own function that fits the model (the built-in estimator of its
task otherwise), and optionally min_validation: floors of its validation metrics under which a new version is not
promoted (FLOOR_METRICS); optionally `request` and `request_features`: the fields its caller sends with each entity
and the features a named function computes from them at request time (request_time.py).
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from feature_assets.definition_checksums import feature_checksums
from feature_assets.errors import RegistryError, shown
from feature_assets.request_time import RequestFeature, RequestField

__all__ = [
    "DEFAULT_ONLINE_TTL",
    "DEFAULT_REFRESH",
    "FLOOR_METRICS",
    "LABEL_ROW",
    "TASKS",
    "TRAINER_FORM",
    "VALIDATION_FLOOR_CHECK",
    "Feature",
    "FeatureSet",
    "FeatureView",
    "LabelTable",
    "Registry",
    "ViewRead",
    "load_registry",
    "meta_fields",
    "snake_case",
    "snapshot_column",
]

DEFAULT_ONLINE_TTL = timedelta(hours=48)
DEFAULT_REFRESH = timedelta(hours=1)
TASKS = ("classification", "regression")
# The validation metrics a model may declare a floor for (higher is better): AUC; for regression the skill over
# predicting the fit rows' mean, 1 - MAE / MAE of that baseline (0: no better than the mean).
FLOOR_METRICS = {"classification": ("auc",), "regression": ("mae_skill",)}
# The model asset's check of those floors.
VALIDATION_FLOOR_CHECK = "validation_above_floor"
# The training set's row number; each view's matched snapshot time is snapshot_column(view).
LABEL_ROW = "label_row"

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# A declared trainer: "dotted.module:function".
TRAINER_FORM = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")

# Contract data_type (as written in the YAML, lowercased) -> the dtype serving decodes to.
_DTYPES = {
    "smallint": "int64",
    "integer": "int64",
    "int": "int64",
    "bigint": "int64",
    "double precision": "float64",
    "double": "float64",
    "float": "float64",
    "real": "float64",
    "varchar": "string",
    "text": "string",
    "boolean": "bool",
}
_KEY_TYPES = ("smallint", "integer", "int", "bigint", "varchar", "text")

# A node, an exposure, a column or a meta block of the dbt manifest, as parsed from its JSON.
_Json = dict[str, Any]


def snake_case(name: str, what: str) -> str:
    """The name, or the error saying it is not snake_case (with the snake_case spelling to use)."""
    if not isinstance(name, str) or not _SNAKE_CASE.fullmatch(name):
        suggestion = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name)).lower().replace("-", "_").replace(" ", "_")
        raise RegistryError(f"{what} {name!r} is not snake_case (lowercase words joined by _, e.g. {suggestion!r})")
    return name


def meta_fields(block: _Json, what: str, *names: str) -> list[Any]:
    """The named fields of a meta block (`what`: e.g. "model churn_model: meta.feature_set"), the first missing one
    refused by name."""
    missing = next((name for name in names if name not in block), None)
    if missing is not None:
        raise RegistryError(f"{what} needs {missing!r}")
    return [block[name] for name in names]


def _hours(block: _Json, name: str, default: timedelta, what: str) -> timedelta:
    hours = block.get(name, default / timedelta(hours=1))
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
        raise RegistryError(f"{what}: {name} must be a positive number of hours, got {hours!r}")
    return timedelta(hours=hours)


def _history_starts(block: _Json, what: str) -> date:
    """The declared first as-of day: an ISO day (YAML may hand it over as a date), not after today (UTC)."""
    if "history_starts" not in block:
        raise RegistryError(
            f"{what}: meta.feature_view needs 'history_starts', the first as-of day (UTC) of its raw history, "
            "e.g. history_starts: '2025-01-01'"
        )
    value = block["history_starts"]
    try:
        day = value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(value)
    except (TypeError, ValueError):
        raise RegistryError(f"{what}: history_starts {shown(value)} is not a day like '2025-01-01'") from None
    today = datetime.now(UTC).date()
    if day > today:
        raise RegistryError(f"{what}: history_starts {day} is after today {today} (UTC): no history starts there yet")
    return day


def snapshot_column(view: "FeatureView") -> str:
    """The training-set column holding the time of the snapshot of `view` that a row matched (null: none)."""
    return f"{view.name}_snapshot_at"


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    data_type: str
    description: str
    definition_checksum: str  # of this feature's own SQL lineage (see definition_checksums)


@dataclass(frozen=True)
class FeatureView:
    """One entity's features as one dbt model produces them: a snapshot per entity per as-of time."""

    name: str
    entity: str
    entity_key: str
    timestamp: str
    online_ttl: timedelta
    features: tuple[Feature, ...]
    definition_checksum: str
    refresh_interval: timedelta = DEFAULT_REFRESH
    key_data_type: str = "bigint"
    # The first as-of day of its history (UTC): its partitions start there, so no day without raw data is offered.
    history_starts: date = date(2025, 1, 1)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def online_namespace(self) -> str:
        """The middle of its online keys, features:<namespace>:<id>: the entity for the view named
        <entity>_features, the view's own name for any other view of that entity (so two never collide)."""
        return self.entity if self.name == f"{self.entity}_features" else self.name

    @property
    def version(self) -> str:
        """Changes whenever a name, a dtype or the model's SQL changes."""
        schema = [(f.name, f.dtype) for f in self.features]
        digest = hashlib.sha256(json.dumps([schema, self.definition_checksum]).encode())
        return digest.hexdigest()[:12]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise RegistryError(f"{self.name} has no feature {shown(name)}; it has {', '.join(self.feature_names)}")


@dataclass(frozen=True)
class LabelTable:
    """A dbt model of labels: one row per (entity keys, label time) with the outcome to learn."""

    name: str
    entity_keys: tuple[str, ...]
    label_time: str
    target: str
    target_data_type: str
    outcome_window: timedelta
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ViewRead:
    """The features a model reads from one view. The label column named like the view's entity key holds the
    entity; serving takes it from the caller, or, if derived_from = (view, feature), from that online feature."""

    view: FeatureView
    features: tuple[Feature, ...]
    derived_from: tuple[str, str] | None = None

    @property
    def key(self) -> str:
        return self.view.entity_key


@dataclass(frozen=True)
class FeatureSet:
    """What one ML model reads (features of one or more views, in a fixed order), what it predicts, and the function
    that fits it ("package.module:function"; None: the built-in estimator of its task)."""

    model: str
    reads: tuple[ViewRead, ...]
    labels: LabelTable
    task: str
    trainer: str | None = None
    description: str = ""  # the exposure's
    min_validation: tuple[tuple[str, float], ...] = ()  # (metric, floor)
    request: tuple[RequestField, ...] = ()
    request_features: tuple[RequestFeature, ...] = ()

    @property
    def inputs(self) -> tuple[Feature | RequestFeature, ...]:
        """The model's input columns in order: the stored features, then the request-time ones."""
        return (*self.features, *self.request_features)

    @property
    def target(self) -> str:
        return self.labels.target

    @property
    def features(self) -> tuple[Feature, ...]:
        return tuple(feature for read in self.reads for feature in read.features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def views(self) -> tuple[FeatureView, ...]:
        return tuple(read.view for read in self.reads)

    @property
    def caller_keys(self) -> tuple[str, ...]:
        """The entity keys a caller passes to predict (the others are derived from online features)."""
        keys = [read.key for read in self.reads if read.derived_from is None]
        return tuple(dict.fromkeys(keys))

    @property
    def training_set(self) -> str:
        return f"{self.model.removesuffix('_model')}_training_set"

    def validation_shortfalls(self, metrics: dict[str, float]) -> list[str]:
        """Why a version with these validation metrics must not be promoted: each declared floor it misses."""
        shortfalls = []
        for metric, floor in self.min_validation:
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                shortfalls.append(f"validation {metric} is not recorded (its floor is {floor:g})")
            elif value < floor:
                shortfalls.append(f"validation {metric} {value:.4f} is under its floor {floor:g}")
        return shortfalls


@dataclass(frozen=True)
class Registry:
    views: dict[str, FeatureView]
    labels: dict[str, LabelTable]
    feature_sets: dict[str, FeatureSet]

    def feature_set(self, model: str) -> FeatureSet:
        """A model by its name, or by its name without the _model suffix (`churn` for churn_model)."""
        model = model if model.endswith("_model") else f"{model}_model"
        try:
            return self.feature_sets[model]
        except KeyError:
            raise RegistryError(
                f"no model {shown(model)} declares a feature set; known: {', '.join(sorted(self.feature_sets))}"
            ) from None

    @property
    def read_views(self) -> list[FeatureView]:
        """The views some model reads: those that have training sets, and so skew reports."""
        return [view for view in self.views.values() if any(view in fs.views for fs in self.feature_sets.values())]

    @property
    def history_starts(self) -> date:
        """The views' first as-of day: one dbt run builds them all, so they share their partitions."""
        return next(iter(self.views.values())).history_starts

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            raise RegistryError(f"no feature view {shown(name)}; known: {', '.join(sorted(self.views))}") from None


def _columns(node: _Json, what: str) -> dict[str, _Json]:
    columns = {}
    for column in node.get("columns", {}).values():
        columns[snake_case(column["name"], f"column of {what}:")] = column
    return columns


def _data_type(column: _Json) -> str:
    return (column.get("data_type") or "").lower()


def _feature_view(manifest: _Json, node: _Json) -> FeatureView:
    name = snake_case(node["name"], "feature view")
    block = node["config"]["meta"]["feature_view"]
    entity, entity_key, timestamp = meta_fields(
        block, f"feature view {name}: meta.feature_view", "entity", "entity_key", "timestamp"
    )
    columns = _columns(node, f"feature view {name}")
    for key in (entity_key, timestamp):
        if key not in columns:
            raise RegistryError(f"feature view {name}: column {key!r} named in meta.feature_view is not declared")
    key_type = _data_type(columns[entity_key])
    if key_type not in _KEY_TYPES:
        raise RegistryError(
            f"feature view {name}: entity key {entity_key} has data_type {key_type or None!r}; use one of "
            f"{', '.join(_KEY_TYPES)}"
        )
    declared = {}
    for column_name, column in columns.items():
        if column_name in (entity_key, timestamp):
            continue
        data_type = _data_type(column)
        if data_type not in _DTYPES:
            raise RegistryError(
                f"feature {name}.{column_name}: data_type {data_type or None!r} is not one of {', '.join(_DTYPES)}"
            )
        declared[column_name] = (data_type, column.get("description", ""))
    if not declared:
        raise RegistryError(f"feature view {name} declares no features")
    checksums = feature_checksums(manifest, node, {feature: data_type for feature, (data_type, _) in declared.items()})
    return FeatureView(
        name=name,
        entity=snake_case(entity, f"entity of {name}:"),
        entity_key=entity_key,
        key_data_type=key_type,
        timestamp=timestamp,
        online_ttl=_hours(block, "online_ttl_hours", DEFAULT_ONLINE_TTL, f"feature view {name}"),
        refresh_interval=_hours(block, "refresh_hours", DEFAULT_REFRESH, f"feature view {name}"),
        history_starts=_history_starts(block, f"feature view {name}"),
        features=tuple(
            Feature(feature, _DTYPES[data_type], data_type, description, checksums[feature])
            for feature, (data_type, description) in declared.items()
        ),
        definition_checksum=node["checksum"]["checksum"],
    )


def _label_table(node: _Json) -> LabelTable:
    name = snake_case(node["name"], "label table")
    block = node["config"]["meta"]["labels"]
    keys, label_time, target, outcome_hours = meta_fields(
        block, f"label table {name}: meta.labels", "entity_keys", "label_time", "target", "outcome_hours"
    )
    if isinstance(keys, str):
        keys = [keys]
    if not keys or len(set(keys)) != len(keys):
        raise RegistryError(f"label table {name}: entity_keys must be a non-empty list without repeats, got {keys!r}")
    columns = _columns(node, f"label table {name}")
    for column in (*keys, label_time, target):
        if column not in columns:
            raise RegistryError(f"label table {name}: column {column!r} named in meta.labels is not declared")
    outcome_window = _hours({"outcome_hours": outcome_hours}, "outcome_hours", timedelta(0), f"label table {name}")
    return LabelTable(
        name, tuple(keys), label_time, target, _data_type(columns[target]), outcome_window, tuple(columns)
    )


def _check_namespaces(views: dict[str, FeatureView]) -> None:
    owners: dict[str, str] = {}
    for view in views.values():
        other = owners.setdefault(view.online_namespace, view.name)
        if other != view.name:
            raise RegistryError(
                f"feature views {other} and {view.name} would share the online keys "
                f"features:{view.online_namespace}:<id>; rename one"
            )


def _check_history_starts(views: dict[str, FeatureView]) -> None:
    first, *others = views.values()
    for view in others:
        if view.history_starts != first.history_starts:
            raise RegistryError(
                f"feature views {first.name} (history_starts {first.history_starts}) and {view.name} (history_starts "
                f"{view.history_starts}) must declare the same first as-of day: one dbt run builds every view of an "
                "as-of day, so they share their partitions"
            )


def load_registry(manifest_path: Path) -> Registry:
    """Reads every feature view, label table and feature set from a dbt manifest; raises RegistryError on anything
    invalid."""
    # Imported here: it builds this module's types from an exposure.
    from feature_assets.model_declarations import feature_set_of

    try:
        manifest = json.loads(Path(manifest_path).read_text())
    except FileNotFoundError:
        raise RegistryError(f"no dbt manifest at {manifest_path}; run `make prepare` (dbt parse) first") from None
    views, labels = {}, {}
    for node in sorted(manifest["nodes"].values(), key=lambda node: node["unique_id"]):
        meta = node["config"].get("meta", {}) if node["resource_type"] == "model" else {}
        if "feature_view" in meta:
            view = _feature_view(manifest, node)
            views[view.name] = view
        if "labels" in meta:
            label_table = _label_table(node)
            labels[label_table.name] = label_table
    if not views:
        raise RegistryError(f"the dbt manifest at {manifest_path} declares no feature view (meta.feature_view)")
    _check_namespaces(views)
    _check_history_starts(views)
    feature_sets = {}
    for exposure in sorted(manifest.get("exposures", {}).values(), key=lambda exposure: exposure["unique_id"]):
        if "feature_set" in exposure["config"].get("meta", {}):
            feature_set = feature_set_of(exposure, views, labels)
            feature_sets[feature_set.model] = feature_set
    tables = {view.name for view in views.values()} | set(labels)
    for feature_set in feature_sets.values():
        if feature_set.training_set in tables:
            raise RegistryError(
                f"model {feature_set.model}: its training set table {feature_set.training_set} is already a dbt model"
            )
    return Registry(views, labels, feature_sets)

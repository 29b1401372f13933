"""The feature registry, read from the dbt manifest: the model YAML is the only place features are declared.

A model is a feature view when its meta has a `feature_view` block (entity, entity_key, timestamp,
online_ttl_hours); every other column is a feature whose dtype is the contract's data_type.
An ML model is a dbt exposure (type ml) whose meta has a `feature_set` block: the view and the features
it reads, its label table and target column, and its task.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feature_assets.definition_checksums import feature_checksums
from feature_assets.errors import RegistryError

__all__ = ["Feature", "FeatureView", "FeatureSet", "Registry", "load_registry", "DEFAULT_ONLINE_TTL", "TASKS"]

DEFAULT_ONLINE_TTL = timedelta(hours=48)

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")

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


def _snake_case(name: str, what: str) -> str:
    if not _SNAKE_CASE.fullmatch(name):
        suggestion = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_").replace(" ", "_")
        raise RegistryError(f"{what} {name!r} is not snake_case (lowercase words joined by _, e.g. {suggestion!r})")
    return name


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    data_type: str
    description: str
    definition_checksum: str  # of this feature's own SQL lineage (see definition_checksums)


@dataclass(frozen=True)
class FeatureView:
    """One entity's features as one dbt model produces them."""

    name: str
    entity: str
    entity_key: str
    timestamp: str
    online_ttl: timedelta
    features: tuple[Feature, ...]
    definition_checksum: str

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

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
        raise RegistryError(f"{self.name} has no feature {name!r}; it has {', '.join(self.feature_names)}")


TASKS = ("classification", "regression")


@dataclass(frozen=True)
class FeatureSet:
    """What one ML model reads: a subset of one feature view, in a fixed order, and what it predicts."""

    model: str
    view: FeatureView
    features: tuple[Feature, ...]
    labels: str
    target: str
    task: str

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


@dataclass(frozen=True)
class Registry:
    views: dict[str, FeatureView]
    feature_sets: dict[str, FeatureSet]

    def feature_set(self, model: str) -> FeatureSet:
        try:
            return self.feature_sets[model]
        except KeyError:
            raise RegistryError(f"no model {model!r} declares a feature set; known: {', '.join(sorted(self.feature_sets))}") from None

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            raise RegistryError(f"no feature view {name!r}; known: {', '.join(sorted(self.views))}") from None


def _feature_view(manifest: dict, node: dict) -> FeatureView:
    name = _snake_case(node["name"], "feature view")
    block = node["config"]["meta"]["feature_view"]
    try:
        entity, entity_key, timestamp = block["entity"], block["entity_key"], block["timestamp"]
    except KeyError as missing:
        raise RegistryError(f"feature view {name}: meta.feature_view needs {missing.args[0]!r}") from None
    ttl_hours = block.get("online_ttl_hours", DEFAULT_ONLINE_TTL / timedelta(hours=1))
    if not isinstance(ttl_hours, (int, float)) or ttl_hours <= 0:
        raise RegistryError(f"feature view {name}: online_ttl_hours must be a positive number, got {ttl_hours!r}")
    columns = node.get("columns", {})
    for key in (entity_key, timestamp):
        if key not in columns:
            raise RegistryError(f"feature view {name}: column {key!r} named in meta.feature_view is not declared")
    declared = {}
    for column in columns.values():
        column_name = _snake_case(column["name"], f"feature in {name}:")
        if column_name in (entity_key, timestamp):
            continue
        data_type = (column.get("data_type") or "").lower()
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
        entity=_snake_case(entity, f"entity of {name}:"),
        entity_key=entity_key,
        timestamp=timestamp,
        online_ttl=timedelta(hours=ttl_hours),
        features=tuple(
            Feature(feature, _DTYPES[data_type], data_type, description, checksums[feature])
            for feature, (data_type, description) in declared.items()
        ),
        definition_checksum=node["checksum"]["checksum"],
    )


def _feature_set(exposure: dict, views: dict[str, FeatureView]) -> FeatureSet:
    model = _snake_case(exposure["name"], "model")
    block = exposure["config"]["meta"]["feature_set"]
    try:
        view_name, names, labels, target, task = (block[k] for k in ("view", "features", "labels", "target", "task"))
    except KeyError as missing:
        raise RegistryError(f"model {model}: meta.feature_set needs {missing.args[0]!r}") from None
    if view_name not in views:
        raise RegistryError(f"model {model}: feature view {view_name!r} is not declared; known: {', '.join(sorted(views))}")
    if task not in TASKS:
        raise RegistryError(f"model {model}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if not names or len(set(names)) != len(names):
        raise RegistryError(f"model {model}: features must be a non-empty list without repeats, got {names!r}")
    view = views[view_name]
    features = tuple(view.feature(_snake_case(name, f"feature of model {model}:")) for name in names)
    return FeatureSet(model, view, features, _snake_case(labels, f"labels of {model}:"), _snake_case(target, f"target of {model}:"), task)


def load_registry(manifest_path: Path) -> Registry:
    """Reads every feature view from a dbt manifest; raises RegistryError on anything invalid."""
    try:
        manifest = json.loads(Path(manifest_path).read_text())
    except FileNotFoundError:
        raise RegistryError(f"no dbt manifest at {manifest_path}; run `make prepare` (dbt parse) first") from None
    views = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] == "model" and "feature_view" in node["config"].get("meta", {}):
            view = _feature_view(manifest, node)
            views[view.name] = view
    if not views:
        raise RegistryError(f"the dbt manifest at {manifest_path} declares no feature view (meta.feature_view)")
    feature_sets = {}
    for exposure in manifest.get("exposures", {}).values():
        if "feature_set" in exposure["config"].get("meta", {}):
            feature_set = _feature_set(exposure, views)
            feature_sets[feature_set.model] = feature_set
    return Registry(views, feature_sets)

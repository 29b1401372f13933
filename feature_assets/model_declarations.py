"""An ML model's declaration in the registry: a dbt exposure whose meta has a `feature_set` block (see registry.py),
checked and resolved against the declared views and label tables."""

import math
from typing import Any

from feature_assets.errors import RegistryError, shown
from feature_assets.registry import (
    FLOOR_METRICS,
    LABEL_ROW,
    TASKS,
    TRAINER_FORM,
    FeatureSet,
    FeatureView,
    LabelTable,
    ViewRead,
    meta_fields,
    snake_case,
)
from feature_assets.request_time import request_features, request_fields

__all__ = ["feature_set_of"]

_Json = dict[str, Any]


def feature_set_of(exposure: _Json, views: dict[str, FeatureView], labels: dict[str, LabelTable]) -> FeatureSet:
    model = snake_case(exposure["name"], "model")
    block = exposure["config"]["meta"]["feature_set"]
    label_name, task, features = meta_fields(block, f"model {model}: meta.feature_set", "labels", "task", "features")
    if label_name not in labels:
        raise RegistryError(
            f"model {model}: labels {label_name!r} is not a label table (a model with meta.labels); "
            f"known: {', '.join(sorted(labels)) or 'none'}"
        )
    label_table = labels[label_name]
    if task not in TASKS:
        raise RegistryError(f"model {model}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(features, dict) or not features:
        raise RegistryError(f"model {model}: features must map each feature view to the list of features read from it")
    derived = block.get("derived_keys") or {}
    reads: list[ViewRead] = []
    seen: dict[str, str] = {}  # feature name -> the view it is read from
    for view_name, names in features.items():
        if view_name not in views:
            raise RegistryError(
                f"model {model}: feature view {view_name!r} is not declared; known: {', '.join(sorted(views))}"
            )
        if not isinstance(names, list) or not names or len(set(names)) != len(names):
            raise RegistryError(
                f"model {model}: the features of {view_name} must be a non-empty list without repeats, got {names!r}"
            )
        view = views[view_name]
        if view.entity_key not in label_table.entity_keys:
            raise RegistryError(
                f"model {model} reads {view_name}, keyed by {view.entity_key}, but label table {label_name} carries "
                "only "
                f"{', '.join(label_table.entity_keys)}"
            )
        chosen = tuple(view.feature(snake_case(name, f"feature of model {model}:")) for name in names)
        for feature in chosen:
            if feature.name in seen:
                raise RegistryError(
                    f"model {model} reads a feature named {feature.name} from both {seen[feature.name]} and "
                    f"{view_name}; "
                    "feature names must be unique within a model"
                )
            if feature.name in (*label_table.entity_keys, label_table.label_time, label_table.target, LABEL_ROW):
                raise RegistryError(
                    f"model {model}: feature {view_name}.{feature.name} has the name of a column of {label_name}"
                )
            seen[feature.name] = view_name
        reads.append(ViewRead(view, chosen, _derivation(model, view, derived.get(view.entity_key), views, features)))
    for key in derived:
        if key not in {read.key for read in reads}:
            raise RegistryError(f"model {model}: derived key {key!r} is the entity key of none of the views it reads")
    for read in reads:
        if read.derived_from is not None:
            source = next(r for r in reads if r.view.name == read.derived_from[0])
            if source.derived_from is not None:
                raise RegistryError(
                    f"model {model}: {read.key} is derived from {source.view.name}, whose own key is derived"
                )
    trainer = block.get("trainer")
    if trainer is not None and (not isinstance(trainer, str) or not TRAINER_FORM.fullmatch(trainer)):
        raise RegistryError(
            f"model {model}: trainer must name a function as 'package.module:function' (e.g. 'my_team.churn:fit'), "
            f"got {shown(trainer)}"
        )
    description = exposure.get("description") or ""
    request = request_fields(model, block, label_table, set(seen))
    return FeatureSet(
        model,
        tuple(reads),
        label_table,
        task,
        trainer,
        description,
        _floors(model, task, block),
        request,
        request_features(model, block, {*seen, *(f.name for f in request), *label_table.columns}),
    )


def _floors(model: str, task: str, block: _Json) -> tuple[tuple[str, float], ...]:
    floors = block.get("min_validation") or {}
    if not isinstance(floors, dict):
        raise RegistryError(f"model {model}: min_validation must map metrics to floors, got {shown(floors)}")
    known = FLOOR_METRICS[task]
    for metric, floor in floors.items():
        if metric not in known:
            raise RegistryError(
                f"model {model}: min_validation names {metric!r}; a {task} model's floors: {', '.join(known)}"
            )
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor):
            raise RegistryError(f"model {model}: min_validation {metric} must be a number, got {shown(floor)}")
    return tuple((metric, float(floor)) for metric, floor in floors.items())


def _derivation(
    model: str, view: FeatureView, spec: object, views: dict[str, FeatureView], features: _Json
) -> tuple[str, str] | None:
    if spec is None:
        return None
    source_view, _, source_feature = str(spec).partition(".")
    if source_view not in features or source_view == view.name:
        raise RegistryError(
            f"model {model}: derived key {view.entity_key} must name <view>.<feature> of another view the model reads, "
            f"got {spec!r}"
        )
    feature = views[source_view].feature(source_feature)
    if feature.dtype not in ("int64", "string"):
        raise RegistryError(f"model {model}: {spec} is a {feature.dtype}, which cannot be an entity key")
    return source_view, source_feature

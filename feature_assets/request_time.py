"""Request-time features: the fields a model's caller sends with each entity, and the features a named function
computes from them and the stored features, declared in a model's meta.feature_set (`request`, `request_features`).

Training (on the label table's columns of those fields) and serving (on one request's) call the same function on the
same input: a mapping of column name to numpy array, numbers as float64 with NaN for nulls (`compute`). Its checksum
is the sha256 of its source, recorded in the model card, so a changed function makes old versions refuse to serve
as a changed feature definition does.
"""

import hashlib
import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from feature_assets.errors import RegistryError, shown

if TYPE_CHECKING:
    from feature_assets.registry import LabelTable

__all__ = [
    "RequestFeature",
    "RequestField",
    "compute",
    "function_checksum",
    "import_function",
    "input_arrays",
    "input_row",
    "request_features",
    "request_fields",
]

_NUMERIC = ("int64", "float64", "bool")
# A declared model's meta block, as parsed from the manifest's JSON.
_Json = dict[str, Any]


@dataclass(frozen=True)
class RequestField:
    """A value the caller sends with each entity (an order's amount, say); the label table has a column of its name."""

    name: str
    dtype: str


@dataclass(frozen=True)
class RequestFeature:
    """A feature computed at request time by `function` ("package.module:function") from the request fields and the
    stored features, in training and serving alike; its checksum is the sha256 of the function's source."""

    name: str
    dtype: str
    function: str
    definition_checksum: str


def request_fields(model: str, block: _Json, labels: "LabelTable", features: set[str]) -> tuple[RequestField, ...]:
    from feature_assets.registry import _DTYPES, snake_case

    declared = block.get("request") or {}
    if not isinstance(declared, dict):
        raise RegistryError(
            f"model {model}: request must map each request field to its data_type, got {shown(declared)}"
        )
    fields = []
    for name, data_type in declared.items():
        snake_case(name, f"request field of model {model}:")
        if str(data_type).lower() not in _DTYPES:
            raise RegistryError(
                f"model {model}: request field {name} has data_type {shown(data_type)}; use one of {', '.join(_DTYPES)}"
            )
        if name not in labels.columns:
            raise RegistryError(
                f"model {model}: request field {name} is not a column of its label table {labels.name}, which must "
                "carry it so training sees what serving will"
            )
        if name in (*labels.entity_keys, labels.label_time, labels.target) or name in features:
            raise RegistryError(f"model {model}: request field {name} is already an entity key, a label or a feature")
        fields.append(RequestField(name, _DTYPES[str(data_type).lower()]))
    return tuple(fields)


def request_features(model: str, block: _Json, taken: set[str]) -> tuple[RequestFeature, ...]:
    from feature_assets.registry import _DTYPES, TRAINER_FORM, snake_case

    declared = block.get("request_features") or {}
    if not isinstance(declared, dict):
        raise RegistryError(
            f"model {model}: request_features must map each name to {{function: 'package.module:function', dtype: ...}}"
        )
    if declared and not block.get("request"):
        raise RegistryError(
            f"model {model}: request_features need the request fields they read (meta.feature_set.request)"
        )
    features = []
    for name, spec in declared.items():
        snake_case(name, f"request feature of model {model}:")
        function = spec.get("function") if isinstance(spec, dict) else None
        data_type = str(spec.get("dtype", "")).lower() if isinstance(spec, dict) else ""
        if not isinstance(function, str) or not TRAINER_FORM.fullmatch(function):
            raise RegistryError(
                f"model {model}: request feature {name} needs function: 'pkg.module:function', got {shown(function)}"
            )
        if _DTYPES.get(data_type) not in _NUMERIC:
            raise RegistryError(
                f"model {model}: request feature {name} has dtype {shown(data_type or None)}; use a number or boolean "
                "type (double, bigint, boolean)"
            )
        if name in taken:
            raise RegistryError(
                f"model {model}: request feature {name} has the name of a feature, field or label column"
            )
        taken.add(name)
        features.append(RequestFeature(name, _DTYPES[data_type], function, function_checksum(function, model)))
    return tuple(features)


def import_function(spec: str, what: str) -> Any:
    """The function a "package.module:function" spec names, or RegistryError naming what is wrong."""
    module_name, _, attribute = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise RegistryError(f"{what}: cannot import {spec}: {error}") from None
    if not callable(function):
        raise RegistryError(f"{what}: {spec} is not a function")
    return function


def function_checksum(spec: str, model: str) -> str:
    """The sha256 of the source of the function `spec` names: a changed function is a changed definition."""
    function = import_function(spec, f"model {model}")
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError) as error:
        raise RegistryError(f"model {model}: cannot read the source of {spec}: {error}") from None
    return hashlib.sha256(source.encode()).hexdigest()


def input_arrays(columns: Mapping[str, Sequence[Any]], dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """A request-time function's input: each column as a numpy array, numbers (int64, float64, bool) as float64 with
    NaN for nulls, anything else as objects with None for nulls."""
    import pandas as pd  # here only: the registry imports this module, and serving starts without pandas

    arrays = {}
    for name, values in columns.items():
        series = pd.Series(values, dtype=object)
        if dtypes[name] in _NUMERIC:
            arrays[name] = pd.to_numeric(series).to_numpy(dtype=float, na_value=np.nan)
        else:
            arrays[name] = series.where(series.notna(), None).to_numpy(dtype=object)
    return arrays


def input_row(values: Mapping[str, Any], dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """input_arrays of one row of Python values (None for nulls), as serving reads them: the same arrays, built
    without pandas, whose per-call cost would be most of a request-time feature's."""
    arrays = {}
    for name, value in values.items():
        if dtypes[name] in _NUMERIC:
            arrays[name] = np.array([np.nan if value is None else float(value)])
        else:
            arrays[name] = np.array([value], dtype=object)
    return arrays


def compute(
    features: Sequence[RequestFeature], functions: Sequence[Any], inputs: Mapping[str, np.ndarray], rows: int
) -> dict[str, np.ndarray]:
    """Each request-time feature's values (float64, NaN for nulls) from its function over `inputs`."""
    computed = {}
    for feature, function in zip(features, functions):
        try:
            values = np.asarray(function(inputs), dtype=float).reshape(-1)
        except Exception as error:  # the team's own code: whatever it raises, named with the function
            raise RegistryError(
                f"request feature {feature.name} ({feature.function}) failed: {type(error).__name__}: {error}"
            ) from error
        if len(values) != rows:
            raise RegistryError(
                f"request feature {feature.name} ({feature.function}) returned {len(values)} values for {rows} rows"
            )
        computed[feature.name] = values
    return computed

"""The request fields a caller sends with each entity for a model that declares some: taken out of the entity's keys
and parsed by their declared dtype. A missing or mistyped field is refused, naming it, never scored with a default."""

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from feature_assets.errors import InvalidEntity, shown
from feature_assets.serving.model_card import ModelCard

__all__ = ["request_column", "request_value", "split_request"]


def request_value(value: Any, dtype: str, name: str) -> Any:
    """A request field's value as its dtype, or InvalidEntity naming the field (numbers may come as numeric text, as
    the CLI's --request passes them)."""
    try:
        if isinstance(value, bool) != (dtype == "bool") and not isinstance(value, str):
            raise ValueError
        if dtype == "float64":
            number = float(value)
            if math.isfinite(number):
                return number
        elif dtype == "int64":
            if not isinstance(value, float) or value.is_integer():
                return int(value)
        elif dtype == "bool":
            if isinstance(value, bool) or str(value).lower() in ("true", "false"):
                return value if isinstance(value, bool) else str(value).lower() == "true"
        elif isinstance(value, str):
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    kind = {"float64": "a finite number", "int64": "an integer", "bool": "true or false"}.get(dtype, "a string")
    raise InvalidEntity(f"request field {name} must be {kind} ({dtype}), got {shown(value)}")


def split_request(card: ModelCard, entity: Any) -> tuple[Any, dict[str, Any]]:
    """The entity keys and the parsed request fields of one entity; InvalidEntity names a missing or mistyped field."""
    if not card.request:
        return entity, {}
    fields = ", ".join(f["name"] for f in card.request)
    if not isinstance(entity, Mapping):
        raise InvalidEntity(f"model {card.model} needs the request fields {fields} with each entity; pass a mapping")
    keys, request = dict(entity), {}
    for field in card.request:
        value = keys.pop(field["name"], None)
        if value is None:
            raise InvalidEntity(f"model {card.model} needs the request field {field['name']} (its request: {fields})")
        request[field["name"]] = request_value(value, field["dtype"], field["name"])
    return keys, request


def request_column(card: ModelCard, field: Mapping[str, str], keys: pd.DataFrame) -> list[Any]:
    """A request field's parsed values for every entity of a batch, taken out of the key frame."""
    name = field["name"]
    if name not in keys.columns:
        raise InvalidEntity(f"model {card.model} needs the request field {name} with each entity")
    values = keys.pop(name).tolist()
    for index, value in enumerate(values):
        if value is None:
            raise InvalidEntity(f"model {card.model} needs the request field {name}; entities[{index}] has none")
    return [request_value(value, field["dtype"], name) for value in values]

"""What a request to `featurestore serve` may hold, and the refusals naming what it holds wrongly."""

import json
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request

from feature_assets.errors import (
    DataError,
    FeatureStoreError,
    InvalidEntity,
    InvalidRow,
    MissingFeatures,
    OnlineStoreError,
    WarehouseError,
    shown,
)
from feature_assets.registry import FeatureView
from feature_assets.serving import http_metrics
from feature_assets.serving.codec import parse_entity_id
from feature_assets.serving.predictor import SchemaMismatch

__all__ = ["Refused", "entities_of", "feature_names", "read_payload", "refusal_of", "rows_of", "view_ids"]


class Refused(Exception):
    """A request answered with a 4xx or 503 and a JSON error naming the problem."""

    def __init__(self, status: int, cause: str, message: str):
        super().__init__(message)
        self.status, self.cause = status, cause


def refusal_of(error: FeatureStoreError | Refused) -> Refused:
    """The HTTP answer to an error the feature store raised on purpose: the same refusals as `featurestore predict`."""
    if isinstance(error, Refused):
        return error
    if isinstance(error, InvalidEntity):
        return Refused(400, "invalid_entity", str(error))
    if isinstance(error, InvalidRow):
        return Refused(400, "invalid_row", str(error))
    if isinstance(error, WarehouseError):
        return Refused(503, "warehouse", str(error))
    if isinstance(error, MissingFeatures):
        return Refused(404, "missing_features", str(error))
    if isinstance(error, SchemaMismatch):
        return Refused(409, "schema_mismatch", str(error))
    if isinstance(error, DataError):  # stored values the model or reader cannot take (non-finite, unreadable)
        return Refused(409, "online_data", str(error))
    if isinstance(error, OnlineStoreError):
        http_metrics.ONLINE_STORE_ERRORS.inc()
        return Refused(503, "online_store", str(error))
    return Refused(503, "unavailable", str(error))  # e.g. a model with no served version yet


async def read_payload(request: Request, limit: int, fields: Sequence[str]) -> dict[str, Any]:
    """The JSON object in the body, of at most `limit` bytes and with no other fields than `fields`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Refused(
            413,
            "too_large",
            f"the body is {length} bytes; at most {limit} are taken (FEATURE_STORE_SERVE_MAX_BODY_BYTES)",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(
                413, "too_large", f"the body is over {limit} bytes, the most taken (FEATURE_STORE_SERVE_MAX_BODY_BYTES)"
            )
        chunks.append(chunk)
    try:
        payload = json.loads(b"".join(chunks))
    except ValueError as error:
        raise Refused(400, "bad_json", f"the body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise Refused(400, "bad_request", f"the body must be a JSON object with the fields {', '.join(fields)}")
    unknown = [name for name in payload if name not in fields]
    if unknown:
        raise Refused(400, "bad_request", f"unknown field {shown(unknown[0])}; the fields are {', '.join(fields)}")
    return payload


def entities_of(payload: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    entities = payload.get("entities")
    if not isinstance(entities, list) or not entities:
        raise Refused(
            400, "bad_request", 'the body needs "entities": a non-empty list of objects, e.g. [{"user_id": 42}]'
        )
    if len(entities) > limit:
        raise Refused(
            413,
            "too_many_entities",
            f"{len(entities)} entities; at most {limit} per request (FEATURE_STORE_SERVE_MAX_ENTITIES)",
        )
    for index, entity in enumerate(entities):
        if not isinstance(entity, dict) or not entity:
            raise Refused(
                400,
                "bad_request",
                f'entities[{index}] is {shown(entity)}, not an object of entity keys, e.g. {{"user_id": 42}}',
            )
    keys = entities[0].keys()
    for index, entity in enumerate(entities):
        if entity.keys() != keys:
            raise Refused(
                400, "invalid_entity",
                f"entities[{index}] passes the keys {', '.join(entity)} but entities[0] passes {', '.join(keys)}; "
                "every entity "
                "of one request passes the same keys",
            )  # fmt: skip
    return entities


def rows_of(payload: dict[str, Any], limit: int) -> list[Any]:
    """The rows of a push: a non-empty list, at most `limit` long (each row is checked by push.typed_rows)."""
    rows = payload.get("rows")
    if not isinstance(rows, list) or not rows:
        raise Refused(400, "bad_request", 'the body needs "rows": a non-empty list of objects, e.g. '
                      '[{"user_id": 42, "computed_at": "2026-12-07T06:30:00Z", ...every feature}]')  # fmt: skip
    if len(rows) > limit:
        raise Refused(
            413, "too_many_rows", f"{len(rows)} rows; at most {limit} per request (FEATURE_STORE_SERVE_MAX_ENTITIES)"
        )
    return rows


def view_ids(view: FeatureView, entities: list[dict[str, Any]]) -> list[Any]:
    if list(entities[0]) != [view.entity_key]:
        raise InvalidEntity(
            f"{view.name} is keyed by {view.entity_key} alone; the entities pass {', '.join(entities[0])}"
        )
    ids = []
    for index, entity in enumerate(entities):
        try:
            ids.append(parse_entity_id(entity[view.entity_key], view.key_data_type, view.entity_key))
        except InvalidEntity as error:
            raise InvalidEntity(f"entities[{index}]: {error}") from None
    return ids


def feature_names(view: FeatureView, names: Any) -> list[str] | None:
    if names is None:
        return None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise Refused(400, "bad_request", '"features", when given, is a non-empty list of feature names')
    unknown = [name for name in names if name not in view.feature_names]
    if unknown:
        raise Refused(
            400,
            "unknown_feature",
            f"{view.name} has no feature {shown(unknown[0])}; its features: {', '.join(view.feature_names)}",
        )
    if len(set(names)) != len(names):
        raise Refused(400, "bad_request", '"features" names a feature twice')
    return names

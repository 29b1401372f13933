"""Online values of features for a caller's entities, typed by the registry: one round trip per view, as predict
reads them. Imports no Dagster, no dbt, no warehouse."""

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.feature_refs import PANDAS_DTYPES, snapshot_time_column
from feature_assets.registry import FeatureView, Registry, ViewRead
from feature_assets.serving.codec import parse_entity_id
from feature_assets.serving.reads import MISSING, FeatureReader

__all__ = ["MISSING_COLUMN", "online_features"]

# The result's column saying why a row's features are null (null when every view was found).
MISSING_COLUMN = "missing"


def online_features(
    reader_of: Callable[[str], FeatureReader],
    registry: Registry,
    reads: Sequence[ViewRead],
    entities: pd.DataFrame,
    names: Sequence[Sequence[str]],
) -> pd.DataFrame:
    """`entities` (a frame of keys) with the features of `reads`, named by `names` (feature_refs.output_names)."""
    keys: dict[str, list[Any]] = {}
    for read in reads:
        view = registry.view(read.derived_from[0]) if read.derived_from else read.view
        if view.entity_key not in keys:
            keys[view.entity_key] = [
                None if _null(value) else parse_entity_id(value, view.key_data_type, view.entity_key)
                for value in entities[view.entity_key].tolist()
            ]
    # Per view read, the fields one read asks for: the requested features, and those other views' keys come from.
    fields: dict[str, list[str]] = {read.view.name: [f.name for f in read.features] for read in reads}
    for read in reads:
        if read.derived_from is not None:
            source_view, source_feature = read.derived_from
            wanted = fields.setdefault(source_view, [])
            if source_feature not in wanted:
                wanted.append(source_feature)
    derived = {read.view.name for read in reads if read.derived_from is not None}
    reasons: list[list[str]] = [[] for _ in range(len(entities))]
    frames: dict[str, pd.DataFrame] = {}
    derived_keys: dict[str, list[Any]] = {}
    for view_name in [name for name in fields if name not in derived] + [name for name in fields if name in derived]:
        view = registry.view(view_name)
        derivation = next((r.derived_from for r in reads if r.view.name == view_name and r.derived_from), None)
        if derivation is not None:
            source, feature = derivation
            ids = [None if _null(value) else value for value in frames[source][feature].tolist()]
            derived_keys[view.entity_key] = ids
            unknown = f"{view.entity_key} is derived from {source}.{feature}, which is null"
        else:
            ids = keys[view.entity_key]
            unknown = f"no {view.entity_key}"
        # A null key is read as the empty id, which no entity has: the row comes back missing.
        frame = reader_of(view_name).get_online_features(["" if i is None else i for i in ids], fields[view_name])
        frames[view_name] = frame
        for row in np.flatnonzero(frame[MISSING].to_numpy(dtype=bool)):
            reasons[row].append(f"{view.name}: {unknown}" if ids[row] is None else _expired(view, ids[row]))
    result = entities.copy()
    for key, ids in derived_keys.items():
        if key not in result.columns:
            result[key] = pd.Series(ids, dtype=object)
    for read, columns in zip(reads, names):
        frame = frames[read.view.name]
        result[snapshot_time_column(read)] = frame[read.view.timestamp].to_numpy()
        for declared, column in zip(read.features, columns):
            result[column] = frame[declared.name].astype(PANDAS_DTYPES[declared.dtype]).array
    result[MISSING_COLUMN] = pd.array(["; ".join(why) if why else None for why in reasons], dtype="string")
    return result


def _null(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _expired(view: FeatureView, entity_id: Any) -> str:
    ttl = view.online_ttl / timedelta(hours=1)
    return (
        f"{view.name}: {view.entity_key} {entity_id} has no snapshot within its {ttl:g} h TTL "
        "(never synced, or expired)"
    )

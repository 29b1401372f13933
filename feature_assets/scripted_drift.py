"""A scripted drift, for the demo and the tests: one numeric feature shifted in the online store only, so that the
next skew report sees serving move away from training."""

from typing import Any

import pandas as pd

from feature_assets.errors import FeatureStoreError
from feature_assets.online_sync import iter_latest_snapshots
from feature_assets.registry import FeatureView
from feature_assets.serving import encode_batch
from feature_assets.serving.online_store import OnlineStore
from feature_assets.warehouses import Warehouse

__all__ = ["shift_online_feature"]


def shift_online_feature(
    warehouse: Warehouse, store: OnlineStore, view: FeatureView, feature: str, share: float
) -> tuple[Any, int]:
    """A scripted drift: every entity's latest value of one numeric feature, shifted by `share` of the feature's
    mean, written to the online store only. Returns the shift and the number of entities."""

    dtype = view.feature(feature).dtype
    if dtype not in ("int64", "float64"):
        raise FeatureStoreError(f"{feature} is {dtype}; only numeric features can be shifted")
    with warehouse.connect() as con:
        frames = list(iter_latest_snapshots(warehouse, con, view))
    shift = share * pd.concat(frames)[feature].mean()
    with store.writer(view) as writer:
        for frame in frames:
            shifted = frame[feature].astype("Float64") + shift
            frame[feature] = shifted.round().astype("Int64") if dtype == "int64" else shifted
            writer.write(encode_batch(view, frame))
    return shift, sum(map(len, frames))

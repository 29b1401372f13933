"""The demo's request-time features (declared in dbt_features/models/ml/models.yml under request_features).

Each takes a mapping of column name to numpy array (the request fields and the model's stored features, numbers as
float64 with NaN for nulls) and returns one value per row; training calls it on every row of a training set, serving
on one request's row.
"""

from collections.abc import Mapping

import numpy as np

__all__ = ["order_to_avg_ratio"]


def order_to_avg_ratio(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The order's amount over the user's average order in the last 30 days; NaN when the user has no such average."""
    average = columns["avg_order_30d"]
    return columns["order_amount"] / np.where(average > 0, average, np.nan)

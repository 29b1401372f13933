"""The leakage check of a training set: sampled rows recomputed from the raw tables, row by row.

For each sampled row that has features: the matched snapshot must be strictly before the label time (and
within the TTL), and every feature must equal its value recomputed by the independent Python reference
from raw rows created before and loaded by the snapshot time. Together: no feature used data created or
loaded at or after the label time. Rows without a snapshot must have all features null.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.reference_features import REFERENCE_FEATURES, reference_features
from feature_assets.registry import FeatureSet
from feature_assets.resources.warehouse import Warehouse
from feature_assets.settings import validate_identifier
from feature_assets.training import LABEL_ROW, LABEL_TIME, SNAPSHOT_AT

__all__ = ["LeakageReport", "check_leakage"]

_RAW_TABLES = ("raw_users", "raw_profile_changes", "raw_events", "raw_orders")


@dataclass
class LeakageReport:
    rows_checked: int
    features_recomputed: tuple[str, ...]
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _python(value: Any) -> Any:
    """A warehouse value as plain Python, every kind of null as None."""
    if pd.isna(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _same(a: Any, b: Any) -> bool:
    """Equal plain-Python values (see _python); floats up to rounding between SQL and Python."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def check_leakage(warehouse: Warehouse, feature_set: FeatureSet, table: str, sample: int, seed: int = 0) -> LeakageReport:
    """Checks `sample` random rows of training-set `table` (all rows if it has fewer)."""
    table = validate_identifier(table, "training set table")
    key, ttl = feature_set.view.entity_key, feature_set.view.online_ttl
    names = feature_set.feature_names
    recomputed = tuple(name for name in names if name in REFERENCE_FEATURES)
    with warehouse.connect() as con:
        total = int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])
        if total == 0:
            return LeakageReport(rows_checked=0, features_recomputed=recomputed)
        chosen = np.random.default_rng(seed).choice(np.arange(1, total + 1), size=min(sample, total), replace=False)
        marks = ", ".join("?" * len(chosen))
        rows = warehouse.fetch(con, f"select * from {table} where {LABEL_ROW} in ({marks}) order by {LABEL_ROW}", chosen.tolist())
        users = sorted({int(u) for u in rows[key]})
        user_marks = ", ".join("?" * len(users))
        raw = {
            raw_table: warehouse.fetch(con, f"select * from {raw_table} where user_id in ({user_marks})", users)
            for raw_table in _RAW_TABLES
        }
    report = LeakageReport(rows_checked=len(rows), features_recomputed=recomputed)
    for row in rows.to_dict("records"):
        label_time: datetime = row[LABEL_TIME]
        snapshot_at = row[SNAPSHOT_AT]

        def problem(feature: str, why: str, reference: Any = None) -> None:
            report.problems.append(
                {
                    LABEL_ROW: int(row[LABEL_ROW]),
                    key: _python(row[key]),
                    LABEL_TIME: str(label_time),
                    SNAPSHOT_AT: None if pd.isna(snapshot_at) else str(snapshot_at),
                    "feature": feature,
                    "training_value": _python(row[feature]),
                    "reference_value": reference,
                    "problem": why,
                }
            )

        if pd.isna(snapshot_at):
            for name in names:
                if _python(row[name]) is not None:
                    problem(name, "a value although the row matched no snapshot")
            continue
        if snapshot_at >= label_time:
            for name in names:
                problem(name, "taken from a snapshot computed at or after the label time")
            continue
        if snapshot_at < label_time - ttl:
            for name in names:
                problem(name, f"taken from a snapshot older than the {ttl} TTL")
            continue
        reference = reference_features(raw, _python(row[key]), snapshot_at.to_pydatetime()) or {}
        for name in recomputed:
            expected = reference.get(name)
            if not _same(_python(row[name]), expected):
                problem(name, "differs from the value recomputed from raw rows created before and loaded by the snapshot time", expected)
    return report

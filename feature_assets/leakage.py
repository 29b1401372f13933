"""The leakage check of a training set: sampled rows recomputed row by row from the stored feature history.

For each sampled row and each view the model reads, independently of the training-set SQL: the view's
snapshot the row should have matched is found by a plain loop over that entity's snapshots (the latest one
strictly before the label time, and not older than the view's TTL), and every feature of that view must equal
the value stored in that snapshot; with no such snapshot, every feature of the view must be null. Together:
no feature of any view saw a snapshot computed at or after the label time, or one staler than serving allows.
The snapshots themselves only see facts created before and loaded by their as-of time; the feature views'
own tests pin that against raw data. Pushed rows (push.py) count as snapshots from when they were both computed and
loaded, a snapshot winning a tie.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from feature_assets.push import LOADED_AT, pushed_table
from feature_assets.registry import LABEL_ROW, FeatureSet, ViewRead, snapshot_column
from feature_assets.settings import validate_identifier
from feature_assets.warehouses.base import Warehouse

__all__ = ["LeakageReport", "check_leakage"]


@dataclass
class LeakageReport:
    rows_checked: int
    features_checked: tuple[str, ...]
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _python(value: Any) -> Any:
    """A warehouse value as plain Python, every kind of null as None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _same(a: Any, b: Any) -> bool:
    """Equal plain-Python values (see _python); floats up to rounding."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _snapshots(warehouse: Warehouse, con: Any, read: ViewRead, entities: list) -> dict[Any, list[dict]]:
    """Every stored snapshot and pushed row of the given entities, per entity; a pushed row has its loaded_at, a
    snapshot None there."""
    view = read.view
    columns = ", ".join([view.entity_key, view.timestamp, *(f.name for f in read.features)])
    marks = ", ".join("?" * len(entities))
    sql = f"select {columns}, null as {LOADED_AT} from {view.name} where {view.entity_key} in ({marks})"
    params = list(entities)
    if warehouse.table_exists(con, pushed_table(view)):
        sql += (
            f" union all select {columns}, {LOADED_AT} from {pushed_table(view)} where {view.entity_key} in ({marks})"
        )
        params += entities
    by_entity: dict[Any, list[dict]] = {}
    for row in warehouse.fetch(con, sql, params).to_dict("records"):
        by_entity.setdefault(_python(row[view.entity_key]), []).append(row)
    return by_entity


def _newer(row: dict, than: dict | None, timestamp: str) -> bool:
    """Whether `row` is the newer of the two; a snapshot wins over a pushed row of the same time."""
    if than is None or row[timestamp] > than[timestamp]:
        return True
    return row[timestamp] == than[timestamp] and _python(row[LOADED_AT]) is None


def check_leakage(
    warehouse: Warehouse, feature_set: FeatureSet, table: str, sample: int, seed: int = 0
) -> LeakageReport:
    """Checks `sample` random rows of training-set `table` (all rows if it has fewer), every feature of every view."""
    table = validate_identifier(table, "training set table")
    label_time = feature_set.labels.label_time
    report = LeakageReport(
        rows_checked=0, features_checked=tuple(f"{r.view.name}.{f.name}" for r in feature_set.reads for f in r.features)
    )
    with warehouse.connect() as con:
        total = int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])
        if total == 0:
            return report
        chosen = np.random.default_rng(seed).choice(np.arange(1, total + 1), size=min(sample, total), replace=False)
        marks = ", ".join("?" * len(chosen))
        rows = warehouse.fetch(
            con, f"select * from {table} where {LABEL_ROW} in ({marks}) order by {LABEL_ROW}", chosen.tolist()
        )
        history = {}
        for read in feature_set.reads:
            entities = sorted({_python(k) for k in rows[read.key]} - {None})
            history[read.view.name] = _snapshots(warehouse, con, read, entities) if entities else {}
    report.rows_checked = len(rows)
    for row in rows.to_dict("records"):
        t = row[label_time]
        for read in feature_set.reads:
            view, entity = read.view, _python(row[read.key])
            expected = None
            for snapshot in history[view.name].get(entity, []):
                loaded = _python(snapshot[LOADED_AT])
                if (
                    t - view.online_ttl <= snapshot[view.timestamp] < t
                    and (loaded is None or loaded < t)
                    and _newer(snapshot, expected, view.timestamp)
                ):
                    expected = snapshot
            matched = _python(row[snapshot_column(view)])
            for feature in read.features:
                value = _python(row[feature.name])
                reference = None if expected is None else _python(expected[feature.name])
                if matched is not None and matched >= t:
                    why = f"taken from the snapshot of {matched}, computed at or after the label time"
                elif matched is not None and expected is None:
                    why = (
                        f"taken from the snapshot of {matched}, although no {view.name} snapshot lies in "
                        "[label time - TTL, label time)"
                    )
                elif expected is not None and matched != expected[view.timestamp]:
                    why = (
                        f"taken from the snapshot of {matched}, not the latest one before the label time "
                        f"({expected[view.timestamp]})"
                    )
                elif expected is None and value is not None:
                    why = "a value although the row matched no snapshot"
                elif not _same(value, reference):
                    why = f"differs from the {view.name} snapshot it was matched to"
                else:
                    continue
                report.problems.append(
                    {
                        LABEL_ROW: int(row[LABEL_ROW]),
                        "entity": f"{read.key} {entity}",
                        label_time: str(t),
                        "snapshot_at": None if matched is None else str(matched),
                        "feature": f"{view.name}.{feature.name}",
                        "training_value": value,
                        "reference_value": reference,
                        "problem": why,
                    }
                )
    return report

"""The stored skew reports, read without Dagster: where each view's reports are and what the newest one grades.
The skew report assets (assets/monitoring.py) write them; promotion (served_models, FeatureStore.promote) and the
CLI read them."""

from typing import Any

import pandas as pd

from feature_assets.registry import FeatureView
from feature_assets.warehouses.base import Warehouse

__all__ = ["drift_errors", "features_at", "latest_report", "report_table", "training_sources"]


def report_table(view: FeatureView) -> str:
    """The warehouse table of a view's skew reports: one row per feature per report."""
    return f"{view.name}_skew"


def training_sources(report: pd.DataFrame) -> str:
    """Every training set a report compared with (each feature row names those that read the feature)."""
    return " + ".join(dict.fromkeys(table for sources in report["training_source"] for table in sources.split(" + ")))


def latest_report(warehouse: Warehouse, con: Any, view: FeatureView) -> pd.DataFrame:
    """The rows of the view's newest report (one per feature)."""
    table = report_table(view)
    return warehouse.fetch(con, f"select * from {table} where report_at = (select max(report_at) from {table})")


def features_at(report: pd.DataFrame, severities: tuple[str, ...]) -> pd.DataFrame:
    """The report's rows graded one of `severities`."""
    return report[report["severity"].isin(severities)]


def drift_errors(warehouse: Warehouse, views: list[FeatureView]) -> list[str]:
    """Each feature whose newest skew report grades a drift error, with its reasons, e.g.
    "events_30d (user_features: psi 0.41 >= 0.25)"."""
    errors = []
    with warehouse.connect() as con:
        for view in views:
            if warehouse.table_exists(con, report_table(view)):
                drifted = features_at(latest_report(warehouse, con, view), ("error",))
                errors += [f"{row['feature']} ({view.name}: {row['reasons']})" for row in drifted.to_dict("records")]
    return errors

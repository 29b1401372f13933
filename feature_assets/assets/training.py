"""Point-in-time training sets (one per model declared in the registry), with their leakage checks."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from feature_assets.assets.features import dbt_model_key
from feature_assets.assets.metadata import markdown_table
from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.leakage import check_leakage
from feature_assets.push import pushed_views
from feature_assets.registry import LABEL_ROW, FeatureSet, Registry, snapshot_column
from feature_assets.training import build_table, point_in_time_sql, require_view_indexes
from feature_assets.warehouses import Warehouse

__all__ = ["LeakageCheckConfig", "training_set_assets"]

GROUP = "training"


class LeakageCheckConfig(dg.Config):
    sample: int = Field(default=200, description="Training rows recomputed from the feature history.")
    seed: int = Field(default=0, description="Seed of the row sample.")


def _training_set(feature_set: FeatureSet) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    table = feature_set.training_set
    views = ", ".join(view.name for view in feature_set.views)

    @dg.asset(
        name=table,
        deps=[dbt_model_key(feature_set.labels.name), *(dbt_model_key(view.name) for view in feature_set.views)],
        group_name=GROUP,
        kinds={"sql"},
        pool=WAREHOUSE_POOL,
        description=(
            f"One row per {feature_set.labels.name} row (label_row orders them): the label and the {feature_set.model} "
            f"features of {views}, each from that view's latest snapshot strictly before the label time and within its "
            "TTL."
        ),
    )
    def training_set(warehouse: dg.ResourceParam[Warehouse]) -> dg.MaterializeResult:
        started = time.perf_counter()
        matched = ", ".join(f"count({snapshot_column(view)}) as {view.name}" for view in feature_set.views)
        complete = " and ".join(f"{snapshot_column(view)} is not null" for view in feature_set.views)
        with warehouse.connect() as con:
            require_view_indexes(warehouse, con, feature_set)
            sql, params = point_in_time_sql(warehouse, feature_set, pushed_views(warehouse, con, feature_set.views))
            rows = build_table(warehouse, con, table, sql, params)
            counts = warehouse.fetch(
                con, f"select {matched}, count(case when {complete} then 1 end) as complete from {table}"
            ).iloc[0]
            preview = warehouse.fetch(con, f"select * from {table} order by {LABEL_ROW} limit 5")
        return dg.MaterializeResult(
            metadata={
                "rows": rows,
                "rows_with_features": int(counts["complete"]),
                **{f"rows_matching_{view.name}": int(counts[view.name]) for view in feature_set.views},
                "seconds": round(time.perf_counter() - started, 3),
                "features": ", ".join(feature_set.feature_names),
                "preview": markdown_table(preview),
            }
        )

    @dg.asset_check(asset=training_set, name="no_leakage", blocking=True, pool=WAREHOUSE_POOL)
    def no_leakage(config: LeakageCheckConfig, warehouse: dg.ResourceParam[Warehouse]) -> dg.AssetCheckResult:
        """Sampled rows recomputed row by row: every feature of every view comes from that view's latest snapshot
        strictly before the label time and within its TTL, or is null when there is none."""
        report = check_leakage(warehouse, feature_set, table, sample=config.sample, seed=config.seed)
        metadata: dict[str, int | str | dg.MetadataValue] = {
            "rows_checked": report.rows_checked,
            "features_checked": ", ".join(report.features_checked),
            "problems": len(report.problems),
        }
        if report.problems:
            first = report.problems[0]
            metadata["first_problem"] = (
                f"row {first[LABEL_ROW]} ({first['entity']}), feature {first['feature']}: {first['problem']}"
            )
            metadata["examples"] = markdown_table(pd.DataFrame(report.problems[:20]))
        return dg.AssetCheckResult(passed=report.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)

    return training_set, no_leakage


def training_set_assets(registry: Registry) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    built = [_training_set(feature_set) for feature_set in registry.feature_sets.values()]
    return [asset for asset, _ in built], [check for _, check in built]

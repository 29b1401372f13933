"""Labels and point-in-time training sets (one per model declared in the registry), with their leakage checks."""

import time

import dagster as dg
import pandas as pd
from dagster_dbt import get_asset_key_for_model
from pydantic import Field

from feature_assets.assets.features import dbt_feature_models
from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.errors import RegistryError
from feature_assets.leakage import check_leakage
from feature_assets.registry import FeatureSet, Registry
from feature_assets.resources.warehouse import Warehouse
from feature_assets.training import LABEL_ROW, LABELS, LabelSpec, SNAPSHOT_AT, build_table, labels_sql, point_in_time_sql

__all__ = ["label_assets", "training_set_assets", "training_set_table"]

GROUP = "training"


class LeakageCheckConfig(dg.Config):
    sample: int = Field(default=200, description="Training rows recomputed from the raw tables.")
    seed: int = Field(default=0, description="Seed of the row sample.")


def _model_key(name: str) -> dg.AssetKey:
    return get_asset_key_for_model([dbt_feature_models], name)


def training_set_table(feature_set: FeatureSet) -> str:
    return f"{feature_set.model.removesuffix('_model')}_training_set"


def _label_asset(spec: LabelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.table,
        deps=[_model_key("stg_app__users"), _model_key("stg_app__events"), _model_key(spec.outcome_source)],
        group_name=GROUP,
        kinds={"sql"},
        pool=WAREHOUSE_POOL,
        description=f"One row per (user, label_time), weekly per user signed up before label_time; {spec.description}.",
    )
    def label_table(warehouse: Warehouse) -> dg.MaterializeResult:
        sql, params = labels_sql(spec)
        with warehouse.connect() as con:
            rows = build_table(warehouse, con, spec.table, sql, params)
            summary = warehouse.fetch(
                con, f"select min(label_time) as first, max(label_time) as last, {spec.mean} as mean from {spec.table}"
            ).iloc[0]
        return dg.MaterializeResult(
            metadata={
                "rows": rows,
                "first_label_time": str(summary["first"]),
                "last_label_time": str(summary["last"]),
                f"mean_{spec.target}": float(summary["mean"] or 0.0),
            }
        )

    return label_table


def label_assets() -> list[dg.AssetsDefinition]:
    return [_label_asset(spec) for spec in LABELS.values()]


def _training_set(feature_set: FeatureSet) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    if feature_set.labels not in LABELS:
        raise RegistryError(
            f"model {feature_set.model}: labels {feature_set.labels!r} is not a label table; known: {', '.join(LABELS)}"
        )
    table = training_set_table(feature_set)

    @dg.asset(
        name=table,
        deps=[feature_set.labels, _model_key(feature_set.view.name)],
        group_name=GROUP,
        kinds={"sql"},
        pool=WAREHOUSE_POOL,
        description=(
            f"One row per {feature_set.labels} row (label_row orders them): the label and the {feature_set.model} "
            f"features from the latest {feature_set.view.name} snapshot strictly before label_time and within the TTL."
        ),
    )
    def training_set(warehouse: Warehouse) -> dg.MaterializeResult:
        sql, params = point_in_time_sql(warehouse.kind, feature_set, feature_set.labels)
        started = time.perf_counter()
        with warehouse.connect() as con:
            rows = build_table(warehouse, con, table, sql, params)
            matched = int(warehouse.fetch(con, f"select count({SNAPSHOT_AT}) as n from {table}")["n"].iloc[0])
            preview = warehouse.fetch(con, f"select * from {table} order by {LABEL_ROW} limit 5")
        return dg.MaterializeResult(
            metadata={
                "rows": rows,
                "rows_with_features": matched,
                "rows_without_snapshot": rows - matched,
                "seconds": round(time.perf_counter() - started, 3),
                "features": ", ".join(feature_set.feature_names),
                "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
            }
        )

    @dg.asset_check(asset=training_set, name="no_leakage", blocking=True, pool=WAREHOUSE_POOL)
    def no_leakage(config: LeakageCheckConfig, warehouse: Warehouse) -> dg.AssetCheckResult:
        """Sampled rows recomputed from raw data: no feature used data created or loaded at or after the label time."""
        report = check_leakage(warehouse, feature_set, table, sample=config.sample, seed=config.seed)
        metadata = {
            "rows_checked": report.rows_checked,
            "features_recomputed": ", ".join(report.features_recomputed),
            "problems": len(report.problems),
        }
        if report.problems:
            first = report.problems[0]
            metadata["first_problem"] = (
                f"row {first[LABEL_ROW]} ({feature_set.view.entity_key} {first[feature_set.view.entity_key]}), "
                f"feature {first['feature']}: {first['problem']}"
            )
            metadata["examples"] = dg.MetadataValue.md(pd.DataFrame(report.problems[:20]).to_markdown(index=False))
        return dg.AssetCheckResult(passed=report.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)

    return training_set, no_leakage


def training_set_assets(registry: Registry) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    built = [_training_set(feature_set) for feature_set in registry.feature_sets.values()]
    return [asset for asset, _ in built], [check for _, check in built]

"""The online snapshot: each user's latest features in the online store that serving reads, and its parity check."""

import dagster as dg
import pandas as pd
from dagster_dbt import get_asset_key_for_model
from pydantic import Field

from feature_assets.assets.features import dbt_feature_models
from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.automation import ONLINE_FRESHNESS, SYNC_WHEN_FEATURES_PASS_CHECKS
from feature_assets.online_sync import DEFAULT_BATCH_ROWS, check_online_parity, sync_online_store
from feature_assets.project import dbt_project
from feature_assets.registry import load_registry
from feature_assets.resources.online import OnlineStoreResource
from feature_assets.resources.warehouse import Warehouse

__all__ = ["OnlineSyncConfig", "ParityConfig", "user_features_online", "user_features_online_parity"]

VIEW = "user_features"


class OnlineSyncConfig(dg.Config):
    full_resync: bool = Field(default=False, description="Rewrite every user, not only those with a newer snapshot.")
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, description="Rows per warehouse batch; bounds memory.")


class ParityConfig(dg.Config):
    sample: int | None = Field(default=None, description="Compare a random sample of this many users; default: all.")


@dg.asset(
    deps=[get_asset_key_for_model([dbt_feature_models], VIEW)],
    group_name="serving",
    kinds={"python"},
    pool=WAREHOUSE_POOL,
    freshness_policy=ONLINE_FRESHNESS,
    automation_condition=SYNC_WHEN_FEATURES_PASS_CHECKS,
)
def user_features_online(
    context: dg.AssetExecutionContext, config: OnlineSyncConfig, warehouse: Warehouse, online_store: OnlineStoreResource
) -> dg.MaterializeResult:
    """Each user's latest user_features snapshot in the online store (Redis hash features:user:<user_id>, or SQLite).

    Incremental: writes only users whose latest snapshot is newer than the last completed sync.
    """
    view = load_registry(dbt_project.manifest_path).view(VIEW)
    with online_store.open() as store:
        result = sync_online_store(
            warehouse,
            store,
            view,
            full_resync=config.full_resync,
            batch_rows=config.batch_rows,
            on_batch=lambda rows: context.log.debug(f"{rows} rows written to {store.describe()}"),
        )
        context.log.info(f"{result.mode} sync ({result.reason}): {result.rows_written} rows in {result.seconds:.2f} s")
        return dg.MaterializeResult(
            metadata={
                "rows_written": result.rows_written,
                "seconds": round(result.seconds, 3),
                "rows_per_second": round(result.rows_per_second),
                "keys_in_store": result.entities_in_store,
                "mode": result.mode,
                "reason": result.reason,
                "watermark": str(result.watermark),
                "store": store.describe(),
                "definition_version": view.version,
            }
        )


@dg.asset_check(asset=user_features_online, blocking=True, pool=WAREHOUSE_POOL)
def user_features_online_parity(
    config: ParityConfig, warehouse: Warehouse, online_store: OnlineStoreResource
) -> dg.AssetCheckResult:
    """Online values equal the offline latest snapshot exactly, after typed decoding (all users or a sample)."""
    view = load_registry(dbt_project.manifest_path).view(VIEW)
    with online_store.open() as store:
        parity = check_online_parity(warehouse, store, view, sample=config.sample)
    metadata = {"entities_checked": parity.entities_checked, "mismatched_entities": parity.mismatched_entities}
    if parity.problem:
        metadata["problem"] = parity.problem
    if parity.examples:
        metadata["examples"] = dg.MetadataValue.md(pd.DataFrame(parity.examples).to_markdown(index=False))
    return dg.AssetCheckResult(passed=parity.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)

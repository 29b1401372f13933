"""The online snapshot of each feature view: every entity's latest features in the online store that serving
reads, with its blocking parity check. Built from the view's registry entry; no view is named here."""

import dagster as dg
import pandas as pd
from pydantic import Field

from feature_assets.assets.features import dbt_model_key
from feature_assets.assets.metadata import markdown_table
from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.automation import ONLINE_SYNC_AUTOMATION, view_freshness
from feature_assets.online_sync import DEFAULT_BATCH_ROWS, check_online_parity, sync_online_store
from feature_assets.registry import FeatureView
from feature_assets.resources.online import OnlineStoreResource
from feature_assets.warehouses import Warehouse

__all__ = ["OnlineSyncConfig", "ParityConfig", "online_asset_name", "online_assets"]


class OnlineSyncConfig(dg.Config):
    full_resync: bool = Field(default=False, description="Rewrite every entity, not only those with a newer snapshot.")
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, description="Rows per warehouse batch; bounds memory.")


class ParityConfig(dg.Config):
    sample: int | None = Field(default=None, description="Compare a random sample of this many entities; default: all.")


def online_asset_name(view: FeatureView) -> str:
    return f"{view.name}_online"


def online_assets(view: FeatureView) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The view's online snapshot asset (incremental sync, freshness on the view's cadence, synced once the
    view's blocking checks pass) and its blocking parity check."""

    @dg.asset(
        name=online_asset_name(view),
        # The latest snapshot lives in the newest as-of day: the sync waits for that partition alone, not for
        # the (thinned, or never built) older days.
        deps=[dg.AssetDep(dbt_model_key(view.name), partition_mapping=dg.LastPartitionMapping())],
        group_name="serving",
        kinds={"python"},
        pool=WAREHOUSE_POOL,
        freshness_policy=view_freshness(view),
        automation_condition=ONLINE_SYNC_AUTOMATION,
        description=(
            f"Each {view.entity}'s latest {view.name} snapshot in the online store (Redis hash "
            f"features:{view.online_namespace}:<{view.entity_key}>, or SQLite), expiring after "
            f"{view.online_ttl.total_seconds() / 3600:g} h. Incremental: writes only entities whose latest snapshot "
            "is newer than the last completed sync."
        ),
    )
    def online_snapshot(
        context: dg.AssetExecutionContext,
        config: OnlineSyncConfig,
        warehouse: dg.ResourceParam[Warehouse],
        online_store: OnlineStoreResource,
    ) -> dg.MaterializeResult:
        with online_store.open() as store:
            result = sync_online_store(
                warehouse,
                store,
                view,
                full_resync=config.full_resync,
                batch_rows=config.batch_rows,
                on_batch=lambda rows: context.log.debug(f"{rows} rows written to {store.describe()}"),
            )
            context.log.info(
                f"{result.mode} sync ({result.reason}): {result.rows_written} rows in {result.seconds:.2f} s"
            )
            if result.pushes_merged:
                context.log.info(f"merged the files of {result.pushes_merged} pushes to {view.name} into one")
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
                    "key_pattern": store.key_of(view, f"<{view.entity_key}>"),
                    "definition_version": view.version,
                }
            )

    @dg.asset_check(asset=online_snapshot, name="parity", blocking=True, pool=WAREHOUSE_POOL)
    def parity(
        config: ParityConfig, warehouse: dg.ResourceParam[Warehouse], online_store: OnlineStoreResource
    ) -> dg.AssetCheckResult:
        """Online values equal the offline latest snapshot exactly, after typed decoding (all entities or a sample),
        and the store holds no entity the warehouse lacks. A failure names the entities and asks for a full sync,
        which the automation runs at once (the repair)."""
        with online_store.open() as store:
            result = check_online_parity(warehouse, store, view, sample=config.sample)
            if not result.passed and not result.problem:
                store.request_full_sync(
                    view, f"the parity check found {result.mismatched_entities} mismatched entities"
                )
        metadata: dict[str, int | str | dg.MetadataValue] = {
            "entities_checked": result.entities_checked,
            "mismatched_entities": result.mismatched_entities,
        }
        if result.problem:
            metadata["problem"] = result.problem
        if result.examples:
            metadata["examples"] = markdown_table(pd.DataFrame(result.examples))
        return dg.AssetCheckResult(
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=result.summary(view),
        )

    return online_snapshot, parity

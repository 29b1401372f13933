"""The warehouse as a Dagster resource: its configuration, shown in the UI with the URL hidden (an EnvVar), and the
plain `Warehouse` (feature_assets/warehouses) it hands each run's assets, built by feature_assets/backends.py."""

from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.backends import make_warehouse, warehouse_choice
from feature_assets.settings import Settings
from feature_assets.warehouses import Warehouse

__all__ = ["Warehouse", "WarehouseResource", "warehouse_for"]


class WarehouseResource(dg.ConfigurableResource):
    """Configuration only: each run's assets receive the plain Warehouse create_resource builds (Dagster's documented
    way to vend another object), so they take a `dg.ResourceParam[Warehouse]`, and tests may pass a plain Warehouse
    (DuckDBWarehouse(path)) as the resource."""

    kind: Literal["duckdb", "postgres", "spark"]
    url: str = Field(
        default="",
        description="libpq URL (kind=postgres) or Spark Connect URL sc://host:port/;token=... (kind=spark); a secret, "
        "pass it as an EnvVar.",
    )
    path: str = Field(
        default="",
        description="DuckDB file (kind=duckdb), or the local Spark server's folder (kind=spark without url).",
    )
    spark_dbt_method: Literal["session", "thrift", "http"] = Field(
        default="session",
        description="How dbt reaches Spark (kind=spark): through the Spark Connect URL, a Thrift server or HTTP.",
    )
    schema_name: str = Field(default="main", description="Schema holding raw tables and features.")

    def create_resource(self, context: dg.InitResourceContext) -> Warehouse:
        return make_warehouse(
            self.kind, self.url, path=self.path, schema_name=self.schema_name, spark_dbt_method=self.spark_dbt_method
        )


def warehouse_for(settings: Settings) -> WarehouseResource:
    """The warehouse feature_assets.backends.open_warehouse opens outside Dagster, the URL passed as an EnvVar."""
    choice = warehouse_choice(settings)
    url = dg.EnvVar(choice.url_variable) if choice.url_variable else ""
    return WarehouseResource(kind=choice.kind, url=url, **choice.options)

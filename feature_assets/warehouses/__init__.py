"""The offline store: the interface (base.py) and one module per backend (duckdb.py, postgres.py, spark.py)."""

from feature_assets.warehouses.base import Warehouse
from feature_assets.warehouses.duckdb import DuckDBWarehouse
from feature_assets.warehouses.postgres import PostgresWarehouse
from feature_assets.warehouses.spark import SparkWarehouse

__all__ = ["DuckDBWarehouse", "PostgresWarehouse", "SparkWarehouse", "Warehouse"]

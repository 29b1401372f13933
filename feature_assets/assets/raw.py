"""Raw tables of the subscription product: generated demo data (local), or the user's own tables (prod)."""

from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from feature_assets.as_of import current_hour, format_hour, parse_hour
from feature_assets.demo_data import RAW_TABLES, DemoDataSpec, generate
from feature_assets.errors import ConfigError
from feature_assets.registry import Registry
from feature_assets.settings import Settings
from feature_assets.warehouses import Warehouse

__all__ = [
    "RAW_COLUMNS",
    "WAREHOUSE_POOL",
    "DemoDataConfig",
    "demo_first_day",
    "demo_raw_data",
    "external_raw_tables",
    "first_as_of_day",
    "record_demo_first_day",
]

# Steps that write the warehouse share this pool; the instance's dagster.yaml sets its limit
# (1 for the DuckDB file, which admits one writer at a time).
WAREHOUSE_POOL = "warehouse"

RAW_COLUMNS = {
    "raw_users": {"user_id": "bigint", "birthdate": "date", "signup_at": "timestamp", "loaded_at": "timestamp"},
    "raw_profile_changes": {
        "user_id": "bigint",
        "changed_at": "timestamp",
        "country": "varchar",
        "plan": "varchar",
        "loaded_at": "timestamp",
    },
    "raw_events": {
        "event_id": "bigint",
        "user_id": "bigint",
        "event_type": "varchar",
        "created_at": "timestamp",
        "loaded_at": "timestamp",
    },
    "raw_orders": {
        "order_id": "bigint",
        "user_id": "bigint",
        "amount": "double precision",
        "created_at": "timestamp",
        "loaded_at": "timestamp",
    },
}

_DESCRIPTIONS = {
    "raw_users": "One row per user: birthdate and signup time.",
    "raw_profile_changes": "One row per change of a user's country or plan, the full state from changed_at on.",
    "raw_events": "One row per product event (page views, searches, ...).",
    "raw_orders": "One row per order with its amount.",
}

_STATE_TABLE = "demo_data_state"
_STATE_COLUMNS = {
    "users": "bigint",
    "days": "bigint",
    "seed": "bigint",
    "origin": "timestamp",
    "loaded_until": "timestamp",
}


# In FEATURE_STORE_HOME: the first as-of day of the store's demo data, read where the definitions are built (which
# must not open the warehouse: another process may be writing it).
_DEMO_FIRST_DAY_FILE = "demo_first_day"


def demo_first_day(origin: datetime) -> date:
    """The first as-of day of demo data whose history begins at origin: the day after, whose every hour sees it
    (`featurestore demo --days N` builds the N days ending today)."""
    return (origin + timedelta(days=1)).date()


def record_demo_first_day(home: Path, warehouse: Warehouse) -> None:
    """Keeps the first day of the warehouse's demo data in the home, if it has any."""
    with warehouse.connect() as con:
        if not warehouse.table_exists(con, _STATE_TABLE):
            return
        state = warehouse.fetch(con, f"select origin from {_STATE_TABLE}")
    if not state.empty:
        first = demo_first_day(state["origin"].iloc[0].to_pydatetime())
        (home / _DEMO_FIRST_DAY_FILE).write_text(f"{first}\n")


def first_as_of_day(registry: Registry, settings: Settings) -> date:
    """Where the feature views' as-of days (partitions) begin: the day their YAML declares (history_starts) or, in a
    store with demo data, the demo's first day when it is later: the days before have no raw data."""
    declared = registry.history_starts
    recorded = settings.home / _DEMO_FIRST_DAY_FILE
    if not settings.demo_data or not recorded.exists():
        return declared
    try:
        demo = date.fromisoformat(recorded.read_text().strip())
    except ValueError:
        raise ConfigError(
            f"{recorded} does not hold a day like 2026-01-31; delete it, the next demo run rewrites it"
        ) from None
    return max(declared, demo)


class DemoDataConfig(dg.Config):
    users: int = Field(default=2000, description="Population size; applies when the warehouse has no demo data yet.")
    days: int = Field(default=300, description="Days of history before the anchor; applies on the first generation.")
    seed: int = Field(default=7, description="Random seed; applies on the first generation.")
    anchor: str | None = Field(
        default=None, description="Load rows up to this hour boundary (UTC, ISO); default: the current hour."
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(table, group_name="raw", description=_DESCRIPTIONS[table], kinds={"python"})
        for table in RAW_TABLES
    ],
    pool=WAREHOUSE_POOL,
)
def demo_raw_data(context: dg.AssetExecutionContext, config: DemoDataConfig, warehouse: dg.ResourceParam[Warehouse]):
    """Appends the demo rows that arrived (by loaded_at) since the last run, up to the anchor hour.

    The data is a pure function of the spec and time, so running hourly continues one history.
    """
    anchor = parse_hour(config.anchor, "anchor") if config.anchor else current_hour()
    with warehouse.connect() as con:
        state = (
            warehouse.fetch(con, f"select * from {_STATE_TABLE}") if warehouse.table_exists(con, _STATE_TABLE) else None
        )
        if state is None or state.empty:
            spec = DemoDataSpec(
                users=config.users, days=config.days, origin=anchor - timedelta(days=config.days), seed=config.seed
            )
            loaded_after = None
        else:
            row = state.iloc[0]
            spec = DemoDataSpec(
                users=int(row["users"]),
                days=int(row["days"]),
                origin=row["origin"].to_pydatetime(),
                seed=int(row["seed"]),
            )
            loaded_after = row["loaded_until"].to_pydatetime()
        frames = generate(spec, loaded_after, anchor) if loaded_after is None or anchor > loaded_after else None
        if frames is not None:
            for table in RAW_TABLES:
                warehouse.append(con, table, frames[table], RAW_COLUMNS[table])
            warehouse.execute(con, f"drop table if exists {_STATE_TABLE}")
            state_row = {
                "users": spec.users,
                "days": spec.days,
                "seed": spec.seed,
                "origin": spec.origin,
                "loaded_until": anchor,
            }
            warehouse.execute(
                con,
                f"create table {_STATE_TABLE} ({', '.join(f'{c} {t}' for c, t in _STATE_COLUMNS.items())})",
            )
            warehouse.execute(con, f"insert into {_STATE_TABLE} values (?, ?, ?, ?, ?)", list(state_row.values()))
        totals = {
            table: int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0]) for table in RAW_TABLES
        }
    for table in RAW_TABLES:
        yield dg.MaterializeResult(
            asset_key=table,
            metadata={
                "rows_added": 0 if frames is None else len(frames[table]),
                "rows_total": totals[table],
                "loaded_until": format_hour(anchor),
                "history_origin": format_hour(spec.origin),
            },
        )


external_raw_tables = [
    dg.AssetSpec(table, group_name="raw", description=_DESCRIPTIONS[table] + " Loaded by the user's own pipelines.")
    for table in RAW_TABLES
]

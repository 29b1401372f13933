"""The production Dagster instance (deploy/prod/dagster.yaml): runs, events and schedules land in PostgreSQL."""

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest
from conftest import ANCHOR
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from feature_assets.assets.raw import demo_raw_data

PROD_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "deploy" / "prod" / "dagster.yaml"


@pytest.fixture
def dagster_database(postgres_url) -> Iterator[str]:
    """A PostgreSQL database of its own for Dagster's storage, dropped afterwards; yields its libpq URL."""
    name = f"fs_dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def prod_instance_db(tmp_path, monkeypatch, dagster_database) -> str:
    """DAGSTER_HOME holds a copy of the production dagster.yaml and DAGSTER_POSTGRES_URL points at the fresh
    database, in the form README and .env.example document; yields that database's libpq URL for inspection."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROD_DAGSTER_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # SQLAlchemy 2.1 needs the psycopg2 driver named (see the comment in dagster.yaml).
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_database.replace("postgresql://", "postgresql+psycopg2://", 1))
    return dagster_database


def test_the_prod_instance_keeps_runs_events_and_schedules_in_postgres(prod_instance_db):
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert not instance.is_ephemeral


def test_a_run_of_the_demo_data_asset_is_recorded_in_postgres(prod_instance_db, duckdb_warehouse):
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [demo_raw_data],
            resources={"warehouse": duckdb_warehouse},
            run_config={"ops": {"demo_raw_data": {"config": {"users": 20, "days": 2, "anchor": ANCHOR.isoformat()}}}},
            instance=instance,
        )
    assert result.success

    with psycopg.connect(prod_instance_db) as con:
        runs = con.execute("select run_id, status from runs").fetchall()
        materialized = con.execute(
            "select distinct asset_key from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'"
        ).fetchall()
    assert runs == [(result.run_id, "SUCCESS")]
    assert {key for (key,) in materialized} == {
        dg.AssetKey(table).to_string() for table in ("raw_users", "raw_profile_changes", "raw_events", "raw_orders")
    }

    # A new instance (another process, say the webserver) reads the same history back.
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(result.run_id).is_success
        latest = instance.get_latest_materialization_event(dg.AssetKey("raw_users"))
        assert latest is not None and latest.run_id == result.run_id
        assert latest.asset_materialization.metadata["rows_total"].value > 0


def test_a_started_schedule_stays_started_across_instances(prod_instance_db):
    """What `dagster schedule start hourly_refresh` (or the UI toggle) stores; the daemon reads it from another
    process."""
    # Starting a schedule publicly needs a running code server; these internals store the same state, cheaply.
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteInstigatorOrigin, RemoteRepositoryOrigin
    from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, ScheduleInstigatorData
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from feature_assets.definitions import build_definitions
    from feature_assets.settings import Settings

    schedule = build_definitions(Settings.from_env()).resolve_schedule_def("hourly_refresh")
    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="feature_assets.definitions"), location_name="featurestore"
    )
    origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, "__repository__"), schedule.name)
    with dg.DagsterInstance.get() as instance:
        instance.add_instigator_state(
            InstigatorState(
                origin,
                InstigatorType.SCHEDULE,
                InstigatorStatus.RUNNING,
                ScheduleInstigatorData(schedule.cron_schedule, start_timestamp=ANCHOR.timestamp()),
            )
        )

    with dg.DagsterInstance.get() as instance:
        [state] = instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
    assert (state.instigator_name, state.status) == ("hourly_refresh", InstigatorStatus.RUNNING)
    assert state.instigator_data.cron_schedule == "0 * * * *"
    with psycopg.connect(prod_instance_db) as con:
        assert con.execute("select count(*) from instigators").fetchone() == (1,)

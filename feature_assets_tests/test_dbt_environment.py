"""dbt reads the warehouse's settings, the PostgreSQL password among them, from its own process's environment only:
the Dagster process's os.environ never holds them."""

import os
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ANCHOR, materialize
from dagster_dbt import DbtCliResource

from feature_assets.assets.features import with_environment
from feature_assets.settings import dbt_project_dir


def test_the_launcher_hands_the_settings_to_the_process_it_becomes_and_deletes_them(tmp_path):
    dbt = DbtCliResource(project_dir=dbt_project_dir(), dbt_executable="/usr/bin/env")  # prints its environment
    launched = with_environment(dbt, {"FEATURE_STORE_PG_PASSWORD": "s3cret"}, tmp_path)
    assert oct((tmp_path / "dbt_env.json").stat().st_mode & 0o777) == "0o600"

    printed = subprocess.run([launched.dbt_executable], capture_output=True, text=True, check=True).stdout
    assert "FEATURE_STORE_PG_PASSWORD=s3cret" in printed.splitlines()
    assert not (tmp_path / "dbt_env.json").exists()
    assert "FEATURE_STORE_PG_PASSWORD" not in os.environ


def test_the_launcher_leaves_the_settings_for_the_build_when_asked_for_the_version(tmp_path):
    dbt = DbtCliResource(project_dir=dbt_project_dir(), dbt_executable=str(Path(sys.executable).with_name("dbt")))
    launched = with_environment(dbt, {"FEATURE_STORE_PG_PASSWORD": "s3cret"}, tmp_path)
    subprocess.run([launched.dbt_executable, "--version"], capture_output=True, check=True)
    assert (tmp_path / "dbt_env.json").exists()


def test_a_dbt_build_on_postgresql_never_puts_the_password_into_this_process_environment(postgres_warehouse):
    seen, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(name for name in os.environ if name.startswith("FEATURE_STORE_PG_"))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = materialize(
            postgres_warehouse,
            raw={"users": 20, "days": 3, "anchor": ANCHOR.isoformat()},
            as_of={"as_of_end": ANCHOR.isoformat()},
        )
    finally:
        done.set()
        watcher.join()
    assert result.success
    # dbt wrote into the warehouse's own schema: the settings did reach dbt.
    assert len(postgres_warehouse.query("select * from user_features")) > 0
    assert seen == []

"""As-of times after the current hour are refused wherever one can be given: CLI, run config, dbt vars."""

import json
import os
import subprocess
from datetime import timedelta

import pytest

from conftest import materialize, write_raw
from feature_assets.as_of import current_hour, format_hour, parse_hour
from feature_assets.errors import ConfigError

NEXT_HOUR = format_hour(current_hour() + timedelta(hours=1))
NEXT_YEAR = format_hour(current_hour() + timedelta(days=180))


def test_the_current_hour_is_accepted_and_the_next_one_refused_naming_it():
    assert parse_hour(format_hour(current_hour()), "as_of_end") == current_hour()
    with pytest.raises(ConfigError, match=f"as_of_end '{NEXT_HOUR}' is after the current hour {format_hour(current_hour())}"):
        parse_hour(NEXT_HOUR, "as_of_end")
    # The time zone is converted first: the next hour at UTC+01:00 is the current hour in UTC.
    assert parse_hour((current_hour() + timedelta(hours=1)).isoformat() + "+01:00", "--as-of") == current_hour()


def test_refresh_refuses_a_future_as_of_time_naming_it(tmp_path, monkeypatch, capsys):
    from feature_assets.cli import main

    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["refresh", "--as-of", NEXT_YEAR]) == 1
    assert f"--as-of '{NEXT_YEAR}' is after the current hour" in capsys.readouterr().err


@pytest.mark.parametrize(
    "raw, as_of, message",
    [
        ({"anchor": NEXT_YEAR}, None, f"anchor '{NEXT_YEAR}' is after the current hour"),
        (None, {"as_of_end": NEXT_HOUR}, f"as_of_end '{NEXT_HOUR}' is after the current hour"),
        (None, {"as_of_start": NEXT_HOUR, "as_of_end": NEXT_YEAR}, f"as_of_end '{NEXT_YEAR}' is after the current hour"),
    ],
)
def test_run_config_with_a_future_time_fails_naming_it(duckdb_warehouse, raw, as_of, message):
    if as_of is not None:
        write_raw(duckdb_warehouse, {})  # staging builds; the feature views refuse
    result = materialize(duckdb_warehouse, raw=raw, as_of=as_of)
    assert not result.success
    errors = [event.step_failure_data.error for event in result.all_events if event.is_step_failure]
    assert any(message in (error.cause or error).message for error in errors), errors
    with duckdb_warehouse.connect() as con:
        assert not duckdb_warehouse.table_exists(con, "user_features" if as_of else "raw_events")


@pytest.mark.parametrize("variables", [{"as_of_end": NEXT_HOUR}, {"as_of_start": NEXT_YEAR, "as_of_end": NEXT_YEAR}])
def test_dbt_refuses_a_future_as_of_var(duckdb_warehouse, tmp_path, variables):
    from feature_assets.definitions import _dbt_executable
    from feature_assets.project import dbt_project

    project = str(dbt_project.project_dir)
    compiled = subprocess.run(
        [_dbt_executable(), "compile", "--select", "user_features", "--vars", json.dumps(variables),
         "--project-dir", project, "--profiles-dir", project, "--target-path", str(tmp_path / "target")],
        env={**os.environ, **duckdb_warehouse.dbt_env()},
        capture_output=True,
        text=True,
    )
    assert compiled.returncode != 0
    assert f"as-of time '{next(iter(variables.values()))}' is after the current hour" in compiled.stdout

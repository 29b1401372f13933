"""As-of times after the current hour are refused wherever one can be given: CLI, run config, dbt vars."""

import json
import os
import subprocess
from datetime import timedelta

import pytest
from conftest import materialize, write_raw

from feature_assets.as_of import current_hour, format_hour, parse_hour
from feature_assets.errors import ConfigError


def hours_ahead(hours: int) -> str:
    """A future hour, computed when the test runs: the suite may start before an hour (or midnight) and run after."""
    return format_hour(current_hour() + timedelta(hours=hours))


def test_the_current_hour_is_accepted_and_the_next_one_refused_naming_it():
    hour = current_hour()
    next_hour = format_hour(hour + timedelta(hours=1))
    assert parse_hour(format_hour(hour), "as_of_end") == hour
    with pytest.raises(ConfigError, match=f"as_of_end '{next_hour}' is after the current hour {format_hour(hour)}"):
        parse_hour(next_hour, "as_of_end")
    # The time zone is converted first: the next hour at UTC+01:00 is the current hour in UTC.
    assert parse_hour((hour + timedelta(hours=1)).isoformat() + "+01:00", "--as-of") == hour


def test_refresh_refuses_a_future_as_of_time_naming_it(tmp_path, monkeypatch, capsys):
    from feature_assets.cli import main

    monkeypatch.setenv("FEATURE_STORE_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    next_year = hours_ahead(180 * 24)
    assert main(["refresh", "--as-of", next_year]) == 1
    assert f"--as-of '{next_year}' is after the current hour" in capsys.readouterr().err


# Hours ahead of the current one when the test runs; two, not one, so that the hour turning during the run still
# leaves them in the future.
@pytest.mark.parametrize(
    "raw, as_of, refused",
    [
        ({"anchor": 180 * 24}, None, "anchor"),
        (None, {"as_of_end": 2}, "as_of_end"),
        (None, {"as_of_start": 2, "as_of_end": 180 * 24}, "as_of_end"),
    ],
)
def test_run_config_with_a_future_time_fails_naming_it(duckdb_warehouse, raw, as_of, refused):
    raw = raw and {name: hours_ahead(hours) for name, hours in raw.items()}
    as_of = as_of and {name: hours_ahead(hours) for name, hours in as_of.items()}
    message = f"{refused} '{(raw or as_of)[refused]}' is after the current hour"
    if as_of is not None:
        write_raw(duckdb_warehouse, {})  # staging builds; the feature views refuse
    result = materialize(duckdb_warehouse, raw=raw, as_of=as_of)
    assert not result.success
    errors = [event.step_failure_data.error for event in result.all_events if event.is_step_failure]
    assert any(message in (error.cause or error).message for error in errors), errors
    with duckdb_warehouse.connect() as con:
        assert not duckdb_warehouse.table_exists(con, "user_features" if as_of else "raw_events")


@pytest.mark.parametrize("hours", [{"as_of_end": 2}, {"as_of_start": 180 * 24, "as_of_end": 180 * 24}])
def test_dbt_refuses_a_future_as_of_var(duckdb_warehouse, tmp_path, hours):
    from feature_assets.definitions import _dbt_executable
    from feature_assets.settings import dbt_project_dir

    variables = {name: hours_ahead(ahead) for name, ahead in hours.items()}
    project = str(dbt_project_dir())
    compiled = subprocess.run(
        [
            _dbt_executable(),
            "compile",
            "--select",
            "user_features",
            "--vars",
            json.dumps(variables),
            "--project-dir",
            project,
            "--profiles-dir",
            project,
            "--target-path",
            str(tmp_path / "target"),
        ],
        env={**os.environ, **duckdb_warehouse.dbt_env()},
        capture_output=True,
        text=True,
    )
    assert compiled.returncode != 0
    assert f"as-of time '{next(iter(variables.values()))}' is after the current hour" in compiled.stdout

"""The command line at its edges: whatever a user types or whatever fails, the answer is a result or one line
`featurestore: <what and why>` with a non-zero exit, never a traceback."""

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from conftest import ANCHOR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_assets.automation import day_key
from feature_assets.cli import main
from feature_assets.errors import DataError
from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.serving import FolderModelStore, SqliteOnlineStore
from feature_assets.serving.predictor import Predictor
from feature_assets.settings import dbt_manifest_path
from feature_assets.warehouses import DuckDBWarehouse

REGISTRY = load_registry(dbt_manifest_path())
FEATURESTORE = Path(sys.executable).with_name("featurestore")


@pytest.fixture(scope="module")
def store(trained) -> tuple[Path, list[int]]:
    """The trained folder as a FEATURE_STORE_HOME (models/, warehouse.duckdb) with its SQLite online store synced;
    and a few users of the latest snapshot."""
    warehouse, root = trained
    home = root.parent
    with SqliteOnlineStore(home / "online.sqlite") as online:
        for view in REGISTRY.views.values():
            sync_online_store(warehouse, online, view, full_resync=True)
    latest = warehouse.query(
        "select user_id from user_features where computed_at = (select max(computed_at) from user_features) order by "
        "user_id limit 3"
    )
    return home, [int(user) for user in latest["user_id"]]


@pytest.fixture
def home(store, monkeypatch) -> Path:
    home, _ = store
    monkeypatch.setenv("FEATURE_STORE_HOME", str(home))
    for name in ("FEATURE_STORE_ENV", "FEATURE_STORE_ONLINE", "FEATURE_STORE_DEMO_DATA", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, *expected: str) -> str:
    assert code != 0 and "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith("featurestore: ") and len(line) < 600, line
    for part in expected:
        assert part in line
    return line


@pytest.fixture
def warehouse_held_by_another_process(home):
    """A process holding the DuckDB warehouse's lock, as a refresh does while it runs."""
    code = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(home / "warehouse.duckdb")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_ids_parse_strictly_as_the_registry_types_each_key(home, store, capsys):
    _, users = store
    long = "7" * 5_000
    for argv, expected in [
        (["get", "user_features", "١٢٣"], "user_id '١٢٣' is not a bigint"),
        (["get", "user_features", "１２３"], "user_id '１２３' is not a bigint"),
        (["get", "user_features", "²"], "user_id '²' is not a bigint"),
        (["get", "user_features", "--", "--5"], "user_id '--5' is not a bigint"),
        (["get", "user_features", long], f"user_id '{long[:39]}... is outside the range of a bigint"),
        (["get", "user_features", "9223372036854775808"], "is outside the range of a bigint"),
        (
            ["get", "country_features", "\udcff\udcfe"],
            "country_code '\\udcff\\udcfe' holds control characters or undecodable bytes",
        ),
        (["get", "country_features", "D" * 100_000], "is longer than 256 characters"),
        (["predict", "churn", str(users[0]), "１２３"], "user_id '１２３' is not a bigint"),
        (
            ["predict", "churn", str(users[0]), "--key", "country_code=\x1b[31m"],
            "country_code '\\x1b[31m' holds control characters",
        ),
    ]:
        line = assert_one_line(*run(argv, capsys)[::2], expected)
        assert len(line) < 300, "the bad value is echoed cut short"
    # A negative id is a valid bigint: it is looked up, and is not there.
    assert_one_line(*run(["get", "user_features", "-5"], capsys)[::2], "user_id -5 is not in the online store")
    code, out, _ = run(["get", "user_features", str(users[0])], capsys)
    assert code == 0 and f"user_id {users[0]}" in out


def test_the_predictor_parses_ids_in_the_same_one_place(home, store):
    _, users = store
    predictor = Predictor(SqliteOnlineStore(home / "online.sqlite"), FolderModelStore(home / "models"))
    assert (
        predictor.predict_one("churn_model", str(users[0])).score
        == predictor.predict_one("churn_model", users[0]).score
    )
    for bad in ("١٢٣", 2**63, True, "1.0"):
        with pytest.raises(DataError, match=r"user_id .* (is not a bigint|is outside the range)"):
            predictor.predict_one("churn_model", bad)
    with pytest.raises(DataError, match="user_id '１２３' is not a bigint"):
        predictor.predict("churn_model", [users[0], "１２３"])


def test_training_set_shows_the_rows_a_version_was_fitted_on_or_writes_them_to_parquet(home, capsys, tmp_path):
    import pandas as pd

    models = FolderModelStore(home / "models")
    served = models.current("churn_model")
    kept = models.training_set("churn_model")
    code, out, err = run(["training-set", "churn"], capsys)
    assert code == 0 and not err
    first, columns, *table = out.splitlines()
    splits = kept["split"].value_counts()
    assert first == (
        f"churn_model version {served} (served): {len(kept):,} training rows ({splits['fit']:,} fit, "
        f"{splits['validation']:,} validation), {len(kept.columns)} columns, "
        f"{models.card('churn_model').training['bytes']:,} bytes of Parquet, "
        f"sha256 {models.card('churn_model').training['sha256']}"
    )
    assert columns == "columns: " + ", ".join(kept.columns) and len(table) == 6  # a header and the first 5 rows

    written = tmp_path / "churn.parquet"
    code, out, _ = run(["training-set", "churn_model", "--version", served, "--to", str(written)], capsys)
    assert code == 0 and out == f"churn_model version {served}: {len(kept):,} training rows written to {written}\n"
    pd.testing.assert_frame_equal(pd.read_parquet(written), kept)

    card, pipeline = models.load("churn_model")
    models.save(
        replace(card, version="20000101T000000000000Z", training=None), pipeline
    )  # as saved before rows were kept
    for argv, expected in [
        (["training-set", "churn", "--version", "20000101T000000000000Z"], "'20000101T000000000000Z' kept no training"),
        (["training-set", "churn", "--version", "20990101T000000000000Z"], "has no version '20990101T000000000000Z'"),
        (["training-set", "fraud"], "model 'fraud' has no served version in "),
        (["training-set", "churn", "--to", str(tmp_path / "absent" / "x.parquet")], "cannot write "),
    ]:
        assert_one_line(*run(argv, capsys)[::2], expected)


def test_undecodable_bytes_on_the_command_line_are_one_line(home):
    run = subprocess.run([FEATURESTORE, b"get", b"country_features", b"\xff\xfeDE"], capture_output=True, timeout=300)
    err = run.stderr.decode("utf-8", "backslashreplace")
    assert_one_line(
        run.returncode, err, "country_code '\\udcff\\udcfeDE' holds control characters or undecodable bytes"
    )


def test_skew_with_an_unreachable_postgres_is_one_line_without_the_password(home, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE_STORE_ENV", "prod")
    monkeypatch.setenv("FEATURE_STORE_ONLINE", "sqlite")
    monkeypatch.setenv("FEATURE_STORE_POSTGRES_URL", "postgresql://nobody:s3cret@127.0.0.1:1/features")
    line = assert_one_line(
        *run(["skew"], capsys)[::2], "cannot connect to the PostgreSQL warehouse", "Connection refused"
    )
    assert "s3cret" not in line


def test_skew_during_a_refresh_says_the_warehouse_is_held(home, warehouse_held_by_another_process, capsys):
    assert_one_line(*run(["skew"], capsys)[::2], "cannot open the DuckDB warehouse", "Could not set lock")


def test_a_failed_dbt_build_says_why_and_points_to_a_log_that_exists(home, warehouse_held_by_another_process):
    # A process of its own: the definitions resolve FEATURE_STORE_HOME when imported, and this one imported them
    # already.
    day = day_key(ANCHOR - timedelta(days=1))
    argv = [FEATURESTORE, "backfill", "--start", day, "--end", day]
    backfill = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    line = assert_one_line(
        backfill.returncode, backfill.stderr, "the backfill failed: dbt_models: dbt build exited with code"
    )
    assert "Could not set lock" in line
    log = Path(line.rsplit("dbt's log: ", 1)[1].rstrip(")"))
    assert log.is_file()
    shutil.rmtree(log.parent)


RUN_ON_FIRST_OPEN = """
import sys, time
from pathlib import Path
import dagster as dg
from feature_assets.cli_runs import dagster_instance
from feature_assets.settings import Settings

@dg.op
def one():
    return 1

@dg.job
def job():
    one()

while not Path(sys.argv[1]).exists():  # every process imported: start together
    time.sleep(0.001)
print(job.execute_in_process(instance=dagster_instance(Settings.from_env())).success)
"""


def test_a_backfill_shows_each_as_of_day_with_its_own_figures_and_the_run_its_totals_once(store, tmp_path, monkeypatch):
    home, _ = store
    shutil.copyfile(home / "warehouse.duckdb", tmp_path / "warehouse.duckdb")
    shutil.copyfile(home / "demo_first_day", tmp_path / "demo_first_day")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"FEATURE_STORE_HOME": str(tmp_path)}
    # Three weeks back: past the hourly retention, so the thinning keeps each day's first hour only.
    days = [day_key(ANCHOR - timedelta(days=21)), day_key(ANCHOR - timedelta(days=20))]
    argv = [FEATURESTORE, "backfill", "--start", days[0], "--end", days[1]]
    backfill = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert backfill.returncode == 0, backfill.stderr
    warehouse = DuckDBWarehouse(str(tmp_path / "warehouse.duckdb"))
    rows = warehouse.query(
        "select strftime(computed_at, '%Y-%m-%d') as day, count(*) as n from user_features group by 1"
    ).set_index("day")["n"]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    with dg.DagsterInstance.get() as instance:
        [backfill] = instance.get_runs()
        assert backfill.job_name == "backfill_features" and backfill.tags["featurestore/command"] == "backfill"
        assert backfill.tags["featurestore/as_of"] == f"{days[0]} .. {days[1]}"
        # The as-of days are the views' partitions: the asset's Partitions tab shows both materialized.
        assert instance.get_materialized_partitions(dg.AssetKey("user_features")) == set(days)
        for day in days:
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("user_features"), asset_partitions=[day]), limit=2
            ).records
            built = {key: value.value for key, value in record.asset_materialization.metadata.items()}
            assert built["dagster/row_count"] == rows[day] > 0  # that day's rows, not the table's
            assert built["snapshots"] == 1
            assert built["newest_snapshot"] == f"{day} 00:00:00"
            assert built["as_of_times"] == f"{day} 00:00:00 .. {day} 23:00:00: 24 of the view's cadence"
            assert (built["as_of_times_kept"], built["as_of_times_thinned"]) == (1, 23)
            assert not any(key.startswith("run_") for key in built)
        [summary] = [
            e.user_message for e in instance.all_logs(backfill.run_id) if "user_features: built" in e.user_message
        ]
        total = rows[days[0]] + rows[days[1]]
        assert summary == (
            f"user_features: built 2 days ({days[0]} .. {days[1]}): {total:,} rows, 2 snapshots; "
            f"48 as-of times on the view's cadence from {days[0]} 00:00:00 to {days[1]} 23:00:00, of which 46 are "
            "not kept (days past the hourly retention keep only their first hour)."
        )


def test_a_day_before_the_demo_data_is_no_as_of_day_and_cannot_be_backfilled(home, capsys):
    first = (ANCHOR - timedelta(days=299)).date()
    assert (home / "demo_first_day").read_text() == f"{first}\n"
    before = str(first - timedelta(days=1))
    assert_one_line(
        *run(["backfill", "--start", before, "--end", str(first)], capsys)[::2],
        f"the as-of days (the feature views' partitions) begin {first}, where their history does: {before} is before "
        "them",
    )


def test_first_commands_started_together_on_a_fresh_home_all_keep_their_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"FEATURE_STORE_HOME": str(tmp_path / "home")}
    go = tmp_path / "go"
    commands = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ON_FIRST_OPEN, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        go.touch()  # imports take seconds; waiting processes poll the file
        results = [command.communicate(timeout=300) for command in commands]
    finally:
        for command in commands:
            command.kill()
    for command, (out, err) in zip(commands, results):
        assert command.returncode == 0 and out.strip() == "True", err[-2000:]
    os.environ["DAGSTER_HOME"] = str(tmp_path / "home" / "dagster")
    try:
        with dg.DagsterInstance.get() as instance:  # its schema record intact: it opens, and holds every run
            assert len(instance.get_runs()) == 3
    finally:
        del os.environ["DAGSTER_HOME"]


# What a new user might type. Commands that run the pipeline (demo, refresh, train, sync, ...) are left out: they
# take seconds each, and their failures are reported through one path (_execute), tested above.
ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=30),
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=3),  # undecodable bytes
    st.sampled_from(["1", "-1", "DE", "US", "١٢٣", "１２３", "²", "--5", "0x10", "1e3", " 7", "7 ", "\t"]),
)
names = st.one_of(
    st.sampled_from(["user_features", "country_features", "churn", "ltv", "churn_model"]), st.text(max_size=20)
)
arguments = st.one_of(
    st.tuples(st.just("get"), names, ids).map(list),
    st.tuples(st.just("get"), names, ids, st.just("--json")).map(list),
    st.builds(lambda model, first, more: ["predict", model, first, *more], names, ids, st.lists(ids, max_size=3)),
    st.builds(lambda first, name, value: ["predict", "churn", first, "--key", f"{name}={value}"], ids, names, ids),
    st.builds(lambda view, flag: ["skew", "--view", view, *flag], names, st.sampled_from([[], ["--json"]])),
    st.builds(lambda model, version: ["training-set", model, "--version", version], names, ids),
    st.lists(st.text(max_size=12), max_size=4).filter(
        lambda argv: (
            not argv
            or argv[0] not in {"demo", "refresh", "backfill", "train", "sync", "inject-drift", "dev", "serve", "skew"}
        )
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(argv=arguments)
def test_any_arguments_give_an_answer_or_one_line_never_a_traceback(home, capsys, argv):
    code, out, err = run(argv, capsys)
    if code == 0:
        assert out and not err, (argv, err)
    else:
        assert_one_line(code, err)


def test_an_empty_feature_store_home_is_refused_in_one_line_not_taken_for_the_current_folder(monkeypatch, capsys):
    monkeypatch.setenv("FEATURE_STORE_HOME", "")
    assert main(["stop-spark"]) == 1
    assert (
        capsys.readouterr().err
        == "featurestore: FEATURE_STORE_HOME is set but empty: name a folder, or unset it for .featurestore\n"
    )


def test_the_cli_runs_where_os_has_no_sched_getaffinity(monkeypatch, capsys):
    """macOS has no os.sched_getaffinity; the serve command's --workers default must not need it."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert main(["features"]) == 0
    assert "user_features:" in capsys.readouterr().out


def test_a_reader_that_stops_reading_ends_the_command_without_a_traceback(tmp_path):
    """`featurestore features | head -1`: the pipe closes while the command still writes."""
    command = subprocess.run(
        f"{shlex.quote(sys.executable)} -m feature_assets.cli features | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "FEATURE_STORE_HOME": str(tmp_path)},
    )
    assert len(command.stdout) == 10
    assert command.stderr == ""

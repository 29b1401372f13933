"""The examples run as a user runs them, on a built store, and say what they promise."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from feature_assets.online_sync import sync_online_store
from feature_assets.registry import load_registry
from feature_assets.serving import FolderModelStore, SqliteOnlineStore
from feature_assets.settings import dbt_manifest_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_train_your_own_model_fits_saves_promotes_and_serves_in_python_and_over_http(trained, tmp_path):
    warehouse, models = trained
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(warehouse.path, home / "warehouse.duckdb")
    shutil.copytree(models, home / "models")
    with SqliteOnlineStore(home / "online.sqlite") as online:
        for view in load_registry(dbt_manifest_path()).views.values():
            sync_online_store(warehouse, online, view, full_resync=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FEATURE_STORE_", "DAGSTER_"))} | {
        "FEATURE_STORE_HOME": str(home)
    }

    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_your_own_model.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"validation AUC 0\.\d+", done.stdout)
    in_python = re.search(r"in Python: user (\d+) churns with probability ([\d.]+) \(version (\S+)\)", done.stdout)
    assert in_python, done.stdout
    over_http = json.loads(done.stdout.split("over HTTP: ", 1)[1].splitlines()[0])
    assert over_http["entity"]["user_id"] == int(in_python[1])
    assert f"{over_http['score']:.3f}" == in_python[2]
    cli = subprocess.run(
        [Path(sys.executable).with_name("featurestore"), "predict", "churn_forest", in_python[1], "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"{json.loads(cli.stdout)['score']:.3f}" == in_python[2]
    served = FolderModelStore(home / "models")
    assert served.current("churn_forest") == in_python[3]
    assert len(served.training_set("churn_forest")) > 1000

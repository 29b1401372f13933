"""Adding a feature view and a model is YAML and SQL only: a copy of the dbt project gets a second view of the
user entity and a model reading it and an existing view; the definitions, the demo pipeline and predict pick
them up with no Python change. The same steps as the README's "Add your own features"."""

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from conftest import REDIS_URL

from feature_assets.definitions import build_definitions
from feature_assets.settings import Settings, dbt_project_dir

VIEW_SQL = """\
{{ config(unique_key='computed_at', incremental_strategy='delete+insert') }}

with

as_of_times as (
    {{ as_of_times() }}
),

users as (
    select * from {{ ref('stg_app__users') }}
),

orders as (
    select * from {{ ref('stg_app__orders') }}
),

users_at as (
    select users.user_id, as_of_times.computed_at
    from users
    inner join as_of_times
        on users.signup_at < as_of_times.computed_at
        and users.loaded_at <= as_of_times.computed_at
),

orders_30d as (
    select
        orders.user_id,
        as_of_times.computed_at,
        count(*) as orders_30d,
        max(orders.amount) as max_order_30d
    from orders
    inner join as_of_times
        on orders.created_at >= as_of_times.computed_at - interval '30 days'
        and orders.created_at < as_of_times.computed_at
        and orders.loaded_at <= as_of_times.computed_at
    group by orders.user_id, as_of_times.computed_at
),

final as (
    select
        cast(users_at.user_id as bigint) as user_id,
        cast(users_at.computed_at as timestamp) as computed_at,
        cast(coalesce(orders_30d.orders_30d, 0) as integer) as orders_30d,
        cast(orders_30d.max_order_30d as double precision) as max_order_30d
    from users_at
    left join orders_30d
        on orders_30d.user_id = users_at.user_id
        and orders_30d.computed_at = users_at.computed_at
)

select * from final
"""

VIEW_YML = """\
version: 2

models:
  - name: user_order_features
    description: Order features of users, one snapshot per user and as-of time.
    config:
      contract: {enforced: true}
      meta:
        feature_view:
          entity: user
          entity_key: user_id
          timestamp: computed_at
          history_starts: 2025-01-01
          online_ttl_hours: 24
          refresh_hours: 2
    columns:
      - name: user_id
        data_type: bigint
      - name: computed_at
        data_type: timestamp
      - name: orders_30d
        description: Orders in the 30 days before computed_at.
        data_type: integer
      - name: max_order_30d
        description: The largest order amount in the 30 days before computed_at.
        data_type: double precision
"""

MODEL_YML = """
  - name: spend_model
    label: Spend model
    type: ml
    description: Revenue in the next 90 days, from order features and the plan.
    depends_on:
      - ref('ltv_labels')
      - ref('user_order_features')
      - ref('user_features')
    owner:
      name: ML team
    config:
      meta:
        feature_set:
          labels: ltv_labels
          task: regression
          features:
            user_order_features: [orders_30d, max_order_30d]
            user_features: [plan]
"""


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A copy of the dbt project with the new view and model, parsed; and the environment that points at it."""
    root = tmp_path_factory.mktemp("extended")
    project = root / "dbt_features"
    shutil.copytree(dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "models/features/user_order_features.sql").write_text(VIEW_SQL)
    (project / "models/features/user_order_features.yml").write_text(VIEW_YML)
    with (project / "models/ml/models.yml").open("a") as models:
        models.write(MODEL_YML)
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "dbt", "parse", "--quiet", "--profiles-dir", project], cwd=project, check=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FEATURE_STORE_DBT_PROJECT": str(project),
        "FEATURE_STORE_HOME": str(root / "home"),
        "FEATURE_STORE_ONLINE": "redis",
        "FEATURE_STORE_REDIS_URL": REDIS_URL,
    }
    env.pop("DAGSTER_HOME", None)
    return env


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def test_the_definitions_build_the_new_views_pipeline_and_the_new_models(extended):
    # In this process: the definitions are built from the settings' dbt project, read when asked.
    defs = build_definitions(Settings.from_env(extended))
    graph = defs.resolve_asset_graph()
    assets = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {
        "user_order_features",
        "user_order_features_online",
        "user_order_features_skew_report",
        "spend_training_set",
        "spend_model",
    } <= assets
    assert {
        "user_order_features_online:parity",
        "user_order_features_skew_report:no_drift_error",
        "user_order_features_skew_report:no_drift_warning",
        "spend_training_set:no_leakage",
    } <= {key.to_user_string() for key in graph.asset_check_keys}
    groups = {name: graph.get(dg.AssetKey(name)).group_name for name in ("user_order_features", "spend_model")}
    assert groups == {"user_order_features": "features", "spend_model": "models"}
    assert graph.get(dg.AssetKey("user_order_features_online")).group_name == "serving"


def test_the_pipeline_materializes_the_new_view_and_model_on_duckdb_and_predicts_with_them(extended, redis_client):
    # 250 days, not the demo's 300: each as-of day is a partition, whose events cost more than its rows; LTV's labels
    # still leave fit rows an outcome window before the validation ones.
    demo = _run(extended, sys.executable, "-m", "feature_assets.cli", "demo", "--users", "1000", "--days", "250")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "user_order_features_online parity: passed" in demo.stdout
    assert "spend_training_set no_leakage: passed" in demo.stdout
    assert "user_order_features_skew_report no_drift_error: passed" in demo.stdout
    assert "served_models: checkout_model 2" in demo.stdout and "spend_model 2" in demo.stdout, demo.stdout[
        demo.stdout.find("Training:") :
    ]

    # Every view's as-of days (partitions) begin at the demo's first day: none shows as missing.
    defs = build_definitions(Settings.from_env(extended))
    first = (datetime.now(UTC) - timedelta(days=249)).date().isoformat()
    with dg.DagsterInstance.from_config(str(Path(extended["FEATURE_STORE_HOME"]) / "dagster")) as instance:
        for view in ("user_features", "country_features", "user_order_features"):
            days = defs.resolve_assets_def(view).partitions_def.get_partition_keys()
            assert days[0] == first and len(days) == 250
            assert instance.get_materialized_partitions(dg.AssetKey(view)) == set(days), view

    user = int(redis_client.scan_iter("features:user:*").__next__().split(b":")[-1])
    # Two views of one entity, two hashes: the entity's own view and the view-qualified one.
    assert redis_client.hget(f"features:user:{user}", "plan") is not None
    assert redis_client.hget(f"features:user_order_features:{user}", "orders_30d") is not None
    assert redis_client.hget(f"features:user_order_features:{user}", "plan") is None
    assert 0 < redis_client.ttl(f"features:user_order_features:{user}") <= 24 * 3600

    predicted = _run(extended, sys.executable, "-m", "feature_assets.cli", "predict", "spend", str(user), "--json")
    assert predicted.returncode == 0, predicted.stderr
    printed = json.loads(predicted.stdout)
    assert printed["model"] == "spend_model" and isinstance(printed["score"], float)
    assert set(printed["features"]) == {"orders_30d", "max_order_30d", "plan"}
    assert printed["features"]["orders_30d"] == int(
        redis_client.hget(f"features:user_order_features:{user}", "orders_30d")
    )

    features = _run(extended, sys.executable, "-m", "feature_assets.cli", "features")
    assert "user_order_features: entity user (user_id)" in features.stdout
    assert "refreshed every 2 h, online keys features:user_order_features:<user_id>" in features.stdout
    assert "spend_model (regression of ltv_labels.revenue_90d), keys: user_id" in features.stdout

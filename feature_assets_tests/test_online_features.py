"""FeatureStore.online_features: typed online values per entity on every online store, keys derived as serving
derives them, a reason for every missing row, and no Dagster, dbt or warehouse on the way."""

import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from served_models import write_snapshots

from feature_assets import FeatureStore
from feature_assets.errors import InvalidEntity, RegistryError
from feature_assets.registry import load_registry
from feature_assets.serving import SqliteOnlineStore
from feature_assets.settings import dbt_manifest_path

REGISTRY = load_registry(dbt_manifest_path())


def test_online_features_of_a_model_are_the_written_values_with_the_country_derived_from_the_user(online_store):
    written = write_snapshots(online_store, REGISTRY, users=40)
    users, countries = (
        written[name].set_index(key)
        for name, key in [("user_features", "user_id"), ("country_features", "country_code")]
    )
    store = FeatureStore(registry=REGISTRY, online_store=online_store)

    result = store.online_features("churn_model", [{"user_id": 3}, {"user_id": 40}, {"user_id": 999}, {"user_id": 3}])

    assert result["user_id"].tolist() == [3, 40, 999, 3]
    for row, user in ((0, 3), (1, 40), (3, 3)):
        country = users.loc[user, "country"]
        assert result.loc[row, "country_code"] == country  # derived from the user's online country
        for name in ("age", "country", "plan", "events_30d", "avg_order_30d"):
            expected = users.loc[user, name]
            assert (pd.isna(result.loc[row, name]) and pd.isna(expected)) or result.loc[row, name] == expected
        assert result.loc[row, "country_paid_share"] == countries.loc[country, "country_paid_share"]
        assert pd.isna(result.loc[row, "missing"])
    assert result.loc[2, ["age", "country_paid_share"]].isna().all()
    assert result.loc[2, "missing"].startswith("user_features: user_id 999 has no snapshot within its 48 h TTL")
    assert "country_code is derived from user_features.country, which is null" in result.loc[2, "missing"]
    assert str(result["events_30d"].dtype) == "Int64" and str(result["country_paid_share"].dtype) == "Float64"


def test_a_key_the_caller_passes_is_used_and_a_missing_view_row_says_why(online_store):
    write_snapshots(online_store, REGISTRY, users=10)
    store = FeatureStore(registry=REGISTRY, online_store=online_store)
    keys = pd.DataFrame({"user_id": [1, 2], "country_code": ["JP", "XX"]})

    result = store.online_features(["user_features:plan", "country_features:country_users"], keys)

    assert result["country_code"].tolist() == ["JP", "XX"]
    assert result["plan"].notna().all() and pd.notna(result.loc[0, "country_users"])
    assert pd.isna(result.loc[1, "country_users"])
    assert result.loc[1, "missing"].startswith("country_features: country_code XX has no snapshot")


@pytest.mark.parametrize(
    ("features", "entities", "error", "message"),
    [
        (["user_features:agee"], [{"user_id": 1}], RegistryError, "user_features has no feature 'agee'"),
        (["user_features:age"], [{"user_id": "one"}], InvalidEntity, "user_id 'one' is not a bigint"),
        (["user_features:age"], [{"id": 1}], Exception, "no column user_id, the key of user_features"),
        (["user_features:age"], [1, 2], InvalidEntity, "a DataFrame of keys or a list of dicts"),
    ],
)
def test_bad_online_requests_are_refused_by_name(tmp_path, features, entities, error, message):
    with SqliteOnlineStore(tmp_path / "online.sqlite") as online:
        write_snapshots(online, REGISTRY, users=3)
        with pytest.raises(error, match=message):
            FeatureStore(registry=REGISTRY, online_store=online).online_features(features, entities)


def test_online_reads_through_the_store_import_no_dagster_no_dbt_and_no_warehouse(tmp_path):
    with SqliteOnlineStore(tmp_path / "online.sqlite") as online:
        write_snapshots(online, REGISTRY, users=3)
    script = textwrap.dedent(
        """
        import sys
        from feature_assets import FeatureStore
        with FeatureStore() as store:
            frame = store.online_features("churn_model", [{"user_id": 2}])
        assert frame["missing"].isna().all(), frame
        print(sorted(m for m in ("dagster", "dbt", "duckdb", "pyspark") if m in sys.modules))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "FEATURE_STORE_HOME": str(tmp_path), "FEATURE_STORE_ONLINE": "sqlite"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

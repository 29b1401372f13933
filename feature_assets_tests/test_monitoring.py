"""The skew report and its drift checks through Dagster: alerts name the drifted feature; a drift error keeps
the previous model serving."""

import re
from dataclasses import replace

import dagster as dg

from feature_assets.assets.models import model_assets
from feature_assets.assets.monitoring import served_models_asset, skew_report_assets
from feature_assets.assets.training import training_set_assets
from feature_assets.online_sync import iter_latest_snapshots
from feature_assets.registry import load_registry
from feature_assets.scripted_drift import shift_online_feature
from feature_assets.serving import FolderModelStore
from feature_assets.settings import dbt_manifest_path
from feature_assets.skew_reports import latest_report, report_table

REGISTRY = load_registry(dbt_manifest_path())
VIEW, COUNTRIES = REGISTRY.view("user_features"), REGISTRY.view("country_features")
REPORT_TABLE = report_table(VIEW)


def _report(resources, view=VIEW) -> dg.ExecuteInProcessResult:
    report, checks = skew_report_assets(REGISTRY, view)
    return dg.materialize(
        [report, *checks],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        selection=[report.key],
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def test_the_same_distribution_on_both_sides_passes_every_drift_check(monitored):
    warehouse, _, _, resources = monitored
    result = _report(resources)
    checks = _checks(result)
    assert checks["no_drift_error"].passed and checks["no_drift_warning"].passed
    report = warehouse.query(f"select * from {REPORT_TABLE} order by feature")
    assert sorted(report["feature"]) == sorted(VIEW.feature_names)
    assert set(report["severity"]) == {"ok"}
    assert report["serving_source"].str.startswith("online snapshot sample").all()


def test_a_30_percent_shift_in_the_online_store_fails_the_error_check_naming_only_that_feature(monitored):
    warehouse, store, _, resources = monitored
    shift_online_feature(warehouse, store, VIEW, "events_30d", 0.3)
    result = _report(resources)
    error = _checks(result)["no_drift_error"]
    assert not error.passed and error.severity == dg.AssetCheckSeverity.ERROR
    assert error.metadata["drifted_features"].value == "events_30d"
    assert "psi" in error.metadata["events_30d"].value
    with warehouse.connect() as con:
        report = latest_report(warehouse, con, VIEW)
    severities = dict(zip(report["feature"], report["severity"]))
    assert severities.pop("events_30d") == "error"
    assert set(severities.values()) == {"ok"}
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    # Every feature's distributions, drifted or not: one line shown without a click, a plot on one.
    for name in VIEW.feature_names:
        assert metadata[f"histogram_{name}"].value.startswith(f"![{name}](data:image/png;base64,")
        assert metadata[f"shape_{name}"].value.startswith("training ")
    # Each statistic is a number of its own, its series named with the serving side's kind, so the UI plots it
    # over the reports and a change of source starts a new series.
    psi = metadata["psi_events_30d (online snapshot)"]
    assert isinstance(psi, dg.FloatMetadataValue) and psi.value == round(
        report.set_index("feature").loc["events_30d", "psi"], 4
    )
    assert {
        f"mean_shift_{name} (online snapshot)"
        for name in VIEW.feature_names
        if VIEW.feature(name).dtype in ("int64", "float64")
    } <= set(metadata)
    # The report reads in the UI's narrow column: per feature its grade and reasons, then each statistic beside
    # the threshold it is graded against; no "nan".
    lines = metadata["report"].value.splitlines()
    [events] = [line for line in lines if line.startswith("- **events_30d**")]
    reasons = report.set_index("feature").loc["events_30d", "reasons"]
    assert events.startswith(f"- **events_30d**: error ({reasons}). PSI ")
    assert "(warn at 0.1, error at 0.25)" in events and "mean shift " in events and "(warn at 0.1)" in events
    assert "(error at a change of 0.05)" in events
    assert len(lines) == len(VIEW.feature_names) and "nan" not in metadata["report"].value


def test_a_drift_error_holds_promotion_back_in_plain_words_and_the_previous_model_keeps_serving(monitored):
    warehouse, store, models_root, resources = monitored
    models = FolderModelStore(models_root)
    serving_before = models.current("churn_model")
    shift_online_feature(warehouse, store, VIEW, "events_30d", 0.3)

    training_sets, _ = training_set_assets(REGISTRY)
    reports = [skew_report_assets(REGISTRY, view) for view in (VIEW, COUNTRIES)]
    trained_models = model_assets(REGISTRY)
    result = dg.materialize(
        [
            *training_sets,
            *trained_models,
            *(report for report, _ in reports),
            *(check for _, checks in reports for check in checks),
            served_models_asset(REGISTRY, [report for report, _ in reports]),
        ],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    # Held back is not a failure: the run succeeds, the promotion is skipped and says why.
    assert result.success
    materialized = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    assert {"churn_model", "user_features_skew_report"} <= materialized
    assert "served_models" not in materialized
    [held_back] = [
        e.asset_observation_data.asset_observation.metadata["held_back"].value
        for e in result.get_asset_observation_events()
    ]
    assert held_back.startswith("held back: drift error on events_30d (user_features: psi ")
    assert f"churn_model {serving_before}" in held_back.split("; serving ", 1)[1]
    assert models.versions("churn_model")[-1] != serving_before  # a new version was trained ...
    assert models.current("churn_model") == serving_before  # ... and is not served


def test_a_model_under_the_floor_of_its_yaml_fails_its_check_and_only_it_is_held_back(monitored):
    _, _, models_root, resources = monitored
    models = FolderModelStore(models_root)
    churn_before = models.current("churn_model")
    # A floor no model reaches, as a YAML declaring min_validation: {auc: 0.999} gives.
    strict = replace(REGISTRY.feature_set("churn_model"), min_validation=(("auc", 0.999),))
    registry = replace(REGISTRY, feature_sets={**REGISTRY.feature_sets, "churn_model": strict})
    reports = [skew_report_assets(registry, view) for view in (VIEW, COUNTRIES)]
    result = dg.materialize(
        [
            *model_assets(registry),
            *(report for report, _ in reports),
            served_models_asset(registry, [report for report, _ in reports]),
        ],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success
    floors = {check.asset_key.to_user_string(): check for check in result.get_asset_check_evaluations()}
    churn, ltv = models.versions("churn_model")[-1], models.versions("ltv_model")[-1]
    assert not floors["churn_model"].passed and floors["churn_model"].severity == dg.AssetCheckSeverity.ERROR
    assert re.fullmatch(
        f"version {churn} not promoted: validation auc 0\\.\\d{{4}} is under its floor 0\\.999",
        floors["churn_model"].description,
    )
    assert floors["ltv_model"].passed
    served = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["served_models"])
    metadata = served.materialization.metadata
    assert metadata["ltv_model_version"].value == ltv == models.current("ltv_model")
    assert "churn_model_version" not in metadata and models.current("churn_model") == churn_before
    assert metadata["held_back"].value.startswith(f"churn_model {churn}: validation auc ")
    assert metadata["held_back"].value.endswith(f"; serving {churn_before}")


def test_served_vectors_are_the_serving_side_once_there_are_enough(monitored, tmp_path):
    warehouse, _, _, resources = monitored
    assert _report(resources).success  # an earlier report, on the online snapshot
    from feature_assets.serving.served_log import SqliteServedLog

    log = SqliteServedLog(tmp_path / "served_log.sqlite")
    with warehouse.connect() as con:
        latest = next(iter_latest_snapshots(warehouse, con, VIEW))
    for row in latest.to_dict("records"):
        log.log(VIEW.name, VIEW.entity_key, row[VIEW.entity_key], {name: row[name] for name in VIEW.feature_names})
    assert log.flush()
    log.close()
    report, checks = skew_report_assets(REGISTRY, VIEW)
    result = dg.materialize(
        [report, *checks],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {report.op.name: {"config": {"min_served_rows": 100}}}},
        selection=[report.key],
    )
    assert result.success
    source = warehouse.query(f"select serving_source from {REPORT_TABLE} order by report_at desc limit 1")
    assert source["serving_source"].iloc[0] == f"served log ({len(latest)} vectors)"
    # The earlier reports read the online snapshot: the change is said, and plotted as other series.
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["serving_source"].value == (
        f"served log ({len(latest)} vectors); the previous report read the online snapshot: a new plotted series"
    )
    assert "psi_events_30d (served log)" in metadata and "psi_events_30d (online snapshot)" not in metadata


def test_the_country_report_compares_training_with_what_serving_reads_through_each_users_country(monitored):
    warehouse, store, _, resources = monitored
    result = _report(resources, COUNTRIES)
    assert _checks(result)["no_drift_error"].passed
    with warehouse.connect() as con:
        report = latest_report(warehouse, con, COUNTRIES)
    assert sorted(report["feature"]) == sorted(f.name for f in REGISTRY.feature_set("churn_model").reads[1].features)
    users = store.count_entities(VIEW)
    assert (report["serving_source"] == f"online snapshot through user_features.country of {users} users").all()
    assert (report["serving_rows"] == users).all()  # one served vector per user, read through its country
    assert report["notes"].str.contains("PSI not graded: only 7 distinct entities served").all()

    shift_online_feature(warehouse, store, COUNTRIES, "country_paid_share", 0.3)
    checks = _checks(_report(resources, COUNTRIES))
    assert not checks["no_drift_warning"].passed
    assert "country_paid_share" in checks["no_drift_warning"].metadata["drifted_features"].value


def test_the_report_is_requested_after_each_online_sync(tmp_path):
    from feature_assets.definitions import build_definitions
    from feature_assets.settings import Settings

    defs = build_definitions(Settings.from_env({"FEATURE_STORE_HOME": str(tmp_path)}))
    report = dg.AssetKey("user_features_skew_report")
    instance = dg.DagsterInstance.ephemeral()
    for upstream in defs.resolve_asset_graph().get(report).parent_keys:
        instance.report_runless_asset_event(dg.AssetMaterialization(upstream))
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    assert quiet.get_num_requested(report) == 0

    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey("user_features_online")))
    after_sync = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    assert after_sync.get_num_requested(report) == 1


def _serve_checkouts(warehouse, store, models_root, log_path, amount_scale: float) -> None:
    """checkout_model scored for every user of the latest snapshot, every served vector logged. Each user's order is
    their average order times a ratio drawn from the training rows (an amount drawn from them without an average),
    times amount_scale: at 1 the served ratios are distributed as the trained ones."""
    import numpy as np
    import pandas as pd

    from feature_assets.serving.predictor import Predictor
    from feature_assets.serving.served_log import SqliteServedLog

    models = FolderModelStore(models_root)
    kept = models.training_set("checkout_model")
    with warehouse.connect() as con:
        users = next(iter_latest_snapshots(warehouse, con, VIEW))
    # Those who order have a recent average more often than users at large: as many without one as in training.
    null_share = kept["order_to_avg_ratio"].isna().mean()
    without = users["avg_order_30d"].isna().to_numpy()
    keep = round(null_share / (1 - null_share) * (~without).sum())
    users = pd.concat([users[~without], users[without].head(keep)], ignore_index=True)
    rng = np.random.default_rng(0)
    ratios = rng.choice(kept["order_to_avg_ratio"].dropna().to_numpy(), len(users))
    averages = users["avg_order_30d"].astype(float).to_numpy()
    amounts = np.where(np.isnan(averages), rng.choice(kept["order_amount"].to_numpy(), len(users)), averages * ratios)
    entities = pd.DataFrame({"user_id": users[VIEW.entity_key].tolist(), "order_amount": amounts * amount_scale})
    log = SqliteServedLog(log_path)
    scored = Predictor(store, models, served_log=log).predict("checkout_model", entities)
    assert scored["score"].notna().sum() > 100
    assert log.flush()
    log.close()


def test_a_request_time_feature_is_compared_with_what_serving_computed_and_its_drift_named(monitored, tmp_path):
    from feature_assets.resources.served_log import ServedLogResource

    warehouse, store, models_root, resources = monitored
    config = {"min_served_rows": 100}
    for scale, folder in [(1.0, "alike"), (10.0, "shifted")]:
        path = tmp_path / folder / "served_log.sqlite"
        path.parent.mkdir()
        _serve_checkouts(warehouse, store, models_root, path, scale)
        report, checks = skew_report_assets(REGISTRY, VIEW)
        result = dg.materialize(
            [report, *checks],
            resources={**resources, "served_log": ServedLogResource(kind="sqlite", sqlite_path=str(path))},
            instance=dg.DagsterInstance.ephemeral(),
            run_config={"ops": {report.op.name: {"config": config}}},
            raise_on_error=False,
        )
        with warehouse.connect() as con:
            rows = latest_report(warehouse, con, VIEW).set_index("feature")
        ratio = rows.loc["order_to_avg_ratio"]
        assert ratio["training_source"] == "checkout_training_set"
        assert ratio["serving_source"].startswith("served log")
        # Only checkout_model's vectors were served: the features it does not read are not compared as nulls.
        assert "age" not in rows.index
        error = _checks(result)["no_drift_error"]
        if scale == 1.0:
            assert ratio["severity"] != "error", ratio["reasons"]
        else:
            assert ratio["severity"] == "error" and not error.passed
            assert "order_to_avg_ratio" in error.description

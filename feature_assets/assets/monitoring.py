"""Train/serve skew: the report comparing what models were trained on with what serving sees, its drift checks
(the alerts), and the promotion of newly trained models, which a drift error blocks."""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from feature_assets.assets.online import online_asset_name
from feature_assets.assets.raw import WAREHOUSE_POOL
from feature_assets.automation import SKEW_REPORT_AUTOMATION, SKEW_REPORT_FRESHNESS
from feature_assets.errors import FeatureStoreError
from feature_assets.online_sync import iter_latest_snapshots
from feature_assets.registry import FeatureSet, FeatureView, Registry, snapshot_column
from feature_assets.resources.model_store import ModelStoreResource
from feature_assets.resources.online import OnlineStoreResource
from feature_assets.resources.served_log import ServedLogResource
from feature_assets.serving.model_store import ModelStore
from feature_assets.serving.reads import MISSING, FeatureReader
from feature_assets.skew import DriftThresholds, skew_report
from feature_assets.skew_histograms import histogram_markdown, histogram_sparkline
from feature_assets.skew_reports import drift_errors, features_at, latest_report, report_table, training_sources
from feature_assets.training import with_request_features
from feature_assets.warehouses import Warehouse

__all__ = [
    "SkewReportConfig",
    "served_models_asset",
    "skew_report_assets",
    "skew_report_name",
]
_REPORT_COLUMNS = {
    "report_at": "timestamp",
    "feature": "varchar",
    "dtype": "varchar",
    "kind": "varchar",
    "training_source": "varchar",
    "serving_source": "varchar",
    "training_rows": "bigint",
    "serving_rows": "bigint",
    "training_null_rate": "double precision",
    "serving_null_rate": "double precision",
    "null_rate_change": "double precision",
    "training_mean": "double precision",
    "serving_mean": "double precision",
    "mean_shift": "double precision",
    "psi": "double precision",
    "ks": "double precision",
    "largest_frequency_change": "double precision",
    "largest_change_category": "varchar",
    "severity": "varchar",
    "reasons": "varchar",
    "notes": "varchar",
}


class SkewReportConfig(dg.Config):
    min_served_rows: int = Field(
        default=500,
        description="Compare against the logged served vectors when at least this many; else the online snapshot.",
    )
    serving_sample: int = Field(default=20_000, description="Entities sampled from the online snapshot (fallback).")
    served_rows: int = Field(default=50_000, description="Most recent served vectors read from the log.")
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per-feature overrides, e.g. {'events_30d': {'error_psi': 0.4}}; keys: warn_mean_shift, warn_psi, "
        "error_psi, error_null_rate_change. Defaults: warn at 10% mean shift or PSI 0.1, error at PSI 0.25 or 5 points "
        "of null rate.",
    )


def skew_report_name(view: FeatureView) -> str:
    return f"{view.name}_skew_report"


def _training_values(warehouse: Warehouse, registry: Registry, view: FeatureView) -> dict[str, tuple[pd.Series, str]]:
    """Per feature of the view that models read: its values in the rows those models were trained on (the union of
    the training sets that read it, rows that matched a snapshot of the view), and which training sets those are.
    Also each request-time feature of a model whose first caller key is the view's (the served log keeps it with
    this view's vectors): computed from its training set's rows that matched every view, as the model was trained."""
    values: dict[str, list[pd.Series]] = {}
    sources: dict[str, list[str]] = {}
    with warehouse.connect() as con:
        for feature_set in registry.feature_sets.values():
            read = next((read for read in feature_set.reads if read.view.name == view.name), None)
            table = feature_set.training_set
            if read is None or not warehouse.table_exists(con, table):
                continue
            names = [f.name for f in read.features]
            frame = warehouse.fetch(
                con, f"select {', '.join(names)} from {table} where {snapshot_column(view)} is not null"
            )
            for name in names:
                values.setdefault(name, []).append(frame[name])
                sources.setdefault(name, []).append(table)
            if feature_set.request_features and _logs_request_features(feature_set, view):
                for name, computed in _request_feature_values(warehouse, con, feature_set).items():
                    values.setdefault(name, []).append(computed)
                    sources.setdefault(name, []).append(table)
    ordered = [
        *(name for name in view.feature_names if name in values),
        *(n for n in values if n not in view.feature_names),
    ]
    return {name: (pd.concat(values[name], ignore_index=True), " + ".join(sources[name])) for name in ordered}


def _logs_request_features(feature_set: FeatureSet, view: FeatureView) -> bool:
    """Whether serving logs the model's request-time features with this view's vectors (the first caller-key view)."""
    first = next(read for read in feature_set.reads if read.derived_from is None)
    return first.view.name == view.name


def _request_feature_values(warehouse: Warehouse, con: Any, feature_set: FeatureSet) -> dict[str, pd.Series]:
    complete = " and ".join(f"{snapshot_column(v)} is not null" for v in feature_set.views)
    columns = [*feature_set.feature_names, *(f.name for f in feature_set.request)]
    rows = warehouse.fetch(con, f"select {', '.join(columns)} from {feature_set.training_set} where {complete}")
    computed = with_request_features(feature_set, rows)
    return {f.name: computed[f.name] for f in feature_set.request_features}


def _feature_dtype(registry: Registry, view: FeatureView, name: str) -> str:
    if name in view.feature_names:
        return view.feature(name).dtype
    return next(f.dtype for fs in registry.feature_sets.values() for f in fs.request_features if f.name == name)


def _serving_of(registry: Registry, view: FeatureView, serving: pd.DataFrame, name: str) -> pd.DataFrame:
    """The serving rows that carry feature `name`. Served vectors hold what their model read of the view (and the
    request-time features it computed): those of models that read `name` from the view or compute it, and, for a
    stored feature, those of no declared model (plain online reads, models saved from a notebook). Another model's
    vectors lack it, and would count as nulls. An online snapshot sample carries every stored feature and no
    request-time one."""
    request = {f.name for fs in registry.feature_sets.values() for f in fs.request_features} - set(view.feature_names)
    if "model" not in serving.columns or name not in serving.columns:
        return serving.iloc[0:0] if name in request or name not in serving.columns else serving
    readers = [
        fs.model
        for fs in registry.feature_sets.values()
        if any(read.view.name == view.name and name in (f.name for f in read.features) for read in fs.reads)
        or (name in (f.name for f in fs.request_features) and _logs_request_features(fs, view))
    ]
    models = serving["model"]
    keep = models.isin(readers)
    if name not in request:
        keep |= models.isna() | ~models.isin(list(registry.feature_sets))
    return serving[keep.to_numpy(dtype=bool, na_value=False)]


def _serving_rows(
    config: SkewReportConfig,
    registry: Registry,
    warehouse: Warehouse,
    online_store: OnlineStoreResource,
    served_log: ServedLogResource,
    view: FeatureView,
) -> tuple[pd.DataFrame, str]:
    """The logged served vectors when there are enough, else what serving would read now for a sample of the
    entities models score: the view's own entities, or, when a model derives the view's key from another view's
    feature (a user's country), that view's entities, each read through its derived key."""
    with served_log.open() as log:
        served = log.read(view.name, limit=config.served_rows)
    if len(served) >= config.min_served_rows:
        return served, f"served log ({len(served)} vectors)"
    derived = next(
        (
            read.derived_from
            for fs in registry.feature_sets.values()
            for read in fs.reads
            if read.view == view and read.derived_from
        ),
        None,
    )
    scored = registry.view(derived[0]) if derived else view
    with warehouse.connect() as con:
        ids = pd.concat(iter_latest_snapshots(warehouse, con, scored, sample=config.serving_sample), ignore_index=True)[
            scored.entity_key
        ].tolist()
    with online_store.open() as store:
        if derived:
            keys = FeatureReader(store, scored).get_online_features(ids, [derived[1]])[derived[1]]
            keys = keys[keys.notna()].tolist()
            online = FeatureReader(store, view).get_online_features(keys)
            source = f"online snapshot through {'.'.join(derived)} of {len(ids)} {scored.entity}s"
        else:
            online = FeatureReader(store, view).get_online_features(ids)
            source = f"online snapshot sample ({len(ids)} entities)"
    return online[~online[MISSING]], source


def _thresholds(config: SkewReportConfig) -> DriftThresholds:
    return DriftThresholds.from_config({"features": config.thresholds})


def _serving_kind(serving_source: str) -> str:
    """The kind of serving sample, part of each plotted series' name: a change of kind starts a new series instead
    of looking like drift (the served log and an online-snapshot sample differ in who is in them)."""
    return "served log" if serving_source.startswith("served log") else "online snapshot"


def _number(value: Any) -> str:
    return "n/a" if pd.isna(value) else f"{value:.4f}"


def _report_markdown(report: pd.DataFrame, thresholds: DriftThresholds) -> dg.MetadataValue:
    """One item per feature, errors then warnings first, wrapping to the width of the UI's metadata column: its grade
    and reasons, then each statistic next to the threshold it is graded against (a table of every column is cut
    off)."""
    lines = []
    rank = {"error": 0, "warn": 1}
    for row in sorted(report.to_dict("records"), key=lambda row: rank.get(row["severity"], 2)):
        limits = thresholds.for_feature(row["feature"])
        grade = f"**{row['feature']}**: {row['severity']}" + (f" ({row['reasons']})" if row["reasons"] else "")
        statistics = [
            f"PSI {_number(row['psi'])} (warn at {limits.warn_psi:g}, error at {limits.error_psi:g})",
            f"null rate {_number(row['training_null_rate'])} -> {_number(row['serving_null_rate'])} "
            f"(error at a change of {limits.error_null_rate_change:g})",
        ]
        if row["kind"] == "numeric":
            statistics += [
                f"mean shift {_number(row['mean_shift'])} (warn at {limits.warn_mean_shift:g})",
                f"KS {_number(row['ks'])} (not graded)",
            ]
        elif pd.notna(row["largest_frequency_change"]):
            statistics.append(
                f"largest share change {_number(row['largest_frequency_change'])} for "
                f"{row['largest_change_category']} (not graded)"
            )
        note = f"; note: {row['notes']}" if row["notes"] else ""
        lines.append(f"- {grade}. " + " · ".join(statistics) + note)
    return dg.MetadataValue.md("\n".join(lines))


def _check_result(
    report: pd.DataFrame, severities: tuple[str, ...], severity: dg.AssetCheckSeverity
) -> dg.AssetCheckResult:
    drifted = features_at(report, severities)
    metadata: dict[str, Any] = {
        "report_at": str(report["report_at"].iloc[0]) if len(report) else "no report",
        "drifted_features": ", ".join(drifted["feature"]) or "none",
    }
    for row in drifted.to_dict("records"):
        metadata[row["feature"]] = f"{row['severity']}: {row['reasons']}"
    # The description is what alerts quote: each drifted feature with the statistic over its threshold.
    description = (
        "; ".join(f"drift on {row['feature']}: {row['reasons']}" for row in drifted.to_dict("records")) or "no drift"
    )
    return dg.AssetCheckResult(passed=drifted.empty, severity=severity, metadata=metadata, description=description)


def skew_report_assets(
    registry: Registry, view: FeatureView
) -> tuple[dg.AssetsDefinition, list[dg.AssetChecksDefinition]]:
    """The view's skew report, with its drift checks; built from the registry entry."""
    training_sets = [fs.training_set for fs in registry.feature_sets.values() if view in fs.views]

    @dg.asset(
        name=skew_report_name(view),
        deps=[online_asset_name(view), *training_sets],
        group_name="monitoring",
        kinds={"python"},
        pool=WAREHOUSE_POOL,
        freshness_policy=SKEW_REPORT_FRESHNESS,
        automation_condition=SKEW_REPORT_AUTOMATION,
        description=(
            f"Per feature of {view.name}: training vs serving distributions (mean shift, PSI, KS, null rates), one row "
            f"per feature per report in the warehouse table {report_table(view)}."
        ),
    )
    def report_asset(
        config: SkewReportConfig,
        warehouse: dg.ResourceParam[Warehouse],
        online_store: OnlineStoreResource,
        served_log: ServedLogResource,
    ) -> dg.MaterializeResult:
        training = _training_values(warehouse, registry, view)
        if not training:
            raise dg.Failure(f"no training set of {view.name} exists yet; materialize the training sets first")
        serving, serving_source = _serving_rows(config, registry, warehouse, online_store, served_log, view)
        if serving.empty:
            raise dg.Failure(
                f"nothing to compare: no served vectors logged and no {view.name} entity in the online store"
            )
        entities = serving[view.entity_key].nunique() if view.entity_key in serving.columns else None
        # Feature by feature: each against the training sets that read it (models may read different features).
        reports, unserved = [], []
        for name, (values, source) in training.items():
            served = _serving_of(registry, view, serving, name)
            if served.empty:
                unserved.append(name)  # a request-time feature, seen only in served vectors
                continue
            one = skew_report(
                values.to_frame(name),
                served,
                [(name, _feature_dtype(registry, view, name))],
                _thresholds(config),
                serving_entities=entities,
            )
            one["training_source"] = source
            reports.append(one)
        report = pd.concat(reports, ignore_index=True)
        report.insert(0, "report_at", datetime.now(UTC).replace(tzinfo=None))
        report["serving_source"] = serving_source
        kind = _serving_kind(serving_source)
        with warehouse.connect() as con:
            previous = (
                latest_report(warehouse, con, view)["serving_source"]
                if warehouse.table_exists(con, report_table(view))
                else pd.Series(dtype=object)
            )
            warehouse.append(con, report_table(view), report, _REPORT_COLUMNS)
        drifted = features_at(report, ("warn", "error"))["feature"]
        source_note = serving_source
        if len(previous) and _serving_kind(previous.iloc[0]) != kind:
            source_note += f"; the previous report read the {_serving_kind(previous.iloc[0])}: a new plotted series"
        metadata: dict[str, Any] = {
            "report": _report_markdown(report, _thresholds(config)),
            "drifted_features": ", ".join(drifted) or "none",
            "training_source": training_sources(report),
            "serving_source": source_note,
            "unused_features": ", ".join(name for name in view.feature_names if name not in training) or "none",
        }
        if unserved:
            metadata["features_not_compared"] = (
                f"{', '.join(unserved)}: no serving values (a request-time feature is seen only in served vectors)"
            )
        # One number per feature and statistic, its series named with the serving side's kind: the asset's plots
        # show each one's drift over time, and a change of serving source starts a new series, not a jump.
        for row in report.to_dict("records"):
            for statistic in ("psi", "mean_shift", "null_rate_change"):
                if pd.notna(row[statistic]):
                    metadata[f"{statistic}_{row['feature']} ({kind})"] = round(float(row[statistic]), 4)
        # Every feature's distributions, training against serving: one line shown at once, a plot on a click.
        for name in training:
            if name in unserved:
                continue
            dtype = _feature_dtype(registry, view, name)
            values = _serving_of(registry, view, serving, name)[name]
            metadata[f"shape_{name}"] = histogram_sparkline(training[name][0], values, name, dtype)
            metadata[f"histogram_{name}"] = dg.MetadataValue.md(
                histogram_markdown(training[name][0], values, name, dtype)
            )
        return dg.MaterializeResult(metadata=metadata)

    limits = DriftThresholds()

    @dg.asset_check(
        asset=report_asset,
        name="no_drift_error",
        description="Holds back promotion (the run goes on: Dagster calls such a check non-blocking): fails (ERROR, "
        "and alerts) when a feature's PSI reaches "
        f"{limits.error_psi:g} or its null rate changes by {limits.error_null_rate_change:g} or more (defaults; the "
        "report's config may set them per feature). While it fails, served_models promotes no newly trained model "
        "and the previous versions keep serving.",
    )
    def no_drift_error(warehouse: dg.ResourceParam[Warehouse]) -> dg.AssetCheckResult:
        with warehouse.connect() as con:
            return _check_result(latest_report(warehouse, con, view), ("error",), dg.AssetCheckSeverity.ERROR)

    @dg.asset_check(
        asset=report_asset,
        name="no_drift_warning",
        description=f"Warns when a feature's PSI reaches {limits.warn_psi:g} or its mean moves by "
        f"{limits.warn_mean_shift:g} of the training scale (max of |mean| and standard deviation) (defaults). A "
        "warning is shown here only: it neither alerts nor holds back promotion.",
    )
    def no_drift_warning(warehouse: dg.ResourceParam[Warehouse]) -> dg.AssetCheckResult:
        with warehouse.connect() as con:
            return _check_result(latest_report(warehouse, con, view), ("warn", "error"), dg.AssetCheckSeverity.WARN)

    return report_asset, [no_drift_error, no_drift_warning]


def served_models_asset(registry: Registry, report_assets: list[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    models = list(registry.feature_sets)
    views = registry.read_views

    @dg.asset(deps=[*models, *report_assets], group_name="models", kinds={"python"}, output_required=False)
    def served_models(
        context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[Warehouse], model_store: ModelStoreResource
    ):
        """Each model's newest trained version becomes the one predict serves, unless a skew report grades a drift
        error (then nothing is promoted: the asset is skipped, not failed) or its validation metrics miss the floors
        its YAML declares (then that model's previous version keeps serving); what was held back, and why, is said
        in an observation and the run's log."""
        errors = drift_errors(warehouse, views)
        with model_store.store() as store:
            if errors:
                serving = ", ".join(f"{model} {_served_version(store, model)}" for model in models)
                reason = f"held back: drift error on {'; '.join(errors)}; serving {serving}"
                context.log.warning(reason)
                yield dg.AssetObservation(asset_key=context.asset_key, metadata={"held_back": reason})
                return
            promoted, held_back = {}, []
            for model in models:
                versions = store.versions(model)
                if not versions:
                    continue
                shortfalls = registry.feature_sets[model].validation_shortfalls(store.card(model, versions[-1]).metrics)
                if shortfalls:
                    held_back.append(
                        f"{model} {versions[-1]}: {'; '.join(shortfalls)}; serving {_served_version(store, model)}"
                    )
                    continue
                store.promote(model, versions[-1])
                promoted[model] = versions[-1]
        for reason in held_back:
            context.log.warning(f"held back: {reason}")
        if not promoted:
            yield dg.AssetObservation(asset_key=context.asset_key, metadata={"held_back": "; ".join(held_back)})
            return
        metadata: dict[str, Any] = {f"{model}_version": version for model, version in promoted.items()}
        if held_back:
            metadata["held_back"] = "; ".join(held_back)
        yield dg.MaterializeResult(metadata=metadata)

    return served_models


def _served_version(store: ModelStore, model: str) -> str:
    try:
        return store.current(model)
    except FeatureStoreError:
        return "no version yet"

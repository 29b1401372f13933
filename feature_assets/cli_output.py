"""What the command line prints: the demo's summary, predictions, skew reports and online values next to offline ones,
as tables for a person or JSON for a program."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from feature_assets.errors import FeatureStoreError, RegistryError
from feature_assets.settings import Settings

if TYPE_CHECKING:
    from feature_assets.registry import Registry
    from feature_assets.warehouses import Warehouse

__all__ = [
    "json_value",
    "monitored_views",
    "print_online_next_to_offline",
    "print_prediction",
    "print_skew",
    "print_summary",
    "print_training_set",
    "read_registry",
    "warehouse_of",
]


def read_registry() -> "Registry":
    """The registry of the dbt project's manifest (FEATURE_STORE_DBT_PROJECT, or the packaged one)."""
    from feature_assets.registry import load_registry
    from feature_assets.settings import dbt_manifest_path

    return load_registry(dbt_manifest_path())


def served_model_name(settings: Settings, name: str) -> str:
    """The model `name` names: a declared one (also without its _model suffix), or one saved from Python with a
    served version; else the error listing both."""
    from feature_assets.backends import open_model_store

    registry = read_registry()
    try:
        return registry.feature_set(name).model
    except RegistryError as error:
        with open_model_store(settings) as models:
            saved = [model for model in models.served_models() if model not in registry.feature_sets]
        if name in saved:
            return name
        raise RegistryError(f"{error}; served from Python: {', '.join(saved) or 'none'}") from None


def warehouse_of(settings: Settings) -> "Warehouse":
    """The warehouse outside a run, its URL read from the environment."""
    from feature_assets.backends import open_warehouse

    return open_warehouse(settings)


def print_summary(settings: Settings) -> None:
    from feature_assets.demo_data import RAW_TABLES

    registry = read_registry()
    warehouse = warehouse_of(settings)
    with warehouse.connect() as con:
        tables = [table for table in (*RAW_TABLES, *registry.views) if warehouse.table_exists(con, table)]
        counts = pd.concat(
            warehouse.fetch(con, f"select '{table}' as table_name, count(*) as row_count from {table}")
            for table in tables
        )
        print("\nRow counts:")
        print(counts.to_string(index=False))
        for view in registry.views.values():
            if view.name not in tables:
                continue
            stamp = view.timestamp
            row = warehouse.fetch(
                con,
                f"select count(distinct {stamp}) as n, min({stamp}) as first, max({stamp}) as last from {view.name}",
            ).iloc[0]
            latest = warehouse.fetch(
                con,
                f"select * from {view.name} where {stamp} = (select max({stamp}) from {view.name})"
                f" order by {view.entity_key} limit 5",
            )
            print(
                f"\n{view.name} ({view.entity} features): {row['n']} snapshots from {row['first']} to {row['last']};"
                f" latest, first {view.entity_key}s:"
            )
            print(latest.to_string(index=False))


def print_prediction(
    settings: Settings,
    model: str,
    entities: list[str],
    keys: dict[str, str],
    as_json: bool,
    request: dict[str, str] | None = None,
) -> None:
    """Scores the entities (the request fields sent with each) and prints the scores, or the one prediction."""
    from feature_assets.backends import open_model_store, open_online_store, open_served_log
    from feature_assets.serving.predictor import Predictor

    with open_online_store(settings) as store, open_served_log(settings) as log, open_model_store(settings) as models:
        predictor = Predictor(store, models, served_log=log)
        caller = predictor.entity_keys(model)
        declared = [field["name"] for field in predictor.served_card(model).request]
        unknown = [name for name in request or {} if name not in declared]
        if unknown:
            raise FeatureStoreError(
                f"{model} takes no request field {', '.join(unknown)}; "
                f"its request fields: {', '.join(declared) or 'none'}"
            )
        positional = [key for key in caller if key not in keys]
        if len(positional) != 1:
            raise FeatureStoreError(
                f"{model} needs the keys {', '.join(caller)}: "
                "pass ids for one of them and --key NAME=VALUE for the others"
            )
        if len(entities) > 1:
            frame = pd.DataFrame({positional[0]: entities, **keys, **(request or {})}, dtype=object)
            scored = predictor.predict(model, frame)
            if as_json:
                print(scored.astype(object).where(scored.notna(), None).to_json(orient="records", indent=2))
            else:
                print(scored.to_string(index=False))
            if scored["error"].notna().all():
                raise FeatureStoreError("no prediction: every entity is missing from the online store")
            return
        prediction = predictor.predict_one(model, {positional[0]: entities[0], **keys, **(request or {})})
        computed = {f["name"] for f in predictor.served_card(model).request_features}
    if as_json:
        print(
            json.dumps(
                {
                    "entity": {k: json_value(v) for k, v in prediction.entity.items()},
                    "model": model,
                    "version": prediction.version,
                    "score": prediction.score,
                    "features": {k: json_value(v) for k, v in prediction.features.items()},
                },
                indent=2,
            )
        )
        return
    described = ", ".join(f"{key} {value}" for key, value in prediction.entity.items())
    print(f"{model} version {prediction.version}, {described}: score {prediction.score:.4f}")
    print(
        "  from online features: " + ", ".join(f"{k}={v}" for k, v in prediction.features.items() if k not in computed)
    )
    if computed:
        sent = ", ".join(f"{k}={v}" for k, v in (request or {}).items())
        values = ", ".join(f"{k}={v}" for k, v in prediction.features.items() if k in computed)
        print(f"  computed at request time (from {sent}): {values}")


def print_training_set(settings: Settings, model: str, version: str | None, to: str | None) -> None:
    """The training rows kept with a version (default: the served one): a summary and the first rows, or all of them
    written to a Parquet file."""
    from feature_assets.backends import open_model_store

    with open_model_store(settings) as models:
        card = models.card(model, version)
        rows = models.training_set(model, card.version)
    named = f"{model} version {card.version}" + (" (served)" if version is None else "")
    if to is not None:
        try:
            rows.to_parquet(Path(to), index=False)
        except OSError as error:
            raise FeatureStoreError(f"cannot write {to}: {error.strerror or error}") from None
        print(f"{named}: {len(rows):,} training rows written to {to}")
        return
    assert card.training is not None  # training_set refuses a version that kept none
    splits = rows["split"].value_counts(sort=False).to_dict() if "split" in rows else {}
    counted = ", ".join(f"{count:,} {split}" for split, count in splits.items())
    print(
        f"{named}: {len(rows):,} training rows ({counted or 'no split'}), {len(rows.columns)} columns, "
        f"{card.training['bytes']:,} bytes of Parquet, sha256 {card.training['sha256']}"
    )
    print("columns: " + ", ".join(map(str, rows.columns)))
    print(rows.head(5).to_string(index=False))


def monitored_views(view_name: str | None):
    registry = read_registry()
    views = registry.read_views
    if view_name is None:
        return views
    view = registry.view(view_name)
    if view not in views:
        raise FeatureStoreError(f"no model reads {view.name}, so it has no skew report")
    return [view]


def print_skew(settings: Settings, view_name: str | None, as_json: bool) -> None:
    from feature_assets.skew_reports import latest_report, report_table, training_sources

    warehouse = warehouse_of(settings)
    reports = []
    with warehouse.connect() as con:
        for view in monitored_views(view_name):
            if not warehouse.table_exists(con, report_table(view)):
                raise FeatureStoreError(
                    f"no skew report of {view.name} yet; run `featurestore skew --refresh` (or `featurestore train`)"
                )
            reports.append((view, latest_report(warehouse, con, view)))
    if as_json:
        print(
            json.dumps(
                {
                    view.name: json.loads(
                        report.astype(object).where(report.notna(), None).to_json(orient="records", date_format="iso")
                    )
                    for view, report in reports
                },
                indent=2,
            )
        )
        return
    columns = [
        "feature",
        "severity",
        "mean_shift",
        "psi",
        "ks",
        "null_rate_change",
        "largest_change_category",
        "reasons",
        "notes",
    ]
    for view, report in reports:
        first = report.iloc[0]
        print(
            f"Skew report of {view.name}, {first['report_at']}: training = {training_sources(report)}; "
            f"serving = {first['serving_source']}"
        )
        print(report[columns].round(4).to_string(index=False))


def print_online_next_to_offline(settings: Settings) -> dict[str, object]:
    """Per view, its first entity of the latest snapshot, offline and online side by side; returns those ids."""
    from feature_assets.backends import open_online_store
    from feature_assets.serving import FeatureReader

    shown = {}
    with open_online_store(settings) as store:
        for view in read_registry().views.values():
            offline = warehouse_of(settings).query(
                f"select * from {view.name} where {view.timestamp} = (select max({view.timestamp}) from {view.name}) "
                f"order by {view.entity_key} limit 1"
            )
            if offline.empty:
                continue
            entity_id = offline[view.entity_key].iloc[0]
            entity_id = entity_id.item() if hasattr(entity_id, "item") else entity_id
            online = FeatureReader(store, view).get_entity(entity_id)
            fields = [view.timestamp, *view.feature_names]
            table = pd.DataFrame(
                {
                    "offline (latest snapshot)": [offline[f].iloc[0] for f in fields],
                    "online": [online[f] for f in fields],
                },
                index=fields,
            )
            print(
                f"\n{view.name}, {view.entity_key} {entity_id} ({store.key_of(view, entity_id)}), offline and online:"
            )
            print(table.to_string())
            shown[view.name] = entity_id
    return shown


def json_value(value: object) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value

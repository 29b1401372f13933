"""The `featurestore` command line."""

import argparse
import json
import os
import re
import signal
import sys
from datetime import datetime, time, timedelta
from pathlib import Path

import pandas as pd

from feature_assets import cli_output, cli_runs
from feature_assets.as_of import current_hour, format_hour, parse_day, parse_hour
from feature_assets.errors import ConfigError, FeatureStoreError, shown
from feature_assets.settings import Settings

__all__ = ["main"]


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    anchor = current_hour()
    # Not before the as-of days: a store that has demo data keeps its first day (new --days apply to a new store).
    start = max(anchor - timedelta(days=args.days - 1), datetime.combine(cli_runs.first_as_of_day(settings), time()))
    print(
        f"Generating {args.users} users over {args.days} days and backfilling snapshots up to {format_hour(anchor)} ..."
    )
    raw = {"users": args.users, "days": args.days, "seed": args.seed, "anchor": format_hour(anchor)}
    cli_runs.build_snapshots(settings, "refresh run", "refresh_features", (start.date(), anchor.date()), raw=raw)
    cli_output.print_summary(settings)
    cli_runs.sync_online(settings)
    entities = cli_output.print_online_next_to_offline(settings)
    promoted = cli_runs.train(settings)
    registry = cli_output.read_registry()
    for model in registry.feature_sets.values() if promoted else ():
        entity = entities.get(model.reads[0].view.name)
        if entity is not None and len(model.caller_keys) == 1:
            print()
            if model.request:
                fields = " ".join(f"--request {field.name}=<{field.dtype}>" for field in model.request)
                print(f"{model.model} scores with request fields: featurestore predict {model.model} {entity} {fields}")
                continue
            cli_output.print_prediction(settings, model.model, [str(entity)], {}, as_json=False)
    print()
    cli_output.print_skew(settings, None, as_json=False)


def cmd_get(args: argparse.Namespace, settings: Settings) -> None:
    from feature_assets.backends import open_online_store
    from feature_assets.serving import FeatureReader
    from feature_assets.serving.codec import parse_entity_id

    view = cli_output.read_registry().view(args.view)
    entity_id = parse_entity_id(args.entity_id, view.key_data_type, view.entity_key)
    with open_online_store(settings) as store:
        row = FeatureReader(store, view).get_entity(entity_id)
        where = store.describe()
    if args.json:
        print(json.dumps({name: cli_output.json_value(value) for name, value in row.items()}, indent=2))
    elif not row["_missing"]:
        dtypes = {view.timestamp: "timestamp", **{f.name: f.dtype for f in view.features}}
        table = pd.DataFrame(
            [(name, dtypes[name], row[name]) for name in dtypes], columns=["feature", "dtype", "value"]
        )
        print(f"{view.name}, {view.entity_key} {entity_id} ({where}):")
        print(table.to_string(index=False))
    if row["_missing"]:
        ttl_hours = view.online_ttl / timedelta(hours=1)
        raise FeatureStoreError(
            f"{view.entity_key} {entity_id} is not in the online store of {view.name} "
            f"(never synced, or expired after the {ttl_hours:g} h TTL)"
        )


def _key_values(pairs: list[str], option: str = "--key", example: str = "country_code=DE") -> dict[str, str]:
    keys = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise FeatureStoreError(f"{option} takes NAME=VALUE, e.g. {option} {example}; got {shown(pair)}")
        keys[name] = value
    return keys


def cmd_predict(args: argparse.Namespace, settings: Settings) -> None:
    model = cli_output.served_model_name(settings, args.model)
    request = _key_values(args.request, "--request", "order_amount=25")
    cli_output.print_prediction(
        settings, model, args.entity_ids, _key_values(args.key), as_json=args.json, request=request
    )


def cmd_train(args: argparse.Namespace, settings: Settings) -> None:
    cli_runs.train(settings)


def cmd_training_set(args: argparse.Namespace, settings: Settings) -> None:
    from feature_assets.errors import RegistryError

    registry = cli_output.read_registry()
    try:
        model = registry.feature_set(args.model).model
    except RegistryError:
        model = args.model  # a model saved from a notebook is in the model store, not in the registry
    cli_output.print_training_set(settings, model, args.version, args.to)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> None:
    cli_runs.sync_online(settings, full=args.full)


def cmd_skew(args: argparse.Namespace, settings: Settings) -> None:
    from feature_assets.assets.monitoring import skew_report_name

    if args.refresh:
        reports = tuple(skew_report_name(view) for view in cli_output.monitored_views(args.view))
        result = cli_runs.execute_job(
            settings, "skew report", {}, job_name="report_skew", assets=reports, tolerate_failed_checks=True
        )
        failed = [
            f"{c.asset_key.to_user_string()} {c.check_name}"
            for c in result.get_asset_check_evaluations()
            if not c.passed
        ]
        if failed and not args.json:
            print(f"drift checks failed: {', '.join(failed)}\n")
    cli_output.print_skew(settings, args.view, as_json=args.json)


def cmd_inject_drift(args: argparse.Namespace, settings: Settings) -> None:
    from feature_assets.backends import open_online_store
    from feature_assets.scripted_drift import shift_online_feature

    registry = cli_output.read_registry()
    if args.view:
        view = registry.view(args.view)
    else:
        holders = [view for view in registry.views.values() if args.feature in view.feature_names]
        if len(holders) != 1:
            where = ", ".join(v.name for v in holders) or "no view"
            raise FeatureStoreError(f"{shown(args.feature)} is a feature of {where}; name the view with --view")
        view = holders[0]
    with open_online_store(settings) as store:
        shift, entities = shift_online_feature(cli_output.warehouse_of(settings), store, view, args.feature, args.by)
        where = store.describe()
    print(
        f"{view.name}.{args.feature} + {shift:.3g} ({args.by:.0%} of its mean) for {entities} entities "
        f"({view.entity_key}) in {where}; "
        "`featurestore skew --refresh` reports it, `featurestore sync --full` restores the synced values"
    )


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> None:
    hour = parse_hour(args.as_of, "--as-of") if args.as_of else current_hour()
    cli_runs.build_snapshots(
        settings, "refresh run", "refresh_features", (hour.date(), hour.date()), hour, {"anchor": format_hour(hour)}
    )
    cli_output.print_summary(settings)


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> None:
    first, last = parse_day(args.start, "--start"), parse_day(args.end, "--end")
    if first > last:
        raise ConfigError(f"--start {first} is after --end {last}")
    cli_runs.build_snapshots(settings, "backfill", "backfill_features", (first, last))
    cli_output.print_summary(settings)


def cmd_features(args: argparse.Namespace, settings: Settings) -> None:
    registry = cli_output.read_registry()
    hours = timedelta(hours=1)
    for view in registry.views.values():
        print(
            f"{view.name}: entity {view.entity} ({view.entity_key}), version {view.version}, online TTL "
            f"{view.online_ttl / hours:g} h, refreshed every {view.refresh_interval / hours:g} h, "
            f"online keys features:{view.online_namespace}:<{view.entity_key}>\n"
        )
        table = pd.DataFrame(
            [(f.name, f.dtype, f.description) for f in view.features], columns=["feature", "dtype", "description"]
        )
        print(table.to_string(index=False) + "\n")
    for feature_set in registry.feature_sets.values():
        print(
            f"{feature_set.model} ({feature_set.task} of {feature_set.labels.name}.{feature_set.target}), "
            f"keys: {', '.join(feature_set.caller_keys)}"
        )
        for read in feature_set.reads:
            derived = f", {read.key} from {'.'.join(read.derived_from)}" if read.derived_from else ""
            print(f"  {read.view.name}: {', '.join(f.name for f in read.features)}{derived}")
        if feature_set.request:
            print(f"  request fields: {', '.join(f'{f.name} ({f.dtype})' for f in feature_set.request)}")
        for feature in feature_set.request_features:
            print(f"  at request time: {feature.name} ({feature.dtype}) = {feature.function}")


def cmd_dev(args: argparse.Namespace, settings: Settings) -> None:
    # Opens the instance (creating it the first time), and fails the runs of commands killed since: the UI shows them
    # failed, not running for ever.
    cli_runs.fail_runs_of_dead_commands(settings)
    bin_dir = Path(sys.executable).parent
    # Under `dagster dev`, DbtProject.prepare_if_dev() runs the dbt found on PATH; an unactivated venv has none there.
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    dagster = bin_dir / "dagster"
    # A shell script's background job (`featurestore dev &`, nohup) starts with SIGINT ignored, and dagster dev maps
    # SIGTERM to SIGINT's handler: it could then be stopped by neither Ctrl-C nor `kill`. With SIGINT's default
    # handler back, it shuts its webserver and daemon down on either.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(dagster, [str(dagster), "dev", "-h", args.host, "-p", str(args.port)])


def cmd_stop_spark(args: argparse.Namespace, settings: Settings) -> None:
    from feature_assets.local_spark import stop_local_spark

    # The local server outlives the command that started it (so the next one starts in a second): this ends it.
    if stop_local_spark(settings.spark_folder):
        print(f"stopped the local Spark server of {settings.spark_folder}")
    else:
        print(f"no local Spark server runs for {settings.spark_folder}")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    # Importing the server creates its metrics, which write into PROMETHEUS_MULTIPROC_DIR at once: it must exist first.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"PROMETHEUS_MULTIPROC_DIR {folder[:200]!r} cannot be created: {error.strerror}"
            ) from None
    from feature_assets.serving.server import serve

    serve(
        settings, args.host, args.port, args.workers, insecure=args.insecure, ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )  # fmt: skip


def cmd_api_key(args: argparse.Namespace, settings: Settings) -> None:
    from feature_assets.serving.api_keys import new_key_line

    views = cli_output.read_registry().views
    key, line = new_key_line(args.name, args.scopes, views)
    print(f"API key {args.name} (shown this once: give it to the caller; the server keeps only its SHA-256):\n{key}")
    print(f"its line for the FEATURE_STORE_API_KEYS_FILE of `featurestore serve`:\n{line}")


def _cores() -> int:
    """The cores this process may use: os.process_cpu_count is Python 3.13's, os.sched_getaffinity is not on macOS."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _UsageError(Exception):
    """Arguments argparse refuses."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse quotes what was typed in full; a word past 40 characters is cut like any value we echo.
        short = re.sub(r"\S{41,}", lambda word: word[0][:40] + "...", message)
        raise _UsageError(f"{short} (`{self.prog} --help` shows the usage)")


def _report(error: Exception) -> None:
    """The one line a failed command ends with (dbt's and PostgreSQL's messages span several)."""
    print("featurestore: " + " ".join(str(error).split()), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="featurestore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate demo data, build the feature history and print it")
    demo.add_argument("--users", type=int, default=2000)
    demo.add_argument(
        "--days", type=int, default=300, help="history; LTV needs 90 days of outcome and 90 between fit and validation"
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=cmd_demo)

    refresh = commands.add_parser("refresh", help="what the hourly schedule runs: load raw rows and snapshot one hour")
    refresh.add_argument("--as-of", help="hour boundary (UTC, ISO); default: the current hour")
    refresh.set_defaults(run=cmd_refresh)

    backfill = commands.add_parser("backfill", help="(re)compute the feature snapshots of a range of as-of days (UTC)")
    backfill.add_argument("--start", required=True, help="first as-of day, e.g. 2026-11-01")
    backfill.add_argument("--end", required=True, help="last as-of day (up to its current hour if today)")
    backfill.set_defaults(run=cmd_backfill)

    features = commands.add_parser("features", help="print the feature registry")
    features.set_defaults(run=cmd_features)

    get = commands.add_parser("get", help="print one entity's features of one view from the online store")
    get.add_argument("view", help="feature view, e.g. user_features (`featurestore features` lists them)")
    get.add_argument("entity_id")
    get.add_argument("--json", action="store_true", help="print JSON (missing entities too, with _missing: true)")
    get.set_defaults(run=cmd_get)

    predict = commands.add_parser("predict", help="score entities with the served version of a model")
    predict.add_argument("model", help="model name, e.g. churn (churn_model) or ltv")
    predict.add_argument("entity_ids", nargs="+", metavar="entity_id", help="one or more ids of the model's entity key")
    predict.add_argument(
        "--key", action="append", default=[], metavar="NAME=VALUE", help="another entity key, e.g. country_code=DE"
    )
    predict.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request field the model declares, sent with each entity, e.g. order_amount=25",
    )
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(run=cmd_predict)

    train = commands.add_parser("train", help="rebuild labels and training sets, train and serve every model")
    train.set_defaults(run=cmd_train)

    training_set = commands.add_parser(
        "training-set", help="the rows a model version was fitted and validated on, kept with it"
    )
    training_set.add_argument("model", help="model name, e.g. churn (churn_model)")
    training_set.add_argument("--version", help="a stored version (default: the served one)")
    training_set.add_argument("--to", metavar="FILE.parquet", help="write the rows as Parquet instead of printing them")
    training_set.set_defaults(run=cmd_training_set)

    sync = commands.add_parser("sync", help="sync the online store from the latest snapshots of every feature view")
    sync.add_argument("--full", action="store_true", help="rewrite every entity, not only changed ones")
    sync.set_defaults(run=cmd_sync)

    skew = commands.add_parser("skew", help="print the latest train/serve skew report")
    skew.add_argument("--refresh", action="store_true", help="compute a new report (and run its drift checks) first")
    skew.add_argument("--view", help="one feature view (default: every view a model reads)")
    skew.add_argument("--json", action="store_true")
    skew.set_defaults(run=cmd_skew)

    drift = commands.add_parser(
        "inject-drift", help="demo: shift a numeric feature in the online store to simulate drift"
    )
    drift.add_argument("feature")
    drift.add_argument("--view", help="the feature's view, when several views have a feature of that name")
    drift.add_argument("--by", type=float, default=0.3, help="shift as a share of the feature's mean (default 0.3)")
    drift.set_defaults(run=cmd_inject_drift)

    dev = commands.add_parser("dev", help="open the Dagster UI (dagster dev) on this instance")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(run=cmd_dev)

    server = commands.add_parser("serve", help="serve online features and predictions over HTTP (see the README)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    server.add_argument("--workers", type=int, default=_cores(), help="processes (default: the cores)")
    server.add_argument(
        "--insecure", action="store_true", help="listen on a non-loopback address without API keys (anyone may call)"
    )
    server.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    server.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key, if not in its file")
    server.set_defaults(run=cmd_serve)

    api_key = commands.add_parser(
        "api-key", help="make an API key for `featurestore serve`: the key, once, and its line for the keys file"
    )
    api_key.add_argument("name", help="who holds it, e.g. churn-service (the server logs and counts this name)")
    api_key.add_argument("scopes", help="comma-separated: read, predict, push, push:<view>, metrics")
    api_key.set_defaults(run=cmd_api_key)

    stop_spark = commands.add_parser("stop-spark", help="stop the local Spark server the Spark warehouse left running")
    stop_spark.set_defaults(run=cmd_stop_spark)

    try:
        args = parser.parse_args(argv)
        args.run(args, Settings.from_env())
    except _UsageError as error:
        _report(error)
        return 2
    except FeatureStoreError as error:
        _report(error)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: a run it stopped is marked failed and its slots are given back; nothing more to say.
        print("featurestore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`featurestore features | head`): nothing more to say, and no traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`featurestore serve`: online features and predictions over HTTP, for model services that are not Python.

An ASGI app (Starlette) served by uvicorn in worker processes: one Python process scores on one core at a time,
so more cores need more processes, not threads. Each worker opens its own online store, model store and
served-vector log from the environment (the settings the CLI uses), and reads the registry from the dbt manifest.

    GET  /healthz               200 with the online store's kind and the served model versions; 503 and why
    POST /v1/features/{view}    {"entities": [{"user_id": 1}, ...], "features": [...]} -> typed values per entity
    POST /v1/predict/{model}    {"entities": [{"user_id": 1}, ...]} -> scores, model version, schema version
    GET  /metrics               Prometheus text, summed over the workers (see http_metrics)

With FEATURE_STORE_API_KEYS_FILE set, every route but /healthz answers only a key with its scope (see api_keys).
Every answer is JSON; a refusal is {"error": <what and why>, "cause": <one word>} with a 4xx or 503 status.
Reads of the online store block: they run on the event loop while it answers, in threads after it failed (Lane),
so a hung Redis answers each request 503 within the store's timeout. The served model version is re-read about once a
second (not on every prediction: that would be a model-store round trip each), so a promotion takes effect within
about a second, without a restart.
"""

import asyncio
import gc
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pandas as pd
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from feature_assets.backends import open_model_store, open_online_store, open_served_log, open_warehouse
from feature_assets.errors import (
    ConfigError,
    DataError,
    FeatureStoreError,
    OnlineStoreError,
    RegistryError,
    shown,
)
from feature_assets.push import push_rows, row_columns, typed_rows
from feature_assets.registry import FeatureView, Registry, load_registry
from feature_assets.serving import http_metrics
from feature_assets.serving.api_keys import ApiKeys, guarded
from feature_assets.serving.http_requests import (
    Refused,
    entities_of,
    feature_names,
    read_payload,
    refusal_of,
    rows_of,
    view_ids,
)
from feature_assets.serving.listening import check_tls, listen
from feature_assets.serving.online_store import OnlineStore
from feature_assets.serving.predictor import ModelCard, Predictor
from feature_assets.serving.reads import MISSING, FeatureReader
from feature_assets.settings import Settings, dbt_manifest_path
from feature_assets.warehouses.base import Warehouse

__all__ = ["create_app", "serve"]

log = logging.getLogger("featurestore.serve")

# Threads per worker that may wait on the online store at once (SQLite: one, it shares a connection).
_REDIS_THREADS = 32
# How long after the online store failed the blocking parts keep running in threads.
_THREADED_SECONDS = 5.0
# How long the requests in flight at SIGTERM may take to finish (each is bounded by the store's timeout and the
# prediction deadline, about a second by default).
_GRACEFUL_SHUTDOWN_SECONDS = 5
# How often a worker loads newly promoted versions and carries its served log's counters into the metrics.
_REFRESH_INTERVAL = 1.0


def _json(status: int, payload: Any) -> Response:
    # allow_nan=False: JSON has no NaN or infinity, and a value sent as something else would be silently wrong.
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status, media_type="application/json")


def _error(refused: Refused) -> Response:
    response = _json(refused.status, {"error": " ".join(str(refused).split()), "cause": refused.cause})
    if refused.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _timestamp(moment: Any) -> str | None:
    """Stored times are naive UTC; the API says so."""
    return None if moment is None or moment is pd.NaT else moment.isoformat() + "Z"


class Service:
    """One worker's serving state: the registry, the stores and a Predictor, opened once and shared by its threads.

    The online store is opened on first use and again after a failed open: a worker started while Redis is down
    answers 503 until Redis answers. Once open, redis-py reconnects by itself after an outage.
    """

    def __init__(self, settings: Settings, registry: Registry):
        self.settings, self.registry = settings, registry
        self.models = open_model_store(settings)
        self.served_log = open_served_log(settings)
        self._store: OnlineStore | None = None
        self._warehouse: Warehouse | None = None
        self._predictor: Predictor | None = None
        self._readers: dict[str, FeatureReader] = {}
        self._opening = threading.Lock()
        self._versions: dict[str, tuple[str, str]] = {}
        self._cards: dict[tuple[str, str], ModelCard] = {}
        self._saved: list[str] = []  # models saved from Python with a served version, listed by each refresh
        self.threads = 1 if settings.online == "sqlite" else _REDIS_THREADS

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            with self._opening:
                if self._predictor is None:
                    self._store = open_online_store(self.settings)
                    self._predictor = Predictor(self._store, self.models, self.served_log)
        return self._predictor

    def reader(self, view: FeatureView) -> FeatureReader:
        reader = self._readers.get(view.name)
        if reader is None:
            reader = self._readers[view.name] = FeatureReader(self.predictor.store, view, self.served_log)
        return reader

    def close(self) -> None:
        self.served_log.close()
        self.models.close()
        if self._store is not None:
            self._store.close()

    # --- the routes' blocking parts (see Lane) ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        store = self.predictor.store
        for view in self.registry.views.values():
            store.last_sync(view)  # a read: the store answers
        models = {}
        for model in self.model_names():
            card = self.predictor.served_card(model)  # loads the served version and checks its schema online
            models[model] = {"version": card.version, "schema_version": card.schema_version}
        return {"status": "ok", "online_store": {"kind": store.kind, "location": store.describe()}, "models": models}

    def features(self, view: FeatureView, ids: list[Any], names: list[str] | None) -> dict[str, Any]:
        reader = self.reader(view)
        if len(ids) == 1:
            row = reader.get_entity(ids[0], names)
            columns = {field: [value] for field, value in row.items()}
        else:
            frame = reader.get_online_features(ids, names)
            columns = {field: frame[field].to_numpy(dtype=object, na_value=None).tolist() for field in frame.columns}
        selected = list(view.feature_names) if names is None else names
        for name in selected:
            if view.feature(name).dtype == "float64":
                for index, value in enumerate(columns[name]):
                    if value is not None and not math.isfinite(value):  # JSON cannot carry it; never send it as null
                        raise DataError(
                            f"{view.name}.{name} is {value!r} for {view.entity_key} {ids[index]}, not a finite number"
                        )
        ttl_hours = view.online_ttl.total_seconds() / 3600
        entities = []
        for index, entity_id in enumerate(ids):
            if columns[MISSING][index]:
                entities.append({
                    view.entity_key: entity_id, view.timestamp: None, "features": None,
                    "missing": f"{view.entity_key} {entity_id} is not in the online store of {view.name} "
                               f"(never synced, or expired after the {ttl_hours:g} h TTL)",
                })  # fmt: skip
                continue
            entities.append({
                view.entity_key: entity_id,
                view.timestamp: _timestamp(columns[view.timestamp][index]),
                "features": {name: columns[name][index] for name in selected},
            })  # fmt: skip
        dtypes = {name: view.feature(name).dtype for name in selected}
        return {"view": view.name, "dtypes": dtypes, "entities": entities}

    @property
    def warehouse(self) -> Warehouse:
        """Opened by the first push, once for the worker's threads (its pool of connections is the worker's)."""
        if self._warehouse is None:
            with self._opening:
                if self._warehouse is None:
                    self._warehouse = open_warehouse(self.settings)
        return self._warehouse

    def push(self, view: FeatureView, rows: list[Any]) -> dict[str, Any]:
        typed = typed_rows(view, row_columns(view, rows), len(rows))
        return push_rows(self.warehouse, self.predictor.store, view, typed).to_json(view)

    def predict(self, model: str, entities: list[dict[str, Any]]) -> dict[str, Any]:
        predictor = self.predictor
        if len(entities) == 1:
            prediction = predictor.predict_one(model, entities[0])
            version = prediction.version
            predictions = [{"entity": prediction.entity, "score": prediction.score}]
        else:
            frame = predictor.predict(model, pd.DataFrame(entities, dtype=object))
            version = frame["model_version"].iloc[0]
            keys = [column for column in frame.columns if column not in ("score", "model_version", "error")]
            values = {
                column: frame[column].to_numpy(dtype=object, na_value=None).tolist()
                for column in [*keys, "score", "error"]
            }
            predictions = []
            for index in range(len(frame)):
                entity = {key: values[key][index] for key in keys if values[key][index] is not None}
                error = values["error"][index]
                predictions.append(
                    {"entity": entity, "score": values["score"][index]} if error is None
                    else {"entity": entity, "score": None, "error": error}
                )  # fmt: skip
        card = self._card(model, version)
        return {"model": model, "version": version, "schema_version": card.schema_version, "predictions": predictions}

    def _card(self, model: str, version: str) -> ModelCard:
        """The card of the version that answered, read once per version (one more look at the served version would
        cost a read of the model store per request, and a promotion may land in between)."""
        card = self._cards.get((model, version))
        if card is None:
            card = self._cards[(model, version)] = self.models.card(model, version)
        served = (card.version, card.schema_version)
        if self._versions.get(model) != served:
            with self._opening:
                previous = self._versions.get(model)
                if previous != served:
                    if previous is not None:
                        http_metrics.MODEL_VERSION.labels(model, *previous).set(0)
                    http_metrics.MODEL_VERSION.labels(model, *served).set(1)
                    self._versions[model] = served
        return card

    def model_names(self) -> list[str]:
        """The models served: those the registry declares, then those saved from Python with a served version."""
        return [*self.registry.feature_sets, *self._saved]

    def model_name(self, name: str) -> str:
        """The served model `name` names (a declared one also without its _model suffix), or a 404 listing them."""
        if name in self._saved:
            return name
        try:
            return self.registry.feature_set(name).model
        except RegistryError as error:
            saved = f"; served from Python: {', '.join(self._saved)}" if self._saved else ""
            raise Refused(404, "unknown_model", f"{error}{saved}") from None

    def refresh(self) -> list[str]:
        """Loads the served version of every model (before the first request, and each second: a promotion is loaded
        and shows in the metrics before any request needs it). Returns what failed, which /healthz reports."""
        failures = []
        try:
            saved = self.models.served_models()
            self._saved = [model for model in saved if model not in self.registry.feature_sets]
        except FeatureStoreError as error:
            failures.append(f"model store: {error}")
        for model in self.model_names():
            try:
                self._card(model, self.predictor.served_card(model).version)
            except FeatureStoreError as error:
                failures.append(f"{model}: {error}")
        return failures


# --- the app -----------------------------------------------------------------------------------------------------


class Lane:
    """Where the blocking parts of a request run: on the event loop while the online store answers, in a thread
    pool for _THREADED_SECONDS after it failed.

    A worker scores one request at a time anyway (the GIL), and a hop to a thread and back costs ~0.3 ms of CPU, a
    third of a one-entity prediction. But a hung Redis would hold the loop for each request's timeout in turn, so
    the requests queued behind the first would wait several timeouts: after a failure each waits in a thread of its
    own, and is answered 503 within its own timeout.
    """

    def __init__(self, threads: int):
        self.limiter = anyio.CapacityLimiter(threads)
        self.threaded_until = 0.0

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            if time.monotonic() < self.threaded_until:
                return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
            return function(*args)
        except OnlineStoreError:
            self.threaded_until = time.monotonic() + _THREADED_SECONDS
            raise


Handler = Callable[[Request], Awaitable[Response]]


def _counted(route: str, handler: Handler) -> Handler:
    """Answers refusals as JSON errors and counts every answer by route and status, with its latency, and every
    refusal by route and cause."""
    latency = http_metrics.LATENCY.labels(route)

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except (FeatureStoreError, Refused) as error:
            refused = refusal_of(error)
            http_metrics.REFUSALS.labels(route, refused.cause).inc()
            response = _error(refused)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            http_metrics.REFUSALS.labels(route, "internal").inc()
            response = _error(Refused(500, "internal", "the server failed to answer; its log has the details"))
        http_metrics.REQUESTS.labels(route, str(response.status_code)).inc()
        latency.observe(time.perf_counter() - started)
        return response

    return endpoint


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Starlette:
    """The app of one worker (uvicorn calls this in each worker process); the settings and the registry come from
    the environment and the dbt manifest unless given."""
    settings = settings or Settings.from_env()
    registry = registry or load_registry(dbt_manifest_path())
    keys_file = settings.serve_api_keys_file
    keys = None if keys_file is None else ApiKeys.from_file(keys_file, registry.views)
    service = Service(settings, registry)
    lanes: list[Lane] = []  # made in the lifespan: its limiter belongs to the worker's event loop

    async def blocking(function: Callable[..., Any], *args: Any) -> Any:
        return await lanes[0].run(function, *args)

    async def healthz(request: Request) -> Response:
        try:
            return _json(200, await blocking(service.health))
        except FeatureStoreError as error:
            refused = refusal_of(error)
            return _json(
                503, {"status": "unavailable", "reason": " ".join(str(refused).split()), "cause": refused.cause}
            )

    async def features(request: Request) -> Response:
        try:
            view = registry.view(request.path_params["view"])
        except RegistryError as error:
            raise Refused(404, "unknown_view", str(error)) from None
        payload = await read_payload(request, settings.serve_max_body_bytes, ("entities", "features"))
        ids = view_ids(view, entities_of(payload, settings.serve_max_entities))
        names = feature_names(view, payload.get("features"))
        return _json(200, await blocking(service.features, view, ids, names))

    async def predict(request: Request) -> Response:
        model = service.model_name(request.path_params["model"])
        payload = await read_payload(request, settings.serve_max_body_bytes, ("entities",))
        entities = entities_of(payload, settings.serve_max_entities)
        return _json(200, await blocking(service.predict, model, entities))

    async def push(request: Request) -> Response:
        try:
            view = registry.view(request.path_params["view"])
        except RegistryError as error:
            raise Refused(404, "unknown_view", str(error)) from None
        payload = await read_payload(request, settings.serve_max_body_bytes, ("rows",))
        rows = rows_of(payload, settings.serve_max_entities)
        return _json(200, await blocking(service.push, view, rows))

    async def metrics(request: Request) -> Response:
        body, content_type = await blocking(http_metrics.exposition)
        return Response(body, 200, headers={"Content-Type": content_type})

    async def not_found(request: Request, error: HTTPException) -> Response:
        routes = "GET /healthz, POST /v1/features/{view}, POST /v1/predict/{model}, POST /v1/push/{view}, GET /metrics"
        message = f"no route {request.method} {shown(request.url.path)}; the routes: {routes}"
        http_metrics.REQUESTS.labels("unmatched", str(error.status_code)).inc()
        http_metrics.REFUSALS.labels("unmatched", "no_route").inc()
        return _error(Refused(error.status_code, "no_route", message))

    counts = http_metrics.ServedLogCounts(service.served_log)

    async def every_second() -> None:
        while True:
            await asyncio.sleep(_REFRESH_INTERVAL)
            counts.update()
            await blocking(service.refresh)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        lanes.append(Lane(service.threads))
        for failure in await blocking(service.refresh):
            log.warning("not serving yet: %s", failure)
        # What start-up loaded (modules, models, pandas, scikit-learn) stays for the worker's life: out of the
        # collector's sight, a full collection walks only what requests allocate (it walked it all: p99 spikes).
        gc.collect()
        gc.freeze()
        task = asyncio.create_task(every_second())
        try:
            yield
        finally:
            task.cancel()
            await blocking(service.close)  # writes what the served log holds
            counts.update()
            http_metrics.forget_this_process()

    def route(path: str, method: str, handler: Handler, scope: str | None) -> Route:
        """A route counted in the metrics, answering only the keys with `scope` (a template of its path
        parameters, e.g. "push:{view}") when the server has keys; None: open to all."""
        guarded_handler = handler if scope is None else guarded(keys, scope, handler)
        return Route(path, _counted(path, guarded_handler), methods=[method])

    routes = [
        route("/healthz", "GET", healthz, scope=None),
        route("/v1/features/{view}", "POST", features, scope="read"),
        route("/v1/predict/{model}", "POST", predict, scope="predict"),
        route("/v1/push/{view}", "POST", push, scope="push:{view}"),
        route("/metrics", "GET", metrics, scope="metrics"),
    ]
    # Starlette types every handler as taking any Exception, though one registered for a status code is given an
    # HTTPException.
    handlers = {404: not_found, 405: not_found}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)  # type: ignore[arg-type]


# --- running it --------------------------------------------------------------------------------------------------


def serve(settings: Settings, host: str, port: int, workers: int, *, insecure: bool = False,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:  # fmt: skip
    """Runs the server until SIGINT or SIGTERM: `workers` processes answering on one socket, over TLS with a
    certificate. Without API keys it listens on a loopback address only, unless `insecure`."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    registry = load_registry(dbt_manifest_path())  # refuse a missing or invalid manifest here, in one line
    if not registry.feature_sets:
        raise ConfigError("the registry declares no model to serve")
    keys = None
    if settings.serve_api_keys_file is not None:  # refuse an unreadable or malformed file here, in one line
        keys = ApiKeys.from_file(settings.serve_api_keys_file, registry.views)
    check_tls(ssl_certfile, ssl_keyfile)
    sock = listen(host, port, loopback_only=keys is None and not insecure)
    # Every worker writes its metrics to files here; /metrics adds them up. Stale files would add up too.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    temporary = folder is None
    if folder is None:
        folder = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="featurestore-metrics-")
    else:  # created by the CLI before this module's metrics were
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.remove(os.path.join(folder, name))
    config = uvicorn.Config(
        "feature_assets.serving.server:create_app",
        factory=True,
        workers=workers,
        lifespan="on",
        access_log=False,  # /metrics counts every request; a log line each costs more than the answer
        log_level="warning",
        server_header=False,
        # Requests in flight get this long to finish at SIGTERM; then the served log is written and the worker ends.
        # Without a bound, a TLS client that never answers the server's close_notify (an idle keep-alive connection)
        # would hold the shutdown for asyncio's 30 s SSL shutdown timeout, past systemd's TimeoutStopSec.
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    callers = f"API keys {', '.join(keys.names)}" if keys else "no API keys" + (" (--insecure)" if insecure else "")
    print(
        f"featurestore serve: {'https' if ssl_certfile else 'http'}://{host}:{sock.getsockname()[1]} with {workers} "
        f"worker(s), online store {settings.online}, {callers}",
        flush=True,
    )
    try:
        # Workers are spawned processes even when there is one: they import the app with the metrics folder set.
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    finally:
        sock.close()
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise FeatureStoreError("a worker failed to start; the lines above say why")

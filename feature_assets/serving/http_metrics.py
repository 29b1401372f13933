"""The Prometheus metrics of `featurestore serve`, summed over its worker processes.

Each worker is a process of its own, so the metrics live in prometheus-client's multiprocess mode: every worker
writes its values to files in PROMETHEUS_MULTIPROC_DIR (set before the workers start), and /metrics, whichever
worker answers it, reads and adds up all of them. Without that variable (an app run in one process) they are
the process's own.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from feature_assets.serving.served_log import ServedLog

__all__ = [
    "LATENCY",
    "MODEL_VERSION",
    "ONLINE_STORE_ERRORS",
    "REFUSALS",
    "REQUESTS",
    "ServedLogCounts",
    "exposition",
    "forget_this_process",
]

REQUESTS = Counter("featurestore_http_requests", "HTTP requests answered, by route and status.", ["route", "status"])
REFUSALS = Counter(
    "featurestore_http_refusals",
    "Requests refused (answered with a JSON error), by route and cause: e.g. no_key, unknown_key, forbidden.",
    ["route", "cause"],
)
LATENCY = Histogram(
    "featurestore_http_request_duration_seconds",
    "Time from a request's arrival in the app to its answer, by route.",
    ["route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
ONLINE_STORE_ERRORS = Counter(
    "featurestore_online_store_errors",
    "Requests answered 503 because the online store failed or did not answer in time.",
)
SERVED_LOG = Counter(
    "featurestore_served_log_vectors",
    "Served feature vectors offered to the served-vector log after sampling, by outcome: logged, dropped (its queue "
    "was full) or failed (a write error).",
    ["outcome"],
)
MODEL_VERSION = Gauge(
    "featurestore_model_version_info",
    "1 for each model version a live worker serves (the version its last answer used).",
    ["model", "version", "schema_version"],
    multiprocess_mode="livemax",
)


class ServedLogCounts:
    """Carries a served log's own counters (exact, per process) into the Prometheus counters, as increments."""

    def __init__(self, log: ServedLog):
        self.log = log
        self._seen = (0, 0, 0)

    def update(self) -> None:
        stats = self.log.stats()
        now = (stats.logged, stats.dropped_full_queue, stats.failed_writes)
        for outcome, before, after in zip(("logged", "dropped", "failed"), self._seen, now):
            if after > before:
                SERVED_LOG.labels(outcome).inc(after - before)
        self._seen = now


def exposition() -> tuple[bytes, str]:
    """The text format of every worker's metrics, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_this_process() -> None:
    """Drops this worker's live gauges (the versions it serves) when it stops; its counters stay in the sums."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

"""`featurestore serve`: a real server process on a free loopback port, against a real Redis, with models trained by
their own `train` on synthetic rows and snapshots written as a sync writes them (served_models)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pandas as pd
import psycopg
import pytest
import redis
from conftest import REDIS_URL, wait_until
from served_models import serve_models, train_and_save, write_snapshots

from feature_assets.registry import load_registry
from feature_assets.serving import FeatureReader, FolderModelStore, Predictor, RedisOnlineStore
from feature_assets.serving.postgres_model_store import PostgresModelStore
from feature_assets.serving.served_log import RedisServedLog
from feature_assets.settings import dbt_manifest_path

REGISTRY = load_registry(dbt_manifest_path())
USERS, COUNTRIES = REGISTRY.view("user_features"), REGISTRY.view("country_features")
MISSING_USER = 987654
ROOT = Path(__file__).resolve().parent.parent
# Small limits, so the tests can cross them.
LIMITS = {"FEATURE_STORE_SERVE_MAX_ENTITIES": "50", "FEATURE_STORE_SERVE_MAX_BODY_BYTES": "20000"}


class Server:
    """`featurestore serve` in a process (group) of its own, on a port it picked itself (--port 0); `arguments` are
    more of serve's, `client` the options of the test's httpx client (its headers, the certificates it trusts)."""

    def __init__(
        self, home: Path, redis_url: str, workers: int = 2, arguments: Sequence[str] = (), client: dict | None = None,
        **env: str,
    ):  # fmt: skip
        self.home = home
        self.log = home / f"server-{time.monotonic_ns()}.log"
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_STORE_", "PROMETHEUS_"))},
            "FEATURE_STORE_HOME": str(home), "FEATURE_STORE_ONLINE": "redis", "FEATURE_STORE_REDIS_URL": redis_url,
            **LIMITS, **env,
        }  # fmt: skip
        with open(self.log, "wb") as log:  # the server writes to its own copy of the file descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "feature_assets.cli", "serve", "--port", "0", "--workers", str(workers),
                 *arguments],
                env=environment, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
            )  # fmt: skip
        self.line = self.process.stdout.readline()
        match = re.search(r"(https?)://[^:/]+:(\d+)", self.line)
        if not match:
            self.stop()
            pytest.fail(f"the server did not start: {self.line!r}; log:\n{self.log.read_text()[-3000:]}")
        self.url = f"{match[1]}://127.0.0.1:{match[2]}"
        self.client = httpx.Client(base_url=self.url, timeout=10, **(client or {}))

    def health(self) -> int | None:
        """The status /healthz answers, None while the workers are not listening yet."""
        try:
            return self.client.get("/healthz").status_code
        except httpx.TransportError:
            return None

    def healthy(self) -> bool:
        return self.health() == 200

    def wait_healthy(self) -> "Server":
        wait_until(
            lambda: self.healthy() or self.process.poll() is not None, "the server answering /healthz", timeout=120
        )
        if self.process.poll() is not None:
            pytest.fail(f"the server exited; log:\n{self.log.read_text()[-3000:]}")
        return self

    def predict(self, model: str, *entities: dict) -> httpx.Response:
        return self.client.post(f"/v1/predict/{model}", json={"entities": list(entities)})

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its name and labels, e.g.
        'featurestore_http_requests_total{route=...,status=...}'."""
        text = self.client.get("/metrics").text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    def stop(self) -> None:
        if hasattr(self, "client"):  # its idle connection closed first: a TLS server would wait for its close_notify
            self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def readme_curls(keyed: bool) -> list[str]:
    """The curl commands of the README's serving section, without keys or with one (Authorization: Bearer)."""
    readme = (ROOT / "README.md").read_text().split("## Serving over HTTP", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^curl .*?[^\\]$", readme.replace("\\\n", "\\ "), flags=re.M)
    return [command for command in commands if ("Authorization: Bearer" in command) == keyed]


def requests_counted(metrics: dict[str, float], route: str, status: int) -> float:
    return metrics.get(f'featurestore_http_requests_total{{route="{route}",status="{status}"}}', 0.0)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """FEATURE_STORE_HOME with both models served as v1 (and a v2 of ltv_model saved, not promoted)."""
    folder = tmp_path_factory.mktemp("serve")
    models = FolderModelStore(folder / "models")
    serve_models(models, REGISTRY, "v1")
    train_and_save(models, REGISTRY.feature_set("ltv_model"), "v2", seed=1)
    return folder


@pytest.fixture(scope="module")
def online(home) -> Iterator[RedisOnlineStore]:
    """The test Redis database holding 500 users and every country."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    store = RedisOnlineStore.from_url(REDIS_URL)
    write_snapshots(store, REGISTRY)
    yield store
    store.close()
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def server(home, online, tmp_path_factory) -> Iterator[Server]:
    """Two workers serving the online store, their metrics summed from files in a folder of the test's own (one
    that does not exist yet: serve creates it)."""
    metrics = tmp_path_factory.mktemp("metrics") / "not_yet"
    running = Server(home, REDIS_URL, workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics))
    yield running.wait_healthy()
    running.stop()


def test_importing_the_server_loads_neither_dagster_nor_dbt():
    code = (
        "import sys, feature_assets.serving.server\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_dbt', 'dbt'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_healthz_names_the_online_store_and_every_served_version(server, home):
    answer = server.client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["online_store"]["kind"] == "redis"
    models = FolderModelStore(home / "models")
    assert body["models"] == {
        name: {"version": models.current(name), "schema_version": models.card(name).schema_version}
        for name in ("checkout_model", "churn_model", "ltv_model")
    }


def test_features_come_back_typed_in_request_order_and_a_missing_entity_is_null_with_a_reason(server, online):
    users = [7, MISSING_USER, 3]
    answer = server.client.post("/v1/features/user_features", json={"entities": [{"user_id": u} for u in users]})
    assert answer.status_code == 200
    body = answer.json()
    assert body["view"] == "user_features"
    assert body["dtypes"] == {f.name: f.dtype for f in USERS.features}
    expected = FeatureReader(online, USERS).get_online_features([7, 3])
    entities = body["entities"]
    assert [entity["user_id"] for entity in entities] == users
    for entity, (_, row) in zip([entities[0], entities[2]], expected.iterrows()):
        assert entity["computed_at"] == row["computed_at"].isoformat() + "Z"
        for feature in USERS.features:
            value = entity["features"][feature.name]
            if pd.isna(row[feature.name]):
                assert value is None
            else:
                assert value == row[feature.name]
                assert type(value) is {"int64": int, "float64": float, "string": str}[feature.dtype]
    assert entities[1]["features"] is None and entities[1]["computed_at"] is None
    assert f"user_id {MISSING_USER} is not in the online store of user_features" in entities[1]["missing"]

    one = server.client.post(
        "/v1/features/country_features", json={"entities": [{"country_code": "DE"}], "features": ["country_paid_share"]}
    ).json()["entities"]
    assert list(one[0]["features"]) == ["country_paid_share"]
    assert (
        one[0]["features"]["country_paid_share"]
        == FeatureReader(online, COUNTRIES).get_entity("DE")["country_paid_share"]
    )


def test_predictions_over_http_equal_the_in_process_predictor_with_version_and_schema(server, online, home):
    models = FolderModelStore(home / "models")
    predictor = Predictor(online, models)
    card = models.card("churn_model")

    single = server.predict("churn", {"user_id": 5})
    assert single.status_code == 200
    expected = predictor.predict_one("churn_model", 5)
    assert single.json() == {
        "model": "churn_model", "version": card.version, "schema_version": card.schema_version,
        "predictions": [{"entity": expected.entity, "score": expected.score}],
    }  # fmt: skip

    batch = server.predict("churn_model", {"user_id": 5}, {"user_id": MISSING_USER}, {"user_id": 9})
    assert batch.status_code == 200
    rows = batch.json()["predictions"]
    frame = predictor.predict("churn_model", [5, MISSING_USER, 9])
    assert [row["score"] for row in rows[::2]] == pytest.approx(frame["score"].iloc[[0, 2]].tolist(), rel=1e-12)
    assert rows[0]["entity"] == expected.entity and rows[2]["entity"]["user_id"] == 9
    assert rows[1]["score"] is None and f"user_id {MISSING_USER} has no user_features" in rows[1]["error"]

    passed = server.predict("churn", {"user_id": 5, "country_code": "US"}).json()["predictions"][0]
    assert passed["entity"] == {"user_id": 5, "country_code": "US"}
    assert passed["score"] == predictor.predict_one("churn_model", {"user_id": 5, "country_code": "US"}).score


def test_a_missing_entity_is_a_404_and_a_changed_definition_a_409_naming_the_cause(server, online):
    missing = server.predict("churn", {"user_id": MISSING_USER})
    assert missing.status_code == 404
    assert missing.json()["cause"] == "missing_features"
    assert f"user_id {MISSING_USER} has no user_features in the online store" in missing.json()["error"]

    from dataclasses import replace

    record_before = online.last_sync(USERS)
    changed = tuple(
        (name, "edited" if name == "events_30d" else checksum) for name, checksum in record_before.definitions
    )
    online.record_sync(USERS, replace(record_before, definitions=changed))
    try:
        # Each worker looks at the sync record again within a second.
        wait_until(lambda: all(server.predict("churn", {"user_id": 5}).status_code == 409 for _ in range(6)), "409s")
        refused = server.predict("churn", {"user_id": 5}).json()
        assert refused["cause"] == "schema_mismatch"
        assert "reads user_features.events_30d, but its definition (SQL) changed" in refused["error"]
        assert server.client.get("/healthz").status_code == 503
    finally:
        online.record_sync(USERS, record_before)
    wait_until(lambda: all(server.predict("churn", {"user_id": 5}).status_code == 200 for _ in range(6)), "200s again")


def test_a_value_json_cannot_carry_is_refused_by_name_not_sent_as_null(server, online):
    key = online.key_of(USERS, 11)
    before = online.client.hget(key, "avg_order_30d")
    online.client.hset(key, "avg_order_30d", "inf")
    try:
        refused = server.client.post(
            "/v1/features/user_features", json={"entities": [{"user_id": 10}, {"user_id": 11}]}
        )
        assert refused.status_code == 409 and refused.json()["cause"] == "online_data"
        assert "user_features.avg_order_30d is inf for user_id 11, not a finite number" in refused.json()["error"]
        assert "not a finite number" in server.predict("churn", {"user_id": 11}).json()["error"]
    finally:
        online.client.hset(key, "avg_order_30d", before)


@pytest.mark.parametrize(
    "method, path, body, status, cause, message",
    [
        ("POST", "/v1/predict/churn", b"{not json", 400, "bad_json", "the body is not JSON"),
        ("POST", "/v1/predict/churn", b"[1, 2]", 400, "bad_request", "a JSON object"),
        ("POST", "/v1/predict/churn", b'{"entity": [{"user_id": 1}]}', 400, "bad_request", "unknown field 'entity'"),
        ("POST", "/v1/predict/churn", b'{"entities": []}', 400, "bad_request", "a non-empty list of objects"),
        ("POST", "/v1/predict/churn", b'{"entities": [7]}', 400, "bad_request", "entities[0] is 7, not an object"),
        (
            "POST",
            "/v1/predict/churn",
            b'{"entities": [{"user_id": "seven"}]}',
            400,
            "invalid_entity",
            "user_id 'seven' is not a bigint",
        ),
        (
            "POST",
            "/v1/predict/churn",
            b'{"entities": [{"user_id": 1.5}]}',
            400,
            "invalid_entity",
            "user_id 1.5 is not a bigint",
        ),
        (
            "POST",
            "/v1/predict/churn",
            b'{"entities": [{"user_id": true}]}',
            400,
            "invalid_entity",
            "user_id True is not a bigint",
        ),
        (
            "POST",
            "/v1/predict/ltv",
            b'{"entities": [{"user_id": 1, "country_code": "DE"}]}',
            400,
            "invalid_entity",
            "reads no view keyed by 'country_code'",
        ),
        (
            "POST",
            "/v1/predict/churn",
            b'{"entities": [{"user_id": 1, "country_code": "DE"}, {"user_id": 2}]}',
            400,
            "invalid_entity",
            "every entity of one request passes the same keys",
        ),
        (
            "POST",
            "/v1/predict/churn",
            json.dumps({"entities": [{"user_id": i} for i in range(51)]}).encode(),
            413,
            "too_many_entities",
            "51 entities; at most 50",
        ),
        (
            "POST",
            "/v1/predict/churn",
            b'{"entities": [' + b'{"user_id": 1},' * 2000 + b'{"user_id": 1}]}',
            413,
            "too_large",
            "at most 20000",
        ),
        (
            "POST",
            "/v1/predict/fraud",
            b'{"entities": [{"user_id": 1}]}',
            404,
            "unknown_model",
            "no model 'fraud_model' declares a feature set; known: checkout_model, churn_model, ltv_model",
        ),
        (
            "POST",
            "/v1/features/orders",
            b'{"entities": [{"user_id": 1}]}',
            404,
            "unknown_view",
            "no feature view 'orders'; known: country_features, user_features",
        ),
        (
            "POST",
            "/v1/features/user_features",
            b'{"entities": [{"user_id": 1}], "features": ["height"]}',
            400,
            "unknown_feature",
            "user_features has no feature 'height'",
        ),
        (
            "POST",
            "/v1/features/user_features",
            b'{"entities": [{"country_code": "DE"}]}',
            400,
            "invalid_entity",
            "keyed by user_id alone",
        ),
        (
            "POST",
            "/v1/features/user_features",
            b'{"entities": [{"user_id": 1}, {"user_id": "x"}]}',
            400,
            "invalid_entity",
            "entities[1]: user_id 'x' is not a bigint",
        ),
        ("GET", "/v1/predict/churn", b"", 405, "no_route", "no route GET '/v1/predict/churn'"),
        ("GET", "/v2/everything", b"", 404, "no_route", "no route GET '/v2/everything'"),
    ],
)
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(server, method, path, body, status, cause, message):
    answer = server.client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["cause"]) == (status, cause)
    assert message in answer.json()["error"]


def test_a_body_sent_in_chunks_past_the_limit_is_refused(server):
    def chunks():
        yield b'{"entities": ['
        for _ in range(3000):
            yield b'{"user_id": 1},'
        yield b'{"user_id": 1}]}'

    answer = server.client.post("/v1/predict/churn", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "over 20000 bytes" in answer.json()["error"]


def test_metrics_count_what_every_worker_served(server):
    """Requests spread over both workers (a connection each, many at once) are all counted, whichever worker answers
    /metrics; so are the served vectors logged and the model version in use."""
    before = server.metrics()
    sent, threads = 120, 12

    def send(offset: int) -> None:
        for n in range(offset, sent, threads):
            with httpx.Client(base_url=server.url, timeout=10) as own:  # a new connection: either worker may take it
                assert own.post("/v1/predict/churn", json={"entities": [{"user_id": 1 + n % 400}]}).status_code == 200
                assert own.post("/v1/predict/churn", json={"entities": [{"user_id": MISSING_USER}]}).status_code == 404

    workers = [threading.Thread(target=send, args=(offset,)) for offset in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    after = server.metrics()
    route = "/v1/predict/{model}"
    assert requests_counted(after, route, 200) - requests_counted(before, route, 200) == sent
    assert requests_counted(after, route, 404) - requests_counted(before, route, 404) == sent
    latency = f'featurestore_http_request_duration_seconds_count{{route="{route}"}}'
    assert after[latency] - before.get(latency, 0) == 2 * sent
    # Each prediction logs its vector per view (user and country), off the request path, counted within a second.
    logged = 'featurestore_served_log_vectors_total{outcome="logged"}'
    wait_until(
        lambda: server.metrics().get(logged, 0) - before.get(logged, 0) >= 2 * sent, "the served vectors counted"
    )
    assert server.metrics().get('featurestore_served_log_vectors_total{outcome="dropped"}', 0) == 0
    with RedisServedLog(REDIS_URL) as log:
        assert len(log.read("country_features")) >= sent
    card = FolderModelStore(server.home / "models").card("churn_model")
    gauge = (
        f'featurestore_model_version_info{{model="churn_model",schema_version="{card.schema_version}",'
        f'version="{card.version}"}}'
    )
    assert after[gauge] == 1


def test_a_promoted_version_is_served_without_a_restart(server, home):
    models = FolderModelStore(home / "models")
    v1, v2 = models.card("ltv_model", "v1"), models.card("ltv_model", "v2")
    assert server.predict("ltv", {"user_id": 5}).json()["version"] == "v1"
    models.promote("ltv_model", "v2")
    try:
        # Each worker reads the served pointer at most once a second: within about a second, every answer is v2.
        wait_until(
            lambda: all(server.predict("ltv", {"user_id": 5}).json()["version"] == "v2" for _ in range(10)),
            "v2 everywhere",
            timeout=5,
        )
        for _ in range(10):
            answer = server.predict("ltv", {"user_id": 5}).json()
            assert (answer["version"], answer["schema_version"]) == ("v2", v2.schema_version)
        assert server.client.get("/healthz").json()["models"]["ltv_model"]["version"] == "v2"
        # Every worker loads the new version within a second, serving or not: the metrics show v2 alone in use.
        gauge = 'featurestore_model_version_info{{model="ltv_model",schema_version="{}",version="{}"}}'
        in_use = (gauge.format(v1.schema_version, "v1"), gauge.format(v2.schema_version, "v2"))
        wait_until(lambda: [server.metrics().get(name) for name in in_use] == [0, 1], "v2 alone in the metrics")
    finally:
        models.promote("ltv_model", "v1")
    wait_until(
        lambda: all(server.predict("ltv", {"user_id": 5}).json()["version"] == "v1" for _ in range(10)),
        "v1 again",
        timeout=5,
    )


def test_servers_on_the_postgresql_model_store_follow_a_promotion_made_elsewhere(
    online, start_server, postgres_url, tmp_path
):
    """The production layout: model versions and the served pointer in PostgreSQL, where every server host and the
    training run see them. A promotion by another process reaches a serving server within about a second."""
    schema = f"fs_serve_{uuid.uuid4().hex[:10]}"
    models = PostgresModelStore(postgres_url, schema)
    try:
        serve_models(models, REGISTRY, "v1")
        v2 = train_and_save(models, REGISTRY.feature_set("ltv_model"), "v2", seed=1)
        server = start_server(
            REDIS_URL, FEATURE_STORE_MODEL_STORE_URL=postgres_url, FEATURE_STORE_POSTGRES_SCHEMA=schema
        )
        server.wait_healthy()
        assert server.predict("ltv", {"user_id": 5}).json()["version"] == "v1"
        models.promote("ltv_model", "v2")
        wait_until(lambda: server.predict("ltv", {"user_id": 5}).json()["version"] == "v2", "v2 served", timeout=10)
        answer = server.predict("ltv", {"user_id": 5}).json()
        assert answer["schema_version"] == v2.schema_version
        assert server.client.get("/healthz").json()["models"]["ltv_model"]["version"] == "v2"
    finally:
        models.close()
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own holding the snapshots, to hang, kill and restart on its port."""
    from redis_servers import start_restartable_redis

    redis_server = start_restartable_redis(tmp_path)
    with RedisOnlineStore.from_url(redis_server.url) as store:
        write_snapshots(store, REGISTRY)
    yield redis_server
    redis_server.stop()


@pytest.fixture
def start_server(home) -> Iterator:
    """Starts servers on the module's models (stopped afterwards)."""
    started = []

    def start(redis_url: str, **env: str) -> Server:
        started.append(Server(home, redis_url, workers=1, **env))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_a_redis_outage_gives_503_within_the_timeout_and_the_server_recovers_by_itself(own_redis, start_server):
    timeouts = {"FEATURE_STORE_REDIS_TIMEOUT_MS": "300", "FEATURE_STORE_PREDICT_DEADLINE_MS": "300"}
    server = start_server(own_redis.url, **timeouts).wait_healthy()
    assert server.predict("churn", {"user_id": 5}).status_code == 200

    os.killpg(own_redis.process.pid, signal.SIGSTOP)  # a hung Redis: connections open, no answers
    try:
        started = time.monotonic()
        hung = server.predict("churn", {"user_id": 5})
        assert time.monotonic() - started < 10  # the 300 ms timeout, not a hang: the slack is a loaded machine's
        assert hung.status_code == 503 and hung.json()["cause"] == "online_store"
        assert "no answer" in hung.json()["error"]
        # Requests arriving together each wait their own timeout, not the ones queued before them.
        answers: list[tuple[int, float]] = []

        def one() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as own:
                began = time.monotonic()
                status = own.post("/v1/predict/churn", json={"entities": [{"user_id": 6}]}).status_code
                answers.append((status, time.monotonic() - began))

        together = [threading.Thread(target=one) for _ in range(10)]
        for thread in together:
            thread.start()
        for thread in together:
            thread.join()
        assert [status for status, _ in answers] == [503] * 10
        assert max(seconds for _, seconds in answers) < 10, answers  # each gives up after its 300 ms timeout
        health = server.client.get("/healthz")
        assert health.status_code == 503 and health.json()["cause"] == "online_store"
    finally:
        os.killpg(own_redis.process.pid, signal.SIGCONT)
    wait_until(lambda: server.predict("churn", {"user_id": 5}).status_code == 200, "answers after Redis resumed")

    own_redis.kill()  # Redis gone: connections refused
    down = server.predict("churn", {"user_id": 5})
    assert down.status_code == 503 and down.json()["cause"] == "online_store"
    assert server.client.get("/healthz").status_code == 503
    own_redis.restart()  # the same port, its data reloaded
    wait_until(lambda: server.predict("churn", {"user_id": 5}).status_code == 200, "answers after Redis restarted")
    assert server.client.get("/healthz").status_code == 200
    assert server.metrics()["featurestore_online_store_errors_total"] >= 4


def test_a_server_started_while_redis_is_down_answers_503_then_serves_once_redis_answers(own_redis, start_server):
    own_redis.kill()
    server = start_server(own_redis.url, FEATURE_STORE_REDIS_TIMEOUT_MS="300")
    wait_until(lambda: server.health() == 503, "503 while Redis is down", timeout=120)
    assert "cannot connect" in server.client.get("/healthz").json()["reason"]
    assert server.predict("churn", {"user_id": 5}).status_code == 503
    own_redis.restart()
    server.wait_healthy()
    assert server.predict("churn", {"user_id": 5}).status_code == 200


def test_the_sqlite_online_store_serves_too(home, tmp_path, start_server):
    """The local default: one thread at a time reads the shared SQLite connection."""
    from feature_assets.serving import SqliteOnlineStore

    local = tmp_path / "home"
    local.mkdir()
    (local / "models").symlink_to(home / "models")
    with SqliteOnlineStore(local / "online.sqlite") as store:
        frames = write_snapshots(store, REGISTRY, users=50)
    server = start_server("", FEATURE_STORE_ONLINE="sqlite", FEATURE_STORE_HOME=str(local)).wait_healthy()
    assert server.client.get("/healthz").json()["online_store"]["kind"] == "sqlite"
    answers = [server.predict("churn", {"user_id": user}) for user in (1, 2, 3)]
    assert all(answer.status_code == 200 for answer in answers)
    features = server.client.post(
        "/v1/features/user_features", json={"entities": [{"user_id": 4}, {"user_id": 99}]}
    ).json()
    assert features["entities"][0]["features"]["plan"] == frames["user_features"]["plan"].iloc[3]
    assert features["entities"][1]["features"] is None

    # The README's curl examples, as written, against this server (the one with a key over TLS: test_server_keys).
    assert len(readme_curls(keyed=False)) == 7
    for command in readme_curls(keyed=False):
        command = command.replace("localhost:8000", server.url.removeprefix("http://")).replace("\\ ", " ")
        done = subprocess.run(f"{command} --fail-with-body", shell=True, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert done.stdout.strip(), command


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--port", "{taken}"], "cannot listen on 127.0.0.1:{taken}: Address already in use"),
        (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid:8000"),
        (["--port", "70000"], "cannot listen on 127.0.0.1:70000: a port is a number from 0 to 65535"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
    ],
)
def test_serve_refuses_in_one_line(arguments, message):
    import socket

    environment = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_STORE_ONLINE")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        command = [sys.executable, "-m", "feature_assets.cli", "serve", *[a.format(taken=port) for a in arguments]]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=120)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("featurestore: ") and done.stderr.count("\n") == 1
    assert message.format(taken=port) in done.stderr


def test_serve_refuses_a_metrics_folder_it_cannot_create_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "a_file" / "metrics")}
    command = [sys.executable, "-m", "feature_assets.cli", "serve"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=120)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("featurestore: PROMETHEUS_MULTIPROC_DIR ") and done.stderr.count("\n") == 1
    assert "cannot be created: Not a directory" in done.stderr

"""Who may call `featurestore serve`: API keys and their scopes, TLS, and the refusal to listen beyond loopback
without keys. A real server process with keys made by `featurestore api-key`, over HTTPS with a self-signed
certificate made by openssl, against a real Redis."""

import contextlib
import hashlib
import io
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import REDIS_URL
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# home and online: test_server's module fixtures (the models, the online store), made again for this module.
from test_server import ROOT, Server, home, online, readme_curls  # noqa: F401

from feature_assets.cli import main
from feature_assets.errors import ConfigError
from feature_assets.serving.api_keys import ApiKey, ApiKeys, guarded, parse_scopes

# Each key's scopes; `admin` is the test client's own (health, metrics).
SCOPES = {
    "reader": "read",
    "predictor": "predict",
    "scraper": "metrics",
    "pusher": "push",
    "user_pusher": "push:user_features",
    "country_pusher": "push:country_features",
    "admin": "read,predict,metrics",
}
# A whole snapshot of one user, as a push carries it.
PUSHED = {"user_id": 1, "computed_at": datetime.now(UTC).replace(tzinfo=None).isoformat(), "age": 41, "country": "DE"}
PUSHED |= {"plan": "pro", "events_30d": 12, "avg_order_30d": 31.5}
# A request to each guarded route, by the scope it needs.
ROUTES = {
    "read": ("POST", "/v1/features/user_features", {"entities": [{"user_id": 1}]}),
    "predict": ("POST", "/v1/predict/churn", {"entities": [{"user_id": 1}]}),
    "metrics": ("GET", "/metrics", None),
    "push:user_features": ("POST", "/v1/push/user_features", {"rows": [PUSHED]}),
}
ROUTE_PATHS = {
    "read": "/v1/features/{view}",
    "predict": "/v1/predict/{model}",
    "metrics": "/metrics",
    "push:user_features": "/v1/push/{view}",
}


def make_key(name: str, scopes: str) -> tuple[str, str]:
    """A key and its line, as `featurestore api-key` prints them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["api-key", name, scopes]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "shown this once" in lines[0], lines
    return lines[1], lines[3]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """A key per entry of SCOPES, and the keys file of their lines (with a comment and a blank line)."""
    made = {name: make_key(name, scopes) for name, scopes in SCOPES.items()}
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text("# the services that call us\n\n" + "".join(f"{line}\n" for _, line in made.values()))
    return {name: key for name, (key, _) in made.items()}, path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def server(home, online, keys, certificate) -> Iterator[Server]:  # noqa: F811
    """Two workers with keys, over HTTPS, listening on every address (keys allow it)."""
    secrets, path = keys
    cert, key = certificate
    running = Server(
        home, REDIS_URL,
        arguments=["--host", "0.0.0.0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        client={"verify": trusting(cert), "headers": {"Authorization": f"Bearer {secrets['admin']}"}},
        FEATURE_STORE_API_KEYS_FILE=str(path),
    )  # fmt: skip
    yield running.wait_healthy()
    running.stop()


def refusals(server: Server, route: str, cause: str) -> float:
    return server.metrics().get(f'featurestore_http_refusals_total{{cause="{cause}",route="{route}"}}', 0.0)


def call(server: Server, scope: str, headers: dict[str, str], query: str = "") -> httpx.Response:
    """A request to the route of `scope` with only these headers (not the test client's key)."""
    method, path, body = ROUTES[scope]
    with httpx.Client(base_url=server.url, verify=trusting(server_cert(server)), timeout=10) as client:
        return client.request(method, path + query, json=body, headers=headers)


def server_cert(server: Server) -> Path:
    return Path(server.process.args[server.process.args.index("--ssl-certfile") + 1])


def test_each_scope_allows_exactly_its_routes_and_the_refusals_are_counted(server, keys):
    secrets, _ = keys
    before = {scope: refusals(server, ROUTE_PATHS[scope], "forbidden") for scope in ROUTES}
    forbidden = dict.fromkeys(ROUTES, 0)
    for name in ("reader", "predictor", "scraper", "pusher", "user_pusher", "country_pusher"):
        for scope in ROUTES:
            answer = call(server, scope, {"Authorization": f"Bearer {secrets[name]}"})
            # `push` is every view's push scope; `push:<view>` that view's only.
            if scope == SCOPES[name] or (SCOPES[name] == "push" and scope.startswith("push:")):
                assert answer.status_code == 200, (name, scope, answer.text)
            else:
                forbidden[scope] += 1
                assert answer.status_code == 403, (name, scope, answer.text)
                assert answer.json() == {
                    "error": f"the key {name} has no scope {scope}; its scopes: {SCOPES[name]}",
                    "cause": "forbidden",
                }
    for scope in ROUTES:
        assert refusals(server, ROUTE_PATHS[scope], "forbidden") - before[scope] == forbidden[scope]
    # /healthz stays open: load balancers probe it without a key.
    assert httpx.get(f"{server.url}/healthz", verify=trusting(server_cert(server))).status_code == 200


@pytest.mark.parametrize(
    "headers, query, cause",
    [
        ({}, "", "no_key"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "", "no_key"),
        ({"Authorization": "Bearer"}, "", "no_key"),
        ({"Authorization": "Bearer fs_not_one_of_ours"}, "", "unknown_key"),
        ({}, "?api_key={admin}", "key_in_url"),
        ({}, "?key={admin}", "key_in_url"),
        ({"Authorization": "Bearer {admin}"}, "?api_key={admin}", "key_in_url"),
    ],
)
def test_no_key_an_unknown_one_or_one_in_the_url_is_a_401_on_every_guarded_route(server, keys, headers, query, cause):
    secrets, _ = keys
    filled = {name: value.format(**secrets) for name, value in headers.items()}
    before = refusals(server, ROUTE_PATHS["predict"], cause)
    for scope in ROUTES:
        answer = call(server, scope, filled, query.format(**secrets))
        assert answer.status_code == 401, (scope, answer.text)
        assert answer.json()["cause"] == cause and answer.headers["WWW-Authenticate"] == "Bearer"
        assert secrets["admin"] not in answer.text
    assert refusals(server, ROUTE_PATHS["predict"], cause) - before == 1


def test_the_scheme_is_case_insensitive_and_the_key_is_never_logged_only_its_name(server, keys):
    secrets, _ = keys
    assert call(server, "predict", {"Authorization": f"bearer {secrets['predictor']}"}).status_code == 200
    assert call(server, "predict", {"Authorization": f"Bearer {secrets['scraper']}"}).status_code == 403
    said = server.line + server.log.read_text()
    assert ", ".join(SCOPES) in server.line  # the start line names the keys it takes
    for name, key in secrets.items():
        assert key not in said and hashlib.sha256(key.encode()).hexdigest() not in said, name


def test_tls_with_a_self_signed_certificate_is_served_and_verified(server, keys, certificate):
    cert, _ = certificate
    assert server.url.startswith("https://") and "featurestore serve: https://0.0.0.0:" in server.line
    with httpx.Client(verify=trusting(cert)) as client:
        assert client.get(f"{server.url}/healthz").status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), httpx.Client() as untrusting:
        untrusting.get(f"{server.url}/healthz")  # the system's CAs do not vouch for it
    with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
        httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)


def test_the_readme_call_with_a_key_over_tls_answers_as_written(server, keys, certificate):
    secrets, _ = keys
    cert, _ = certificate
    (command,) = readme_curls(keyed=True)
    command = command.replace("https://features.internal:8000", server.url).replace("\\ ", " ")
    command = command.replace("/etc/featurestore/tls/cert.pem", str(cert))
    environment = {**os.environ, "FEATURE_STORE_API_KEY": secrets["predictor"]}
    done = subprocess.run(
        f"{command} --fail-with-body", shell=True, capture_output=True, text=True, timeout=30, env=environment
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert json.loads(done.stdout)["predictions"][0]["entity"]["user_id"] == 42


# --- at start: one line, exit 1 ------------------------------------------------------------------------------------


def serve_refusal(*arguments: str, **env: str) -> str:
    """What `featurestore serve` says on stderr when it refuses to start (in one line, exit 1)."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_STORE_ONLINE", "FEATURE_STORE_API"))},
        **env,
    }
    command = [sys.executable, "-m", "feature_assets.cli", "serve", "--port", "0", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=120)
    assert (done.returncode, done.stdout) == (1, ""), done
    assert done.stderr.startswith("featurestore: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_malformed_or_unreadable_keys_file_stops_the_server_in_one_line_naming_the_line_never_the_key(tmp_path):
    key, line = make_key("scorer", "predict")
    keys = tmp_path / "api-keys"
    keys.write_text(f"{line}\n# a raw key pasted where its digest goes:\nchurn-service {key} predict\n")
    said = serve_refusal(FEATURE_STORE_API_KEYS_FILE=str(keys))
    assert f"FEATURE_STORE_API_KEYS_FILE {keys} line 3: the second field is not 64 hex digits" in said
    assert key not in said and "churn-service" not in said

    said = serve_refusal(FEATURE_STORE_API_KEYS_FILE=str(tmp_path))
    assert said == f"featurestore: FEATURE_STORE_API_KEYS_FILE {tmp_path} cannot be read: Is a directory\n"
    said = serve_refusal(FEATURE_STORE_API_KEYS_FILE="")
    assert "FEATURE_STORE_API_KEYS_FILE is set but empty" in said


def test_listening_beyond_loopback_without_keys_is_refused_in_one_line_unless_insecure(home, online):  # noqa: F811
    said = serve_refusal("--host", "0.0.0.0")
    assert said.startswith("featurestore: refusing to listen on 0.0.0.0 without API keys: ")
    assert "FEATURE_STORE_API_KEYS_FILE" in said and "--insecure" in said

    insecure = Server(home, REDIS_URL, workers=1, arguments=["--host", "0.0.0.0", "--insecure"])
    try:
        assert "http://0.0.0.0:" in insecure.line and "no API keys (--insecure)" in insecure.line
        assert insecure.wait_healthy().client.get("/metrics").status_code == 200  # no key asked
    finally:
        insecure.stop()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--ssl-keyfile", "{key}"], "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", "{key}"], "cannot serve TLS with --ssl-certfile {key}: "),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{missing}"], "No such file or directory"),
    ],
)
def test_a_certificate_that_cannot_be_served_is_refused_in_one_line(certificate, tmp_path, arguments, message):
    cert, key = certificate
    files = {"cert": cert, "key": key, "missing": tmp_path / "missing.pem"}
    said = serve_refusal(*[argument.format(**files) for argument in arguments])
    assert message.format(**files) in said


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["bad name", "read"], "a key's name takes 1 to 64 letters, digits and . _ @ -"),
        (["loader", "push:orders"], "scopes: push:orders names no feature view; the views: country_features"),
        (["reader", "read,write"], "scopes: scope 2 of 2 is not one of read, predict, push, push:<view>, metrics"),
    ],
)
def test_api_key_refuses_a_bad_name_or_scope_in_one_line(capsys, arguments, message):
    assert main(["api-key", *arguments]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("featurestore: ") and err.count("\n") == 1
    assert message in err


# --- the parts, in process -----------------------------------------------------------------------------------------

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    "content, problem",
    [
        (f"scorer {DIGEST}\n", "line 1: takes `<name> <sha256 hex of the key> <scopes>`, found 2 fields"),
        (f"# ok\n\nscorer {DIGEST} predict,wrte\n", "line 3: scope 2 of 2 is not one of read, predict, push"),
        (f"scorer {DIGEST} push:orders\n", "line 1: push:orders names no feature view; the views: country_features"),
        (f"scorer {DIGEST} predict\nscorer {'cd' * 32} read\n", "line 2: the name scorer is already on line 1"),
        (f"a {DIGEST} predict\nb {DIGEST.upper()} read\n", "line 2: the same key as line 1"),
        (f"-scorer {DIGEST} read\n", "line 1: the name takes 1 to 64 letters"),
        (b"scorer \xff read\n", "line 1: is not UTF-8"),
        ("# nobody yet\n", "holds no key"),
    ],
)
def test_a_keys_file_is_refused_by_line_and_problem(tmp_path, content, problem):
    path = tmp_path / "api-keys"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as refused:
        ApiKeys.from_file(path, {"user_features", "country_features"})
    assert f"FEATURE_STORE_API_KEYS_FILE {path} {problem}" in str(refused.value)
    assert DIGEST not in str(refused.value).lower()


def test_push_scopes_parse_and_match_one_view_or_all():
    assert parse_scopes("read,push:user_features") == {"read", "push:user_features"}
    one = ApiKey("loader", b"", parse_scopes("push:user_features"))
    every = ApiKey("loader", b"", parse_scopes("push"))
    assert one.allows("push:user_features") and not one.allows("push:country_features")
    assert every.allows("push:user_features") and every.allows("push:country_features")
    assert not one.allows("read") and not every.allows("predict") and not every.allows("metrics")
    assert not ApiKey("reader", b"", parse_scopes("read,predict,metrics")).allows("push:user_features")
    for bad in ["", "read,", "Read", "push:", "push:User", "push:a-b", "read predict", "push:*"]:
        with pytest.raises(ValueError, match="is not one of read, predict, push, push:<view>, metrics"):
            parse_scopes(bad)


def test_a_push_route_guarded_by_its_view_scope_answers_only_keys_with_push_of_that_view():
    """The guard a route of the scope "push:{view}" gets, resolved from its path, on an app of its own."""
    keys = {name: f"fs_{name}_key" for name in ("one", "every", "reader")}
    scopes = {"one": "push:user_features", "every": "push", "reader": "read"}
    api_keys = ApiKeys(
        ApiKey(name, hashlib.sha256(key.encode()).digest(), parse_scopes(scopes[name])) for name, key in keys.items()
    )

    async def push(request: Request) -> Response:
        return JSONResponse({"pushed": request.path_params["view"]})

    from feature_assets.serving.server import _counted

    route = "/v1/push/{view}"
    app = Starlette(routes=[Route(route, _counted(route, guarded(api_keys, "push:{view}", push)), methods=["POST"])])

    async def answers() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            calls = [("one", "user_features"), ("one", "country_features"), ("every", "user_features"),
                     ("every", "country_features"), ("reader", "user_features"), (None, "user_features")]  # fmt: skip
            return [
                await client.post(f"/v1/push/{view}", headers={"Authorization": f"Bearer {keys[name]}"} if name else {})
                for name, view in calls
            ]

    answered = anyio.run(answers)
    assert [answer.status_code for answer in answered] == [200, 403, 200, 200, 403, 401]
    assert answered[0].json() == {"pushed": "user_features"}
    assert answered[1].json() == {
        "error": "the key one has no scope push:country_features; its scopes: push:user_features",
        "cause": "forbidden",
    }

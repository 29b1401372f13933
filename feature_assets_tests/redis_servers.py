"""Throwaway Redis servers for tests of the online store's Redis variants: a 3-master Cluster, a TLS-only server and a
server that requires an ACL user.

Each server runs from Debian's redis-server on 127.0.0.1 only, with a config generated into a fresh folder under
the one the caller gives (pytest's tmp_path or tmp_path_factory), and with no persistence (`save ""`, no AOF), so
start-up takes a fraction of a second and stopping loses nothing. Every `start_*` either returns a running server or
raises RuntimeError with the server's log tail, having stopped whatever it had started.

The processes must never outlive the test session, so:
- each redis-server gets a session (and process group) of its own, so a Ctrl-C in the terminal does not hit it
  half-way, and `stop()` can SIGKILL the whole group by the recorded pid;
- `stop()` is registered with atexit when the server starts (and unregistered when it stops), for a test that forgot;
- where util-linux's setpriv is installed, the server is started through `setpriv --pdeathsig KILL`, so the kernel
  kills it when the process that started it dies (even by SIGKILL, when atexit does not run). The signal fires when
  the starting *thread* exits, so start servers from the main thread (as pytest fixtures do).

This module holds no pytest fixtures: the tests (or conftest) wrap these functions in fixtures of the scope they need.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
# Seconds a server may take to answer: a cold start takes ~50 ms, so this only bounds a broken one.
START_TIMEOUT = 10.0
# Attempts with fresh ports when a port picked as free was taken by someone else before the server bound it.
PORT_ATTEMPTS = 3


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that are free right now, chosen by the kernel (bind to port 0).

    All sockets stay bound until every port is picked, so the ports are distinct; they are released before returning,
    so another process may take one before the server binds it. The `start_*` functions detect that (the server's log
    says "Address already in use") and retry with fresh ports.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


class PortInUse(RuntimeError):
    """A server could not bind a port picked as free a moment before: retry with other ports."""


def _quote(value: object) -> str:
    """A redis.conf argument: double-quoted, so paths with spaces and the empty string (`save ""`) survive."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class RedisProcess:
    """One redis-server started from a generated config file, with its output in `<name>.log` next to it."""

    def __init__(self, workdir: Path, name: str, settings: Iterable[tuple[str, ...]]):
        self.name = name
        self.config_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"
        # Logs go to stdout (no `logfile`), so errors printed before the config is read land in the same file.
        base = [("bind", HOST), ("dir", str(workdir)), ("daemonize", "no"), ("save", ""), ("appendonly", "no")]
        lines = [" ".join([key, *(_quote(value) for value in values)]) for key, *values in [*base, *settings]]
        self.config_path.write_text("\n".join(lines) + "\n")
        command = [REDIS_SERVER, str(self.config_path)]
        if shutil.which("setpriv"):
            command = ["setpriv", "--pdeathsig", "KILL", *command]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll `check` (a False or a Redis/OS error means not yet) until it passes, the process exits, or `timeout`.

        Raises PortInUse if the server exited because its port was taken, RuntimeError (with the log tail) otherwise.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if not self.running():
                tail = self.log_tail()
                error = PortInUse if "Address already in use" in tail else RuntimeError
                raise error(f"{self.name} exited with code {self.process.returncode} before {what}; log:\n{tail}")
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise RuntimeError(
                    f"{self.name} did not reach {what} within {timeout:.0f} s{detail}; log:\n{self.log_tail()}"
                )
            try:
                if check():
                    return
                last_error = None
            except (redis.RedisError, OSError) as error:
                last_error = error
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server's process group (nothing is persisted, so there is nothing to shut down cleanly)."""
        if self.running():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not get ignored
            self.process.kill()
            self.process.wait()


class _Servers:
    """What every kind has in common: its processes, its own folder, and a stop() that is safe to call twice."""

    def __init__(self, folder: str | os.PathLike[str], prefix: str):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        self.processes: list[RedisProcess] = []
        self._stopped = False
        atexit.register(self.stop)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def _start(self, name: str, settings: Iterable[tuple[str, ...]]) -> RedisProcess:
        process = RedisProcess(self.workdir, name, settings)
        self.processes.append(process)
        return process

    def _forget(self, process: RedisProcess) -> None:
        process.kill()
        self.processes.remove(process)

    def stop(self) -> None:
        """Kill every process and remove the server's folder (configs, logs, certificates, cluster state)."""
        if self._stopped:
            return
        self._stopped = True
        for process in self.processes:
            process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _client(port: int, **kwargs) -> redis.Redis:
    """A client for readiness checks: no retries (redis-py 8 retries 3 times with backoff, ~4 s) and short timeouts,
    so each check costs at most a second and the deadline in wait_until holds."""
    retry = Retry(NoBackoff(), 0)
    return redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1, retry=retry, **kwargs)


def _answers(process: RedisProcess, port: int, **kwargs) -> Callable[[], bool]:
    """A check that the server on `port` answers and is `process` (INFO's process_id): if someone else took the port
    before our server could bind it, the check must not pass on their server while ours is exiting."""

    def check() -> bool:
        with _client(port, **kwargs) as client:
            return int(client.info("server")["process_id"]) == process.pid

    return check


# --- Cluster ------------------------------------------------------------------------------------------------------


class Cluster(_Servers):
    """A Redis Cluster of masters without replicas: `.nodes` [(host, port)], `.url` (the first node's), `.kill(i)`."""

    def __init__(self, folder: str | os.PathLike[str]):
        super().__init__(folder, "redis-cluster-")
        self.nodes: list[tuple[str, int]] = []

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.nodes[0][1]}"

    def kill(self, node_index: int) -> None:
        """SIGKILL one master, to test what a client does when part of the keyspace goes away. With no replicas the
        node's slots stay unserved: the other nodes report cluster_state:fail once cluster-node-timeout has passed."""
        self.processes[node_index].kill()


def start_cluster(folder: str | os.PathLike[str], masters: int = 3, node_timeout_ms: int = 2000) -> Cluster:
    """Start `masters` cluster nodes on free loopback ports, join them with `redis-cli --cluster create`, and return
    once every node reports cluster_state:ok.

    Each node's cluster bus gets a free port of its own through `cluster-port` (Redis 7) instead of the default
    port + 10000, which falls outside 0-65535 for much of Linux's ephemeral range (32768-60999) and is not known to
    be free. `node_timeout_ms` is short (the default is 15 s) so a test of `kill()` sees the failure quickly.
    """
    cluster = Cluster(folder)
    try:
        for attempt in range(PORT_ATTEMPTS):
            ports = free_ports(2 * masters)
            nodes = []
            for port, bus_port in zip(ports[:masters], ports[masters:]):
                node = cluster._start(
                    f"node-{port}",
                    [
                        ("port", str(port)),
                        ("cluster-enabled", "yes"),
                        ("cluster-port", str(bus_port)),
                        ("cluster-config-file", str(cluster.workdir / f"nodes-{port}.conf")),
                        ("cluster-node-timeout", str(node_timeout_ms)),
                    ],
                )
                nodes.append((node, port))
            try:
                for node, port in nodes:
                    node.wait_until(_answers(node, port), "answering")
                break
            except PortInUse:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                for node, _ in nodes:
                    cluster._forget(node)
        cluster.nodes = [(HOST, port) for _, port in nodes]
        _create_cluster(cluster)
        for node, port in nodes:
            node.wait_until(lambda port=port: _cluster_ok(port, masters), "cluster_state:ok")
        return cluster
    except BaseException:
        cluster.stop()
        raise


def _create_cluster(cluster: Cluster) -> None:
    """Assign the 16384 slots evenly and have the nodes meet (redis-cli waits for the join itself)."""
    addresses = [f"{host}:{port}" for host, port in cluster.nodes]
    command = [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"`{' '.join(command)}` did not finish within 60 s; output:\n{error.stdout}") from error
    if result.returncode != 0 or "[OK] All 16384 slots covered" not in result.stdout:
        logs = "\n".join(f"--- {node.name}:\n{node.log_tail(5)}" for node in cluster.processes)
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n{logs}"
        )


def _cluster_ok(port: int, masters: int) -> bool:
    """The node knows every master and sees every slot served: a client may start from it."""
    with _client(port) as client:
        info = client.cluster("INFO")
    if isinstance(info, bytes):
        info = info.decode()
    if isinstance(info, str):
        info = dict(line.split(":", 1) for line in info.split() if ":" in line)
    fields = {str(key): str(value) for key, value in info.items()}
    return fields.get("cluster_state") == "ok" and int(fields.get("cluster_known_nodes", 0)) >= masters


# --- TLS ----------------------------------------------------------------------------------------------------------


class TlsRedis(_Servers):
    """A redis-server that speaks only TLS: `.url` (rediss://), `.port`, `.ca_cert` (the CA to verify it with)."""

    def __init__(self, folder: str | os.PathLike[str]):
        super().__init__(folder, "redis-tls-")
        self.port = 0
        self.ca_cert = self.workdir / "ca.crt"
        self.cert = self.workdir / "server.crt"
        self.key = self.workdir / "server.key"

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for IP 127.0.0.1 and DNS localhost (so hostname checks pass
    with either), valid for two days. EC P-256 keys: generating them takes milliseconds where RSA takes up to a
    second. The extensions (CA basicConstraints and keyUsage, key identifiers) are the ones strict verifiers ask for.
    Returns (ca_cert, server_cert, server_key)."""

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=folder, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=featurestore test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid,issuer\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial",
            str(secrets.randbits(63)), "-days", "2", "-extfile", "server.ext", "-out", "server.crt")  # fmt: skip
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def start_tls_redis(folder: str | os.PathLike[str]) -> TlsRedis:
    """Start a redis-server listening only on a TLS port (`port 0` turns plain TCP off), with a fresh CA and server
    certificate, and return once a TLS client that verifies the certificate gets PONG. Clients need no certificate
    of their own (`tls-auth-clients no`)."""
    server = TlsRedis(folder)
    try:
        server.ca_cert, server.cert, server.key = make_certificates(server.workdir)
    except BaseException:
        server.stop()
        raise
    tls = [
        ("port", "0"),
        ("tls-cert-file", str(server.cert)),
        ("tls-key-file", str(server.key)),
        ("tls-ca-cert-file", str(server.ca_cert)),
        ("tls-auth-clients", "no"),
    ]
    return _start_on_a_free_port(
        server,
        "tls",
        lambda port: [*tls, ("tls-port", str(port))],
        lambda process, port: _answers(process, port, ssl=True, ssl_ca_certs=str(server.ca_cert)),
        "answering over TLS",
    )


def _start_on_a_free_port(server, name: str, settings, check, what: str):
    """Starts `server`'s one process on a free port (server.port), with fresh ports while another process takes the
    one picked first; stops whatever it started if it fails."""
    try:
        for attempt in range(PORT_ATTEMPTS):
            (server.port,) = free_ports(1)
            process = server._start(f"{name}-{server.port}", settings(server.port))
            try:
                process.wait_until(check(process, server.port), what)
                return server
            except PortInUse:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                server._forget(process)
        raise AssertionError("unreachable")
    except BaseException:
        server.stop()
        raise


# --- ACL ----------------------------------------------------------------------------------------------------------


class AclRedis(_Servers):
    """A redis-server whose only user is `.username` with `.password`: `.url` carries both, the default user is off."""

    def __init__(self, folder: str | os.PathLike[str], username: str):
        super().__init__(folder, "redis-acl-")
        self.username = username
        self.password = secrets.token_hex(16)  # hex: safe in a URL without quoting
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{self.username}:{self.password}@{HOST}:{self.port}/0"


def start_acl_redis(folder: str | os.PathLike[str], username: str = "featurestore") -> AclRedis:
    """Start a redis-server on which a connection must AUTH as `username` (random password, all keys, channels and
    commands) and the default user is disabled, so a client that drops the URL's credentials fails instead of
    silently working. The users are `user` lines in the generated redis.conf."""
    server = AclRedis(folder, username)
    return _start_on_a_free_port(
        server,
        "acl",
        lambda port: [
            ("port", str(port)),
            ("user", "default", "off"),
            ("user", username, "on", f">{server.password}", "~*", "&*", "+@all"),
        ],
        lambda process, port: _answers(process, port, username=username, password=server.password),
        "answering the ACL user",
    )


# --- A server that goes away and comes back -------------------------------------------------------------------


class RestartableRedis(_Servers):
    """A plain redis-server that persists every write (AOF, fsync always), so it can be killed and started again on
    the same port with its data: what a client sees of a Redis outage and its end. `.url`, `.port`, `.process`."""

    def __init__(self, folder: str | os.PathLike[str]):
        super().__init__(folder, "redis-restartable-")
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def process(self) -> RedisProcess:
        return self.processes[-1]

    def settings(self, port: int) -> list[tuple[str, ...]]:
        return [("port", str(port)), ("appendonly", "yes"), ("appendfsync", "always")]

    def kill(self) -> None:
        """SIGKILL the server; what it acknowledged is on disk."""
        self.process.kill()

    def restart(self) -> None:
        """Start the server again on its port (after kill), and return once it answers with its data loaded."""
        self._forget(self.process)
        process = self._start(f"restartable-{self.port}-again", self.settings(self.port))
        answers = _answers(process, self.port)

        def loaded() -> bool:
            with _client(self.port) as client:
                return answers() and client.info("persistence")["loading"] == 0

        process.wait_until(loaded, "answering with its data loaded")


def start_restartable_redis(folder: str | os.PathLike[str]) -> RestartableRedis:
    server = RestartableRedis(folder)
    return _start_on_a_free_port(
        server, "restartable", server.settings, lambda process, port: _answers(process, port), "answering"
    )

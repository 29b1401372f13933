"""What API keys cost `featurestore serve`: server CPU per one-entity prediction with and without keys (not a test).

    .venv/bin/python benchmarks/serve_keys.py [--rate 300] [--seconds 10] [--rounds 5] [--control] [--keys 50]
        [--users 2000] [--redis-url redis://127.0.0.1:6379/6]

Two servers of one worker each, on the same models and Redis (benchmarks/serve.py builds them): one without keys, one
with a keys file of --keys keys, called with one of them (scope predict). Both answer POST /v1/predict/churn_model
for one user at a fixed --rate each, at the same time, for --seconds, in --rounds rounds: whatever else the box does
hits both alike. The figure is the workers' CPU time (user + system, from /proc) per answered request,
which the load on the box changes little; the target is under 5% more with keys. Next to it, the key check alone
(ApiKeys.check on a request with the header, in this process): its CPU per call as a share of a request's, a figure
that end-to-end noise cannot blur. --control runs the second server without keys too (the header still sent): the
difference two like servers show on this box, which bounds what the end-to-end ratio can resolve. The Redis database
is flushed before and after.
"""

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from serve import Run, _build, _start_server, _stop, _workers_cpu_seconds, load  # serve puts the project on sys.path

TARGET = 0.05  # the most keys may add to a one-entity request's server CPU
PATH = "/v1/predict/churn_model"


def _key_check_seconds(keys_file: Path, key: str, calls: int) -> float:
    """CPU seconds of one ApiKeys.check, on a request as Starlette builds it from the ASGI scope."""
    from starlette.requests import Request

    from feature_assets.serving.api_keys import ApiKeys

    keys = ApiKeys.from_file(keys_file)
    scope = {
        "type": "http", "method": "POST", "path": PATH, "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"28"),
                    (b"authorization", f"Bearer {key}".encode())],
    }  # fmt: skip
    for _ in range(1000):
        keys.check(Request(scope), "predict")
    started = time.process_time()
    for _ in range(calls):
        keys.check(Request(scope), "predict")  # a new Request each time: its headers are parsed per request
    spent = time.process_time() - started
    started = time.process_time()
    for _ in range(calls):
        Request(scope)
    return (spent - (time.process_time() - started)) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s offered to each server in its turn")
    parser.add_argument("--seconds", type=float, default=10.0, help="each round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=50, help="keys in the keys file")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6", help="the online store (flushed)")
    parser.add_argument("--control", action="store_true", help="the second server without keys too (the noise floor)")
    args = parser.parse_args(argv)

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    directory = Path(tempfile.mkdtemp(prefix="featurestore-keys-bench-"))
    try:
        print(f"Building: {args.users:,} users online, churn + ltv trained, a keys file of {args.keys} keys ...")
        _build(directory, args.redis_url, args.users)
        keys = [f"fs_bench_key_{n:04d}_{'x' * 24}" for n in range(args.keys)]
        keys_file = directory / "api-keys"
        keys_file.write_text(
            "".join(f"service-{n} {hashlib.sha256(key.encode()).hexdigest()} predict\n" for n, key in enumerate(keys))
        )
        key = keys[len(keys) // 2]
        check = _key_check_seconds(keys_file, key, 20_000)

        plain, plain_port = _start_server(directory, args.redis_url, 1, "plain.log")
        keyed_env = {} if args.control else {"FEATURE_STORE_API_KEYS_FILE": str(keys_file)}
        second = "control (no keys)" if args.control else "with keys"
        keyed, keyed_port = _start_server(directory, args.redis_url, 1, "keyed.log", **keyed_env)
        servers = {
            "without keys": (plain, plain_port, b""),
            second: (keyed, keyed_port, f"Authorization: Bearer {key}\r\n".encode()),
        }
        cpu = dict.fromkeys(servers, 0.0)
        answered = dict.fromkeys(servers, 0)
        errors = dict.fromkeys(servers, 0)
        ratios = []
        try:
            rng = np.random.default_rng(7)
            bodies = [
                json.dumps({"entities": [{"user_id": int(u)}]}).encode() for u in rng.integers(1, args.users, 5000)
            ]

            async def both(rate: float, seconds: float) -> list[Run]:
                return await asyncio.gather(*(
                    load("127.0.0.1", port, PATH, bodies, name=name, rate=rate, seconds=seconds,
                         connections=args.connections, headers=headers)
                    for name, (_, port, headers) in servers.items()
                ))  # fmt: skip

            for round_ in range(args.rounds + 1):  # round 0 warms up
                before = {name: _workers_cpu_seconds(process.pid) for name, (process, _, _) in servers.items()}
                runs = asyncio.run(both(args.rate, args.seconds if round_ else 3.0))
                spent = {name: _workers_cpu_seconds(servers[name][0].pid) - before[name] for name in servers}
                per = {run.name: spent[run.name] / max(run.answered, 1) for run in runs}
                ratio = per[second] / per["without keys"]
                label = f"round {round_}" if round_ else "warm-up"
                print(f"  {label}: " + ", ".join(f"{run.name} {per[run.name] * 1e3:.3f} ms CPU/request "
                      f"({run.answered:,} answered, {run.errors} errors)" for run in runs)
                      + f"; {second} / without {ratio:.3f}", flush=True)  # fmt: skip
                for run in runs:
                    for sample in run.error_samples:
                        print(f"    {run.name}: {sample}")
                    if round_:
                        cpu[run.name] += spent[run.name]
                        answered[run.name] += run.answered
                        errors[run.name] += run.errors
                if round_:
                    ratios.append(ratio)
        finally:
            for process, _, _ in servers.values():
                _stop(process)
    finally:
        client.flushdb()
        client.close()
        shutil.rmtree(directory, ignore_errors=True)

    per_request = {name: cpu[name] / max(answered[name], 1) for name in servers}
    ratio = per_request[second] / per_request["without keys"]
    ratios.sort()
    share = check / per_request["without keys"]
    print(f"\nPOST {PATH}, one user, {args.rate:g}/s to each server at once, {args.rounds} x {args.seconds:g} s, "
          "one worker each:")  # fmt: skip
    for name in servers:
        print(f"  {name:<17} {per_request[name] * 1e3:.3f} ms server CPU/request ({answered[name]:,} answered, "
              f"{errors[name]} errors)")  # fmt: skip
    print(f"  {second} / without keys: {ratio:.3f} ({ratio - 1:+.1%}; rounds {ratios[0]:.3f} to {ratios[-1]:.3f}); "
          f"under +{TARGET:.0%}: {'yes' if ratio - 1 < TARGET else 'NO'}")  # fmt: skip
    print(
        f"  the key check alone (SHA-256, look-up, constant-time compare, scope; {args.keys} keys): "
        f"{check * 1e6:.1f} us CPU, {share:.2%} of a request's; under {TARGET:.0%}: {'yes' if share < TARGET else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/ensure-services, which `make test` runs: it must not open the machine's PostgreSQL to every local role."""

import re
import subprocess
from pathlib import Path

from conftest import POSTGRES_URL

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ensure-services"


def _commands() -> list[str]:
    return [line.split(" #", 1)[0] for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_script_adds_no_trust_rule_only_a_password_rule_for_its_own_role():
    commands = _commands()
    assert not [line for line in commands if re.search(r"\btrust\b", line)]
    [rule] = [line for line in commands if re.search(r"sed -i .*\bhost\b", line)]
    assert re.search(r"host all featurestore 127\.0\.0\.1/32 scram-sha-256", rule)


def test_a_running_postgres_is_used_as_it_is_and_its_url_is_all_the_script_prints():
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "FEATURE_STORE_TEST_POSTGRES_URL": POSTGRES_URL}
    # --no-browser, as `make check` runs it: without, a machine lacking chromium or Java installs them first (minutes).
    run = subprocess.run([str(SCRIPT), "--no-browser"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == POSTGRES_URL + "\n"

"""schemathesis against a real API process with a member key of a fresh team: the coverage, fuzzing and stateful
phases, every check (``--checks all``), bounded to a couple of minutes. No 5xx and no conformance failure.

The only relaxations are in ``schemathesis.toml`` beside this file (422 allowed on operations whose requests
name server-side things a schema cannot describe), each with its reason. The API's failed-authentication
throttle is raised for this run: schemathesis's ``ignored_auth`` check sends requests without a key or with a
wrong one on purpose, all from one address (the throttle has its own tests)."""

import re
import subprocess
import sys
from pathlib import Path

import redis as sync_redis
from arq.connections import ArqRedis

from schemas.teams import Role
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 16  # a fixed seed: a failure reproduces with the same command
MAX_EXAMPLES = 25  # per operation and phase; the whole run takes about 1-2 minutes on the 2-core machine
TEAM = "fuzz"


def _fresh_member_key() -> str:
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        keyed.install(client, team=TEAM)  # the team and its three keys, as the operator CLI writes them
    finally:
        client.close()
    return keyed.MEMBER  # keyed.install writes the same raw keys for every team it installs


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(
    processes: Processes, redis: ArqRedis, tmp_path: Path
) -> None:
    client = sync_redis.Redis.from_url(REDIS_URL)
    client.flushdb()  # only the fuzz team: the test team's keys are not in this database
    client.close()
    key = _fresh_member_key()
    endpoints = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}}  # nothing runs: no worker
    env = service_env(endpoints, SKILLMIX_AUTH_FAIL_BURST="1000000", SKILLMIX_DATA_DIR=str(tmp_path))
    api = processes.api(env)
    report = tmp_path / "junit.xml"
    command = [
        *(str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run"),
        f"{api}/openapi.json",
        *("-H", f"Authorization: Bearer {key}"),
        *("--checks", "all"),
        *("--phases", "coverage,fuzzing,stateful"),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)),
        *("--workers", "2", "--request-timeout", "20"),
        *("--report", "junit", "--report-junit-path", str(report)),
        "--no-color",
    ]
    if not Path(command[0]).exists():
        command[0] = "schemathesis"
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    summary = out[out.rfind("SUMMARY") :] if "SUMMARY" in out else out[-3000:]
    print(summary)
    assert run.returncode == 0, f"schemathesis found failures:\n{out[-20000:]}"
    cases = re.search(r"(\d+) generated", summary)
    assert cases and int(cases.group(1)) > 1000, summary  # it really ran every phase on every operation
    assert "Server error" not in out and "Tested: " in summary
    assert Role.MEMBER.value  # the key used is a member's (not an admin's): admin routes answer 403 to it

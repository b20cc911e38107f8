"""`skillmix local-llm`: serves the bundled model, registers it as endpoint `local` for running workers,
and unregisters and stops it on Ctrl-C (marked local_llm)."""

import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis as sync_redis
from arq.connections import ArqRedis

from store import keys
from tests import keyed
from tests.conftest import REDIS_URL, REPO, Processes, service_env
from tests.test_local_llm import needs_model


@pytest.mark.local_llm
@needs_model
def test_local_llm_registers_serves_a_job_and_cleans_up(processes: Processes, redis: ArqRedis) -> None:
    env = service_env()
    registry = sync_redis.Redis.from_url(REDIS_URL)
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "local-llm", "--parallel", "2"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not registry.hexists(keys.ENDPOINTS, "local"):
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "local-llm never registered"
            time.sleep(0.2)
        api = processes.api(env)  # no endpoint configured: the default `local` comes from the registry
        processes.worker(env)
        job = keyed.post(
            f"{api}/v1/jobs",
            json={"recipe": "prompts", "prompts": ["Name three colours."], "params": {"max_tokens": 32}},
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 120
        while (status := keyed.get(f"{api}/v1/jobs/{job_id}").json())["state"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["state"] == "completed" and status["counters"]["llm_calls"] >= 1, status
        row = keyed.get(f"{api}/v1/jobs/{job_id}/examples", params={"status": "accepted"}).json()
        assert row["model"].startswith("SmolLM2") and row["output"].strip()
    finally:
        server.send_signal(signal.SIGTERM)  # as docker or systemd stop it; Ctrl-C takes the same path
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
            pytest.fail(f"local-llm did not stop within 30 s of SIGTERM: {out}")
    assert server.returncode == 0, out
    assert "unregistered" in out
    served = re.search(r"at (http://\S+) as endpoint", out)
    assert served is not None, out
    with pytest.raises(httpx.ConnectError):  # the model server it started is gone too
        keyed.get(f"{served.group(1)}/models", timeout=5)
    assert not registry.hexists(keys.ENDPOINTS, "local")

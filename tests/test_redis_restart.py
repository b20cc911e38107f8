"""A Redis restart mid-job (append-only file on, as compose.yaml runs it) loses nothing, duplicates nothing."""

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis

from service.ports import free_port
from tests import keyed
from tests.conftest import Processes, service_env


class AofRedis:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
        client = sync_redis.Redis.from_url(self.url)
        try:
            keyed.install(client)  # the test team's keys, as in every test database (it keeps them on disk)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("needs redis-server and redis-cli on PATH")
    server = AofRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restart_mid_job(processes: Processes, aof_redis: AofRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=600, latency_ms=200)
    env = service_env({"fake": fake.endpoint_settings()}, SKILLMIX_REDIS_URL=aof_redis.url)
    api = processes.api(env)
    processes.worker(env)
    job_id = keyed.post(f"{api}/v1/jobs", json={"recipe": "prompts", "prompts": [f"Say {i}." for i in range(120)]}
                        ).json()["id"]  # fmt: skip
    deadline = time.monotonic() + 30
    while keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]["accepted"] < 20:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    aof_redis.stop()  # everything acknowledged so far is in the append-only file
    down = keyed.get(f"{api}/v1/jobs/{job_id}", timeout=30)
    assert down.status_code == 503 and "Redis" in down.json()["detail"], down.text
    assert down.headers["retry-after"] == "2"
    time.sleep(1.0)
    aof_redis.start()

    deadline = time.monotonic() + 90
    while True:
        try:
            status = keyed.get(f"{api}/v1/jobs/{job_id}").json()
        except (httpx.HTTPError, json.JSONDecodeError):
            status = {"state": "unreachable"}
        if status["state"] == "completed":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["counters"]["accepted"] == 120
    lines = keyed.get(f"{api}/v1/jobs/{job_id}/examples", timeout=30).text.splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(120))
    assert all(p.poll() is None for p in processes.procs), "API and worker survive the restart"

"""Graceful stop (issue #11.6): SIGTERM drains a worker and hands its chunks back at once.

Real worker processes, real Redis, the fake endpoint. The heartbeat is long (dead after 3 x 20 s), so a
chunk of the stopped worker running again within seconds can only be its hand-back, not the reaper.
"""

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis as sync_redis
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from schemas.jobs import ChunkTask, JobRecord, PromptsJobSpec
from store import keys, records
from tests import keyed
from tests.conftest import REDIS_URL, TIMING, Processes, service_env
from tests.raw_client import raw_client
from tests.test_end_to_end import examples, finished, wait_for
from workers import drain
from workers.drain import WorkerDraining
from workers.generate import run_chunk
from workers.recipes import recipe_for
from workers.tally import Tally

pytestmark = TIMING

HEARTBEAT_S = 20.0  # a worker is taken for dead only after 60 s of silence
SLOW = {"SKILLMIX_HEARTBEAT_S": str(HEARTBEAT_S), "SKILLMIX_STALL_S": "600", "SKILLMIX_WORKER_MAX_JOBS": "2"}


def submit(api: str, n: int, chunk_size: int) -> str:
    prompts = [f"Write one line about lighthouse number {i}." for i in range(n)]
    body = {"recipe": "prompts", "prompts": prompts, "chunk_size": chunk_size, "dedup": {"exact": False}}
    response = keyed.post(f"{api}/v1/jobs", json=body, timeout=60)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def held_by(plain: sync_redis.Redis, pid: int) -> set[str]:
    """arq ids of the chunks the worker process ``pid`` is recorded as running (``workers.liveness``)."""
    return {job.decode() for job, owner in plain.hgetall(keys.RUNNING).items() if f"-{pid}-" in owner.decode()}


def heartbeats_of(plain: sync_redis.Redis, pid: int) -> list[bytes]:
    return [k for k in plain.scan_iter(match=keys.heartbeat("*")) if f"-{pid}-" in k.decode()]


def wait_until(check: Any, timeout: float, what: str) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def stop(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """SIGTERM; returns the exit code and the seconds the process took to exit."""
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - started


@pytest.fixture
def drain_flag() -> Iterator[None]:
    drain.reset()
    yield
    drain.reset()


async def test_a_draining_chunk_lets_its_calls_in_flight_finish_and_starts_no_other(
    redis: ArqRedis, fake_llm: Any, drain_flag: None
) -> None:
    fake = await fake_llm.astart(rpm=0, latency_ms=500)
    spec = PromptsJobSpec.model_validate({"prompts": [f"Say {i}." for i in range(8)]})
    record = JobRecord(team=keyed.TEAM, id="drain", spec=spec, endpoint="fake", model="fake-model", chunk_size=8,
                       created_at=datetime.now(UTC))  # fmt: skip
    await records.create_job(redis, record, planned=8)
    endpoint = fake.endpoint_settings(max_concurrency=2)  # 2 calls in flight, 6 items waiting for a place
    tally = Tally(REDIS_URL, redis, 5)
    async with raw_client("fake", endpoint) as llm:
        task = ChunkTask(job_id="drain", start=0, stop=8)
        chunk = asyncio.create_task(run_chunk(redis, record, recipe_for(record, "fake", endpoint), llm, task,
                                              False, tally))  # fmt: skip
        for _ in range(500):  # the first two calls are on their way
            if (await fake.astats())["requests"] >= 2:
                break
            await asyncio.sleep(0.02)
        drain.start()
        with pytest.raises(WorkerDraining, match="6 items"):
            await asyncio.wait_for(chunk, timeout=20)
    await tally.aclose()
    stats = await fake.astats()
    assert stats["requests"] == stats["ok"] == 2, stats  # the two sent were answered, no other was sent
    assert await redis.scard(keys.generated("drain")) == 2  # and kept: the rerun skips them
    counters = await redis.hgetall(keys.counters("drain"))
    assert int(counters[b"llm_calls"]) == 2, counters


def test_a_sigtermed_worker_finishes_its_calls_and_hands_its_chunks_back_at_once(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=0, latency_ms=1000)
    grace = 10.0
    # 2 calls at once per worker and chunks of 8: each chunk has items waiting behind the calls in flight
    env = service_env({"fake": fake.endpoint_settings(max_concurrency=2)}, **SLOW, SKILLMIX_STOP_GRACE_S=str(grace))
    api = processes.api(env)
    victim, survivor = processes.worker(env), processes.worker(env)
    job_id = submit(api, 48, chunk_size=8)
    plain = sync_redis.Redis.from_url(REDIS_URL)
    wait_until(lambda: len(held_by(plain, victim.pid)) == 2 and fake.stats()["ok"] >= 2, 60, "victim busy")
    held = held_by(plain, victim.pid)

    stopped_at = time.monotonic()
    code, took = stop(victim, timeout=grace + 20)
    assert code == 0, processes.logs()
    assert took < grace + 5, f"exited after {took:.1f} s"
    assert not held_by(plain, victim.pid) and not heartbeats_of(plain, victim.pid)  # nobody waits for it
    for arq_id in held:  # handed back, not left marked as running until the reaper's 60 s are up
        assert not plain.exists(in_progress_key_prefix + arq_id) or held_by(plain, survivor.pid) >= {arq_id}

    def restarted() -> bool:
        now_running = held_by(plain, survivor.pid)
        return all(arq_id in now_running or not plain.zscore(keys.QUEUE_NAME, arq_id) for arq_id in held)

    restart_s = wait_until(restarted, 3 * HEARTBEAT_S, "the survivor running the victim's chunks") + took
    status = wait_for(api, job_id, finished, timeout=120)
    finished_s = time.monotonic() - stopped_at
    print(f"victim exited in {took:.1f} s; its chunks ran again {restart_s:.1f} s after the SIGTERM; "
          f"job finished {finished_s:.1f} s after it")  # fmt: skip
    assert restart_s < HEARTBEAT_S, f"{restart_s:.1f} s: as slow as the reaper (dead after {3 * HEARTBEAT_S} s)"

    stats = fake.stats()
    assert status["state"] == "completed" and status["counters"]["accepted"] == 48, status
    accepted = examples(api, job_id)
    assert len(accepted) == 48 and len({e["index"] for e in accepted}) == 48
    assert status["counters"]["llm_calls"] == stats["requests"], (status["counters"], stats)
    # the victim's calls in flight were let finish and kept: no prompt was paid for twice
    assert stats["repaid"] == 0, stats
    plain.close()


def test_a_call_longer_than_the_grace_is_cut_and_its_chunk_handed_back(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=0, latency_ms=60_000)  # answers never come within the grace
    grace = 2.0
    env = service_env({"fake": fake.endpoint_settings(timeout_s=120)}, **SLOW, SKILLMIX_STOP_GRACE_S=str(grace))
    api = processes.api(env)
    worker = processes.worker(env)
    job_id = submit(api, 4, chunk_size=4)
    plain = sync_redis.Redis.from_url(REDIS_URL)
    wait_until(lambda: fake.stats()["requests"] == 4, 60, "calls in flight")
    (arq_id,) = held_by(plain, worker.pid)

    code, took = stop(worker, timeout=grace + 20)
    assert code == 0, processes.logs()
    assert grace - 0.5 < took < grace + 5, f"exited after {took:.1f} s"
    assert not plain.exists(in_progress_key_prefix + arq_id)  # free for the next worker now
    assert plain.zscore(keys.QUEUE_NAME, arq_id) is not None
    assert not held_by(plain, worker.pid) and not heartbeats_of(plain, worker.pid)

    fake.configure(latency_ms=0)
    processes.worker(env)
    status = wait_for(api, job_id, finished, timeout=3 * HEARTBEAT_S - 10)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 4, status
    assert status["counters"]["llm_calls"] == fake.stats()["requests"] == 8, (status["counters"], fake.stats())
    plain.close()


def test_an_idle_worker_exits_promptly_on_sigterm(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0)
    env = service_env({"fake": fake.endpoint_settings()}, **SLOW)  # default grace: not waited for with no calls
    env.pop("SKILLMIX_STOP_GRACE_S")
    worker = processes.worker(env)
    plain = sync_redis.Redis.from_url(REDIS_URL)
    wait_until(lambda: bool(heartbeats_of(plain, worker.pid)), 60, "worker up")
    code, took = stop(worker, timeout=30)
    assert code == 0 and took < 8, (code, took, processes.logs())
    assert not heartbeats_of(plain, worker.pid)
    plain.close()

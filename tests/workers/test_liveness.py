"""Heartbeats and the reaper, against the real Redis: only the jobs of silent workers are freed."""

from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.jobs import JobRecord, PromptsJobSpec
from schemas.settings import Settings
from store import keys, queue, records
from tests import keyed
from tests.conftest import REDIS_URL
from workers.liveness import Liveness


def _liveness(redis: ArqRedis) -> Liveness:
    return Liveness(redis, Settings(redis_url=REDIS_URL, heartbeat_s=0.2))


async def test_only_jobs_of_silent_workers_are_freed(redis: ArqRedis) -> None:
    alive, dead = _liveness(redis), _liveness(redis)
    for worker, job_id in ((alive, "chunk-a"), (dead, "chunk-b")):
        await worker.beat()
        await redis.psetex(in_progress_key_prefix + job_id, 600_000, b"1")
        await worker.job_started({"job_id": job_id})
    await redis.psetex(in_progress_key_prefix + "chunk-c", 600_000, b"1")  # no owner recorded: left alone

    assert await alive.reap() == 0  # both still beating
    await redis.delete(keys.heartbeat(dead.worker_id))  # what expiry does once a worker stops beating
    assert await alive.reap() == 1
    assert not await redis.exists(in_progress_key_prefix + "chunk-b")
    assert not await redis.hexists(keys.RUNNING, "chunk-b")
    assert await redis.exists(in_progress_key_prefix + "chunk-a") and await redis.hexists(keys.RUNNING, "chunk-a")
    assert await redis.exists(in_progress_key_prefix + "chunk-c")
    assert await alive.reap() == 0  # nothing twice


async def test_a_heartbeat_expires_after_three_beats(redis: ArqRedis) -> None:
    worker = _liveness(redis)
    await worker.beat()
    ttl_ms = await redis.pttl(keys.heartbeat(worker.worker_id))
    assert 400 < ttl_ms <= 600


async def test_a_finished_job_forgets_its_worker(redis: ArqRedis) -> None:
    worker = _liveness(redis)
    await worker.job_started({"job_id": "chunk-a"})
    assert await redis.hget(keys.RUNNING, "chunk-a") == worker.worker_id.encode()
    await worker.job_ended({"job_id": "chunk-a"})
    assert not await redis.hexists(keys.RUNNING, "chunk-a")


async def test_a_job_handed_to_another_worker_is_not_forgotten_by_the_first(redis: ArqRedis) -> None:
    slow, other = _liveness(redis), _liveness(redis)
    await slow.job_started({"job_id": "chunk-a"})
    await other.job_started({"job_id": "chunk-a"})  # the reaper thought `slow` dead; `other` reran it
    await slow.job_ended({"job_id": "chunk-a"})
    assert await redis.hget(keys.RUNNING, "chunk-a") == other.worker_id.encode()


async def test_redrive_enqueues_only_stale_pending_plans_and_only_once(redis: ArqRedis) -> None:
    spec = PromptsJobSpec.model_validate({"prompts": [f"Say {i}." for i in range(40)]})
    record = JobRecord(
        team=keyed.TEAM, id="j1", spec=spec, endpoint="fake", model="m", chunk_size=32, created_at=datetime.now(UTC)
    )
    await records.create_job(redis, record, planned=40)  # its creator died before enqueueing
    assert await queue.redrive(redis, stale_ms=60_000) == 0  # too fresh: its creator may still be at it
    assert await redis.zcard(keys.QUEUE_NAME) == 0
    assert await queue.redrive(redis, stale_ms=0) == 1
    queued = sorted(j.decode() for j in await redis.zrange(keys.QUEUE_NAME, 0, -1))
    assert queued == ["skillmix:chunk:j1:0-32", "skillmix:chunk:j1:32-40"]
    assert await queue.redrive(redis, stale_ms=0) == 0 and not await redis.exists(keys.pending_plans("j1"))


async def test_a_top_up_is_pending_until_enqueued(redis: ArqRedis) -> None:
    spec = PromptsJobSpec.model_validate({"prompts": [f"Say {i}." for i in range(40)]})
    record = JobRecord(
        team=keyed.TEAM, id="j2", spec=spec, endpoint="fake", model="m", chunk_size=32, created_at=datetime.now(UTC)
    )
    await records.create_job(redis, record, planned=10)
    await queue.enqueue_planned(redis, record, 0, 10)
    assert await queue.plan(redis, record, 10, 40)
    assert not await queue.plan(redis, record, 10, 50)  # another worker already moved it
    assert not await redis.exists(keys.pending_plans("j2"))
    assert await redis.zcard(keys.QUEUE_NAME) == 2


async def test_a_redis_blip_in_arqs_job_hooks_does_not_escape() -> None:
    """arq runs these hooks outside its error handling: an exception would strand the job."""

    class Unreachable:
        def register_script(self, script: str) -> Any:
            async def run(**kwargs: Any) -> Any:
                raise RedisConnectionError("Connection refused")

            return run

        async def hset(self, *args: Any) -> Any:
            raise RedisConnectionError("Connection refused")

    worker = Liveness(Unreachable(), Settings(redis_url=REDIS_URL))
    await worker.job_started({"job_id": "chunk-a"})
    await worker.job_ended({"job_id": "chunk-a"})

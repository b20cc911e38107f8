"""Redis trouble inside a worker: replies time out instead of hanging, and a chunk hit by it runs again."""

import time
from typing import Any

import pytest
from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.jobs import ChunkTask, PhaseTask
from schemas.settings import Settings
from store.connection import open_redis
from tests.conftest import REDIS_URL
from workers.runner.step import run_step


async def test_a_reply_that_never_comes_times_out() -> None:
    pool = await open_redis(Settings(redis_url=REDIS_URL, redis_timeout_s=0.5))
    try:
        assert await pool.ping()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await pool.blpop(["nothing-will-arrive"], timeout=5)  # Redis answers only after 5 s
        assert time.monotonic() - started < 2
    finally:
        await pool.aclose()


class _RedisGone:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def recipe(self, job_id: str) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Connection reset by peer"),
        RedisTimeoutError("Timeout reading from socket"),
        ExceptionGroup("items", [RedisConnectionError("gone"), RedisConnectionError("gone")]),
    ],
    ids=["connection", "timeout", "group-from-items"],
)
async def test_a_chunk_hit_by_redis_trouble_is_retried_not_failed(error: BaseException) -> None:
    task = ChunkTask(job_id="j1", start=0, stop=4)
    with pytest.raises(Retry):
        await run_step({"resources": _RedisGone(error), "job_try": 1}, task.model_dump())


async def test_other_errors_still_fail_the_chunk() -> None:
    task = ChunkTask(job_id="j1", start=0, stop=4)
    with pytest.raises(ValueError):
        await run_step({"resources": _RedisGone(ValueError("a bug")), "job_try": 1}, task.model_dump())


class _RedisAway:
    """A Redis client whose every command fails as a restarting server's would."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("Connection refused")

        return fail


async def test_a_phase_step_hit_by_redis_trouble_is_retried() -> None:
    task = PhaseTask(job_id="j1", step=3)
    ctx = {"redis": _RedisAway(), "resources": None, "job_try": 1}
    with pytest.raises(Retry):
        await run_step(ctx, task.model_dump())

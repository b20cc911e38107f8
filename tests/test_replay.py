"""Never pay twice: answers are kept as they arrive, and a rerun replays them instead of paying again.

The unit tests drive ``workers.llm.replay`` against the real Redis; the last one SIGKILLs a real worker
process mid-conversation and lets a new one finish the job against the fake endpoint, whose ``repaid``
count (requests it had already answered) proves no answered turn was paid twice.
"""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Unpack

import redis as sync_redis
from arq.connections import ArqRedis

from schemas.jobs import ChunkTask, JobRecord, JobState, PromptsJobSpec
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.settings import Settings
from store import keys, records
from tests import keyed
from tests.conftest import REDIS_URL, Processes, kill_mid_call, service_env
from tests.raw_client import raw_client
from tests.test_end_to_end import examples, finished, start_stack, submit, wait_for
from workers.generate import run_chunk
from workers.llm.client import ChatOptions
from workers.llm.replay import Recorder, ReplayCache, item_scope
from workers.recipes import recipe_for
from workers.tally import Tally
from workers.watchdog import Watchdog

FAST = {"SKILLMIX_HEARTBEAT_S": "0.5", "SKILLMIX_STALL_S": "1", "SKILLMIX_CLAIM_IDLE_MS": "2000"}
QUESTION = [ChatMessage(role="user", content="Pick a number.")]


class Samples:
    """An endpoint that samples: the k-th call answers "sample k", identical requests included."""

    name = "stub"

    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        self.calls += 1
        usage = Usage(calls=1, prompt_tokens=3, completion_tokens=2)
        return ChatResult(content=f"sample {self.calls - 1}", finish_reason="stop", model="m", usage=usage)


async def until(check: Any) -> None:
    """Kept answers are written without a reply: wait (up to 10 s) until Redis shows them."""
    async with asyncio.timeout(10):
        while not await check():  # noqa: ASYNC110 (the state is in Redis: nothing here to wait on)
            await asyncio.sleep(0.02)


async def replaying(redis: ArqRedis, tally: Tally, stub: Samples, settings: Settings, start: int = 0) -> Any:
    cache = await ReplayCache.load(redis, tally, "j", start, settings)
    return cache.replaying(Recorder(stub), stub)


async def test_identical_requests_stay_distinct_samples_and_replay_in_order(redis: ArqRedis) -> None:
    settings, stub = Settings(redis_url=REDIS_URL), Samples()
    tally = Tally(REDIS_URL, redis, 5)
    await tally.ensure()
    client = await replaying(redis, tally, stub, settings)
    with item_scope(3, 0):
        first = [(await client.chat(QUESTION, max_tokens=8)).content for _ in range(2)]
        other = (await client.chat(QUESTION, max_tokens=9)).content  # another parameter: another request
    assert first == ["sample 0", "sample 1"] and other == "sample 2"
    await until(lambda: _hlen(redis, keys.replay("j", 0), 3))

    client = await replaying(redis, tally, stub, settings)  # the chunk runs again
    with item_scope(3, 0):
        again = [await client.chat(QUESTION, max_tokens=8) for _ in range(3)]
        other_again = await client.chat(QUESTION, max_tokens=9)
    with item_scope(3, 1):  # the item's next attempt is another conversation
        next_attempt = await client.chat(QUESTION, max_tokens=8)
    assert [r.content for r in again] == ["sample 0", "sample 1", "sample 3"]  # the third was never answered
    assert other_again.content == "sample 2" and next_attempt.content == "sample 4"
    assert stub.calls == 5
    assert again[0].usage == Usage(calls=1, prompt_tokens=3, completion_tokens=2)  # what it cost when paid
    await until(lambda: _field(redis, keys.counters("j"), "replayed", b"3"))
    await tally.aclose()


async def test_calls_outside_an_item_are_neither_kept_nor_replayed(redis: ArqRedis) -> None:
    settings, stub = Settings(redis_url=REDIS_URL), Samples()
    tally = Tally(REDIS_URL, redis, 5)
    await tally.ensure()
    client = await replaying(redis, tally, stub, settings)
    assert (await client.chat(QUESTION, max_tokens=8)).content == "sample 0"
    assert (await client.chat(QUESTION, max_tokens=8)).content == "sample 1"
    await tally.aclose()
    assert not await redis.exists(keys.replay("j", 0))


async def test_the_size_cap_stops_writes(redis: ArqRedis) -> None:
    cap = 1000
    settings, stub = Settings(redis_url=REDIS_URL, replay_max_mb=cap / 1024 / 1024), Samples()
    tally = Tally(REDIS_URL, redis, 5)
    await tally.ensure()
    client = await replaying(redis, tally, stub, settings)
    with item_scope(0, 0):
        for i in range(20):
            await client.chat([ChatMessage(role="user", content=f"question {i}")], max_tokens=8)

    async def all_landed() -> bool:
        kept, refused = await redis.hlen(keys.replay("j", 0)), await redis.hget(keys.replay_index("j"), "refused")
        return bool(kept + int(refused or 0) == 20)

    await until(all_landed)
    kept = await redis.hgetall(keys.replay("j", 0))
    used = int(await redis.hget(keys.replay_index("j"), "bytes") or 0)
    assert 0 < len(kept) < 20 and used == sum(len(k) + len(v) for k, v in kept.items()) <= cap
    assert 0 < await redis.ttl(keys.replay("j", 0)) <= settings.replay_ttl_s
    await tally.aclose()


def prompts_record(job_id: str, n: int) -> JobRecord:
    spec = PromptsJobSpec.model_validate({"prompts": [f"Say {i}." for i in range(n)]})
    return JobRecord(
        team=keyed.TEAM,
        id=job_id,
        spec=spec,
        endpoint="fake",
        model="fake-model",
        chunk_size=8,
        created_at=datetime.now(UTC),
    )


async def test_keys_are_dropped_when_the_chunk_and_the_job_end(redis: ArqRedis, fake_llm: Any) -> None:
    fake = await fake_llm.astart(rpm=0)
    record = prompts_record("ends", 16)
    await records.create_job(redis, record, planned=16)
    endpoint, settings = fake.endpoint_settings(), Settings(redis_url=REDIS_URL)
    tally = Tally(REDIS_URL, redis, 5)
    await tally.ensure()
    left = await ReplayCache.load(redis, tally, "ends", 8, settings)  # a chunk that never finished
    left.keep("8:0:abc:0", ChatResult(content="kept", model="m", usage=Usage(calls=1)))
    task = ChunkTask(job_id="ends", start=0, stop=8)
    async with raw_client("fake", endpoint) as llm:
        outcome = await run_chunk(redis, record, recipe_for(record, "fake", endpoint), llm, task, False, tally,
                                  settings=settings)  # fmt: skip
    assert outcome.emitted == 8 and (await fake.astats())["requests"] == 8

    tally.eval("return redis.call('SET', KEYS[1], 1)", ["probe"], [])  # lands after every write before it
    await until(lambda: redis.exists("probe"))
    index = await redis.hgetall(keys.replay_index("ends"))
    assert not await redis.exists(keys.replay("ends", 0)) and b"chunk:0" not in index  # dropped with the chunk
    assert await redis.hlen(keys.replay("ends", 8)) == 1 and index[b"bytes"] == index[b"chunk:8"]
    await records.set_state(redis, "ends", JobState.COMPLETED, "done")
    await redis.delete(keys.items("ends"))  # curated (the watchdog waits for the stream to drain)
    assert (await Watchdog(redis, stall_ms=1000).run_once()).retired == 1
    assert [k async for k in redis.scan_iter(match=f"{keys.job('ends')}:replay*")] == []
    await tally.aclose()


async def _hlen(redis: ArqRedis, key: str, n: int) -> bool:
    return bool(await redis.hlen(key) == n)


async def _field(redis: ArqRedis, key: str, name: str, value: bytes) -> bool:
    return bool(await redis.hget(key, name) == value)


# --- a killed worker's conversations are replayed, not paid again ---------------------------------


def test_sigkill_mid_conversation_then_rerun_replays_finished_turns(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    count = 16
    fake = fake_llm(rpm=0, latency_ms=300, latency_jitter_ms=200)
    settings = service_env({"fake": fake.endpoint_settings()}, **FAST)
    api = start_stack(processes, fake, 1, **FAST)
    worker = processes.procs[-1]
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=count, chunk_size=8, seed=5)
    deadline = time.monotonic() + 60
    while fake.stats()["ok"] < count + 4:  # every item past its first turn, some past the second
        assert time.monotonic() < deadline
        time.sleep(0.02)
    in_flight, at_kill = kill_mid_call(worker, fake)  # answers the worker may not have kept
    assert at_kill["in_flight"] > 0
    assert keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]["generated"] < count  # mid-conversation
    while (drained := fake.stats())["in_flight"]:  # the fake finishes what the dead worker sent
        time.sleep(0.05)
    with sync_redis.Redis.from_url(REDIS_URL) as plain:
        kept = sum(plain.hlen(k) for k in plain.scan_iter(match=f"{keys.job(job_id)}:replay:*"))
    assert kept > 0

    processes.worker(settings)
    status = wait_for(api, job_id, finished, timeout=120)
    stats = fake.stats()
    accepted = examples(api, job_id)
    print(f"replay: answered {drained['ok']}, kept {kept}, in flight {in_flight}, repaid {stats['repaid']}, "
          f"replayed {status['counters']['replayed']}, requests {stats['requests']}")  # fmt: skip
    assert status["state"] == "completed" and status["counters"]["accepted"] == count, status
    assert len(accepted) == count and len({e["index"] for e in accepted}) == count
    assert len({e["instruction"] for e in accepted}) == count
    assert stats["repaid"] <= drained["ok"] - kept, (stats, drained, kept)  # no kept answer was paid again
    assert stats["repaid"] <= in_flight, (stats, in_flight)
    assert status["counters"]["replayed"] > 0  # the rerun really took answers from the cache
    assert status["counters"]["llm_calls"] == stats["requests"]  # a replayed answer is not a call

    with sync_redis.Redis.from_url(REDIS_URL) as plain:  # the job's cache goes when the job is retired
        deadline = time.monotonic() + 30
        while list(plain.scan_iter(match=f"{keys.job(job_id)}:replay*")):
            assert time.monotonic() < deadline, "replay keys outlived the job"
            time.sleep(0.2)

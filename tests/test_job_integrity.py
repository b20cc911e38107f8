"""Jobs you can trust: every failure mode found by running the project has a regression test here.

Real API and worker processes, real Redis, the fake endpoint; a few tests drive one stage in-process.
"""

import asyncio
import os
import random
import signal
import socket
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from schemas.batches import BatchRecord
from schemas.examples import GeneratedItem, Reason
from schemas.jobs import ChunkTask, JobRecord, JobState, PromptsJobSpec
from schemas.llm import ChatMessage
from schemas.settings import Settings
from store import clock, endpoints, keys, queue, records
from tests import keyed
from tests.conftest import REDIS_URL, TIMING, Processes, service_env
from tests.raw_client import raw_client
from tests.test_end_to_end import examples, finished, settled, start_stack, submit, wait_for
from workers.curate.consumer import CurateConsumer
from workers.curate.decide import decide_and_store, previous
from workers.generate import run_chunk
from workers.llm.errors import JobStopped
from workers.recipes import recipe_for
from workers.runner.step import MAX_TRIES
from workers.tally import Tally
from workers.watchdog import Watchdog

FAST = {"SKILLMIX_HEARTBEAT_S": "0.5", "SKILLMIX_STALL_S": "1", "SKILLMIX_CLAIM_IDLE_MS": "2000"}


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about the number {i}." for i in range(n)]


def record_for(job_id: str, n: int, chunk_size: int = 8, **spec: Any) -> JobRecord:
    parsed = PromptsJobSpec.model_validate({"prompts": prompts(n), **spec})
    return JobRecord(team=keyed.TEAM, id=job_id, spec=parsed, endpoint="fake", model="fake-model",
                     chunk_size=chunk_size, created_at=datetime.now(UTC))  # fmt: skip


# --- spending stops at once ----------------------------------------------------------------------


@TIMING
def test_a_cancelled_job_makes_no_call_after_the_cancel(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """4,000 prompts, cancelled at 50 accepted: every queued chunk used to start all its items regardless."""
    fake = fake_llm(rpm=0, latency_ms=150)
    concurrency = 8
    settings = service_env({"fake": fake.endpoint_settings(max_concurrency=concurrency)})
    api = processes.api(settings)
    processes.worker(settings)
    job_id = submit(api, recipe="prompts", prompts=prompts(4000), dedup={"exact": False})
    wait_for(api, job_id, lambda s: s["counters"]["accepted"] >= 50, timeout=60)
    at_cancel = fake.stats()["requests"]
    assert keyed.post(f"{api}/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    time.sleep(3.0)
    after = fake.stats()["requests"]
    assert after - at_cancel <= concurrency, (at_cancel, after)
    status = keyed.get(f"{api}/v1/jobs/{job_id}").json()
    assert status["state"] == "cancelled"
    assert status["counters"]["llm_calls"] == after, (status["counters"], fake.stats())


async def test_a_chunk_of_a_finished_job_starts_nothing(redis: ArqRedis, fake_llm: Any) -> None:
    fake = await fake_llm.astart(rpm=0)
    record = record_for("done", 8)
    await records.create_job(redis, record, planned=8)
    await records.set_state(redis, record.id, JobState.COMPLETED, "8 accepted")
    endpoint = fake.endpoint_settings()
    tally = Tally(REDIS_URL, redis, 5)
    async with raw_client("fake", endpoint) as llm:
        outcome = await run_chunk(redis, record, recipe_for(record, "fake", endpoint), llm,
                                  ChunkTask(job_id="done", start=0, stop=8), False, tally)  # fmt: skip
    await tally.aclose()
    assert outcome.skipped == 8 and outcome.emitted == 0
    assert (await fake.astats())["requests"] == 0


async def test_a_rerun_of_a_fully_generated_chunk_is_a_no_op(redis: ArqRedis, fake_llm: Any) -> None:
    fake = await fake_llm.astart(rpm=0)
    record = record_for("rerun", 8)
    await records.create_job(redis, record, planned=8)
    await redis.sadd(keys.generated("rerun"), *range(8))
    endpoint = fake.endpoint_settings()
    tally = Tally(REDIS_URL, redis, 5)
    async with raw_client("fake", endpoint) as llm:  # used to raise ValueError from asyncio.wait([])
        outcome = await run_chunk(redis, record, recipe_for(record, "fake", endpoint), llm,
                                  ChunkTask(job_id="rerun", start=0, stop=8), False, tally)  # fmt: skip
    await tally.aclose()
    assert outcome.skipped == 8 and (await fake.astats())["requests"] == 0


async def test_a_chunk_ends_even_when_redis_py_swallows_a_cancel(
    redis: ArqRedis, fake_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py 5.x can swallow a CancelledError; the state watcher must stop by its flag, not by a cancel."""
    fake = await fake_llm.astart(rpm=0, latency_ms=20)
    record = record_for("swallow", 8)
    await records.create_job(redis, record, planned=8)
    real_get_state = records.get_state

    async def swallowing_get_state(r: Any, job_id: str) -> JobState | None:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            pass  # what redis-py's can_read_destructive may do
        return await real_get_state(r, job_id)

    monkeypatch.setattr(records, "get_state", swallowing_get_state)
    endpoint = fake.endpoint_settings()
    tally = Tally(REDIS_URL, redis, 5)
    async with raw_client("fake", endpoint) as llm:
        task = ChunkTask(job_id="swallow", start=0, stop=8)
        outcome = await asyncio.wait_for(
            run_chunk(redis, record, recipe_for(record, "fake", endpoint), llm, task, False, tally), timeout=20
        )
    await tally.aclose()
    assert outcome.emitted == 8


async def test_a_call_refused_or_cancelled_before_it_leaves_is_not_counted(fake_llm: Any) -> None:
    fake = await fake_llm.astart(rpm=0, latency_ms=10)

    async def refuse(attempt: int) -> None:
        raise JobStopped("j")

    async with raw_client("fake", fake.endpoint_settings(rpm=60)) as client:
        with pytest.raises(JobStopped):
            await client.chat([ChatMessage(role="user", content="hi")], max_tokens=8, on_send=refuse)
        assert client.stats.calls == 0
        # the limiter lets about one call through now; the rest wait for it and are cancelled there
        calls = [asyncio.create_task(client.chat([ChatMessage(role="user", content=f"q{i}")], max_tokens=8))
                 for i in range(6)]  # fmt: skip
        await asyncio.sleep(0.5)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        seen = (await fake.astats())["requests"]
        assert client.stats.calls == seen and seen < 6


# --- no accepted example vanishes ----------------------------------------------------------------


async def test_decision_and_storage_are_one_step(redis: ArqRedis) -> None:
    decision = await decide_and_store(redis, "j", 7, None, 1, '{"a": 1}', '{"r": 1}')
    assert decision.accepted and decision.seq == 0
    assert await redis.hget(keys.bucket("j", "accepted", 0), "0") == b'{"a": 1}'
    again = await decide_and_store(redis, "j", 7, None, 1, '{"a": 2}', '{"r": 2}')  # a redelivery
    assert again == decision and await redis.hget(keys.bucket("j", "accepted", 0), "0") == b'{"a": 1}'
    surplus = await decide_and_store(redis, "j", 8, None, 1, '{"a": 3}', '{"r": 3}')
    assert not surplus.accepted and surplus.reason is not None and surplus.reason.value == "surplus"
    assert await redis.hget(keys.bucket("j", "rejected", 0), "0") == b'{"r": 3}'
    counters = await redis.hgetall(keys.counters("j"))
    assert counters[b"accepted"] == b"1" and counters[b"rejected"] == b"1" and counters[b"processed"] == b"2"


async def test_items_left_when_a_job_completes_are_curated_not_abandoned(redis: ArqRedis) -> None:
    record = record_for("late", 4, count=1, max_items=4)
    await records.create_job(redis, record, planned=4)
    await records.set_state(redis, "late", JobState.COMPLETED, "1 accepted")
    item = GeneratedItem(job_id="late", index=3, instruction="Say three.", output="Three is a small number.")
    await redis.xadd(keys.items("late"), {"d": orjson.dumps(item.model_dump(mode="json"))})
    assert await redis.sismember(keys.ACTIVE_JOBS, "late")  # finished, but its stream still holds work

    settings = Settings(redis_url=REDIS_URL)
    watchdog = Watchdog(redis, stall_ms=1000)
    assert (await watchdog.run_once()).retired == 0  # not while an entry waits
    status = await records.get_status(redis, "late")
    assert status is not None and status.state is JobState.COMPLETED and not status.settled  # counters may move
    consumer = CurateConsumer(redis, settings, "c1")
    assert await consumer.step() == 1
    decision = await previous(redis, "late", 3)
    assert decision is not None and decision.accepted  # the job still wanted one: counted and stored
    assert await redis.hget(keys.bucket("late", "accepted", 0), "0") is not None
    assert (await watchdog.run_once()).retired == 1
    assert not await redis.sismember(keys.ACTIVE_JOBS, "late")
    status = await records.get_status(redis, "late")
    assert status is not None and status.settled and status.counters.accepted == 1  # final from here


# --- no job hangs --------------------------------------------------------------------------------


def test_a_chunk_past_its_timeout_is_retried(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5, hang_next=1, hang_s=20)
    settings = service_env({"fake": fake.endpoint_settings(timeout_s=60)}, SKILLMIX_CHUNK_TIMEOUT_S="5", **FAST)
    api = processes.api(settings)
    processes.worker(settings)
    job_id = submit(api, recipe="prompts", prompts=prompts(8), chunk_size=8)
    status = wait_for(api, job_id, finished, timeout=60)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 8, status
    assert sorted(e["index"] for e in examples(api, job_id)) == list(range(8))


def test_a_worker_without_the_key_fails_the_job_naming_it(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0)
    settings = service_env({"fake": fake.endpoint_settings(api_key_env="SKILLMIX_TEST_UNSET_KEY")})
    api = processes.api(settings)
    processes.worker(settings)
    job_id = submit(api, recipe="prompts", prompts=prompts(4))
    status = wait_for(api, job_id, finished, timeout=30)
    assert status["state"] == "failed", status
    assert "SKILLMIX_TEST_UNSET_KEY" in status["message"] and socket.gethostname() in status["message"]
    assert fake.stats()["requests"] == 0


def test_an_endpoint_unknown_to_the_worker_fails_the_job(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0)
    api = processes.api(service_env({"fake": fake.endpoint_settings()}))
    processes.worker(service_env({"other": fake.endpoint_settings()}))  # this worker never heard of "fake"
    job_id = submit(api, recipe="prompts", prompts=prompts(4), endpoint="fake")
    status = wait_for(api, job_id, finished, timeout=30)
    assert status["state"] == "failed" and "'fake'" in status["message"], status
    assert socket.gethostname() in status["message"]


def test_chunks_arq_dropped_are_enqueued_again(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """One chunk out of tries, one whose arq key expired: both used to leave the job running for ever."""
    fake = fake_llm(rpm=0, latency_ms=5)
    settings = service_env({"fake": fake.endpoint_settings()}, **FAST)
    api = processes.api(settings)
    job_id = submit(api, recipe="prompts", prompts=prompts(24), chunk_size=8, dedup={"exact": False})
    record = asyncio.run(_load(job_id))
    first, second, _ = queue.chunks(record, 0, 24)
    import redis as sync_redis

    with sync_redis.Redis.from_url(REDIS_URL) as plain:
        assert plain.zscore(keys.QUEUE_NAME, first.arq_id) is not None
        plain.set(retry_key_prefix + first.arq_id, MAX_TRIES)  # its next try is one too many
        plain.delete(job_key_prefix + second.arq_id)  # what arq's expiry does
    processes.worker(settings)
    status = wait_for(api, job_id, finished, timeout=60)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 24, status
    assert sorted(e["index"] for e in examples(api, job_id)) == list(range(24))
    with sync_redis.Redis.from_url(REDIS_URL) as plain:
        assert {k.decode() for k in plain.hkeys(keys.redrives(job_id))} == {first.arq_id, second.arq_id}


async def test_a_chunk_picked_up_by_a_worker_that_died_at_once_is_handed_out_again(redis: ArqRedis) -> None:
    """Killed between arq's pickup and its on_job_start hook: an in-progress mark with no recorded owner."""
    record = record_for("unowned", 24)
    await records.create_job(redis, record, planned=24)
    await queue.enqueue_planned(redis, record, 0, 24)
    old, fresh, owned = (t.arq_id for t in queue.chunks(record, 0, 24))
    ttl_ms = 60_000
    await redis.psetex(in_progress_key_prefix + old, ttl_ms - 5_000, b"1")  # set 5 s ago, nobody recorded
    await redis.psetex(in_progress_key_prefix + owned, ttl_ms - 5_000, b"1")
    await redis.hset(keys.RUNNING, owned, "a-live-worker")
    watchdog = Watchdog(redis, stall_ms=1000, in_progress_ms=ttl_ms)
    await watchdog.run_once()  # first look: progress noted
    await asyncio.sleep(1.1)
    await redis.psetex(in_progress_key_prefix + fresh, ttl_ms, b"1")  # just picked up: its hook is coming
    report = await watchdog.run_once()
    assert report.freed == 1 and report.redriven == 0
    assert not await redis.exists(in_progress_key_prefix + old)
    assert await redis.exists(in_progress_key_prefix + fresh) and await redis.exists(in_progress_key_prefix + owned)
    assert await redis.zscore(keys.QUEUE_NAME, old) is not None  # still queued: the next worker takes it


async def test_a_batch_job_waiting_on_its_provider_is_not_stalled(redis: ArqRedis) -> None:
    """Nothing moves while a provider batch is open: up to the batch window (+1 h), that is no stall."""
    record = record_for("batched", 16, mode="batch")
    await records.create_job(redis, record, planned=16)
    await queue.enqueue_planned(redis, record, 0, 16)  # (parked chunks stay deferred in arq's queue)
    opened = BatchRecord(id="b1", job_id="batched", endpoint="fake", status="in_progress",
                         created_ms=await clock.redis_now_ms(redis) - 20 * 3_600_000)  # fmt: skip
    await redis.set(keys.batch("b1"), opened.model_dump_json())
    await redis.sadd(keys.job_batches("batched"), "b1")
    watchdog = Watchdog(redis, stall_ms=0, batch_window_h=24)
    for _ in range(3):
        assert (await watchdog.run_once()).stalled == 0
    assert not await redis.hexists(keys.WATCHDOG, "batched")
    opened.created_ms -= 6 * 3_600_000  # open 26 h: past the window and its hour of grace
    await redis.set(keys.batch("b1"), opened.model_dump_json())
    await watchdog.run_once()  # progress noted
    assert (await watchdog.run_once()).stalled == 1
    fresh = opened.model_copy(update={"id": "b2", "created_ms": await clock.redis_now_ms(redis)})
    await redis.set(keys.batch("b2"), fresh.model_dump_json())
    await redis.srem(keys.job_batches("batched"), "b1")  # no batch open: watched as any job
    await records.create_job(redis, record_for("online", 16), planned=16)
    await redis.sadd(keys.job_batches("online"), "b2")  # (an online job is never excused)
    await watchdog.run_once()
    assert (await watchdog.run_once()).stalled == 2


async def _load(job_id: str) -> JobRecord:
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    try:
        record = await records.load_record(pool, job_id)
    finally:
        await pool.aclose()
    assert record is not None
    return record


# --- a restarted endpoint is seen -----------------------------------------------------------------


async def test_a_restarted_endpoint_is_used_within_seconds(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    old = await fake_llm.astart(rpm=0)
    await endpoints.register(redis, "local", old.endpoint_settings())
    settings = service_env(None, SKILLMIX_DEFAULT_ENDPOINT="local")
    api = processes.api(settings)
    processes.worker(settings)
    first = submit(api, recipe="prompts", prompts=prompts(4))
    assert (await asyncio.to_thread(wait_for, api, first, finished, 90))["state"] == "completed"
    old.stop()  # `skillmix local-llm` restarted: a new port
    new = await fake_llm.astart(rpm=0)
    await endpoints.register(redis, "local", new.endpoint_settings())
    second = submit(api, recipe="prompts", prompts=prompts(4))
    status = await asyncio.to_thread(wait_for, api, second, finished, 90)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 4, status
    assert (await new.astats())["requests"] == 4


# --- chaos ---------------------------------------------------------------------------------------


def run_chaos(processes: Processes, fake: Any, count: int, kills: int, seed: int) -> dict[str, Any]:
    """SIGKILL a random worker at random moments of an instruct job, restarting it each time."""
    rng = random.Random(seed)
    chaos = {**FAST, "SKILLMIX_HEARTBEAT_S": "1"}  # dead after 3 s: a loaded CI machine must not fake deaths
    settings = service_env({"fake": fake.endpoint_settings()}, **chaos)
    api = start_stack(processes, fake, 3, **chaos)
    started = time.monotonic()
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=count, refine=False, chunk_size=8, seed=seed)
    workers = [p for p in processes.procs[1:]]
    done = 0
    for _ in range(kills):
        time.sleep(rng.uniform(0.5, 2.0))
        if finished(keyed.get(f"{api}/v1/jobs/{job_id}").json()):
            break
        victim = workers.pop(rng.randrange(len(workers)))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        workers.append(processes.worker(settings))
        done += 1
    status = wait_for(api, job_id, settled, timeout=180)  # every item in flight at the end curated too
    stored = examples(api, job_id) + examples(api, job_id, "rejected")
    kept_calls = sum(e["usage"]["calls"] for e in stored)
    return {
        "status": status,
        "accepted": examples(api, job_id),
        "requests": fake.stats()["requests"],
        "kills": done,
        "repaid_calls": fake.stats()["requests"] - kept_calls,
        "seconds": round(time.monotonic() - started, 1),
    }


def test_chaos_killed_workers_lose_nothing_and_cost_is_exact(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=1800, latency_ms=80, latency_jitter_ms=60)
    seed = int(os.environ.get("SKILLMIX_CHAOS_SEED", random.randrange(1_000_000)))
    result = run_chaos(processes, fake, count=150, kills=4, seed=seed)
    status, accepted = result["status"], result["accepted"]
    print(f"chaos seed={seed} kills={result['kills']} repaid_calls={result['repaid_calls']} "
          f"seconds={result['seconds']} requests={result['requests']}")  # fmt: skip
    assert result["kills"] >= 2, result
    assert status["state"] == "completed" and status["counters"]["accepted"] == 150, (seed, status)
    assert len(accepted) == 150 and len({e["index"] for e in accepted}) == 150, seed
    assert status["counters"]["llm_calls"] == result["requests"], (seed, status["counters"], result["requests"])


async def test_an_item_the_recipe_crashes_on_is_rejected_not_rerun_for_ever(
    redis: ArqRedis, fake_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe bug on one item used to fail its whole chunk on every rerun, so the job never finished."""
    fake = await fake_llm.astart(rpm=0)
    record = record_for("crash", 4)
    await records.create_job(redis, record, planned=4)
    endpoint = fake.endpoint_settings()
    recipe = recipe_for(record, "fake", endpoint)
    real = recipe.generate

    async def buggy(item: Any, llm: Any) -> GeneratedItem:
        if item.index == 2:
            raise ValueError("zip() argument 2 is longer than argument 1")
        return await real(item, llm)

    monkeypatch.setattr(recipe, "generate", buggy)
    tally = Tally(REDIS_URL, redis, 5)
    async with raw_client("fake", endpoint) as llm:
        outcome = await run_chunk(redis, record, recipe, llm, ChunkTask(job_id="crash", start=0, stop=4), False, tally)
    await tally.aclose()
    assert outcome.emitted == 4
    items = [GeneratedItem.model_validate_json(f[b"d"]) for _, f in await redis.xrange(keys.items("crash"))]
    failed = [i for i in items if i.error is not None]
    assert [(i.index, i.error) for i in failed] == [(2, Reason.INTERNAL_ERROR)] and "zip()" in failed[0].error_detail

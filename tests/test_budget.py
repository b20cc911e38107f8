"""Per-job budgets: a job pauses at its cap (nothing lost), stays still while paused, and finishes once the cap
is raised, with every example exactly once. Real Redis, real API and worker processes, the fake endpoint."""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.connections import ArqRedis

from schemas.jobs import ChunkTask, JobBudget, JobRecord, JobState, PromptsJobSpec
from schemas.llm import Usage
from store import budget as caps
from store import keys, lifecycle, records
from store.budget import Prices
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env
from tests.raw_client import raw_client
from tests.test_end_to_end import examples, finished, submit, wait_for
from workers import budget
from workers.generate import run_chunk
from workers.recipes import recipe_for
from workers.tally import Tally
from workers.watchdog import Watchdog

PRICES = {"usd_per_mtok_prompt": 100.0, "usd_per_mtok_completion": 200.0}  # ~$0.017 a call of ~7 + 80 tokens
CHUNK = 8


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about the number {i}." for i in range(n)]


def record_for(job_id: str, n: int, **cap: Any) -> JobRecord:
    spec = PromptsJobSpec.model_validate({"prompts": prompts(n), "budget": cap or None})
    return JobRecord(team=keyed.TEAM, id=job_id, spec=spec, endpoint="fake", model="fake-model", chunk_size=CHUNK,
                     created_at=datetime.now(UTC))  # fmt: skip


async def state_and_message(redis: ArqRedis, job_id: str) -> tuple[str, str]:
    state, message = await redis.hmget(keys.meta(job_id), "state", "message")
    return state.decode(), message.decode()


# --- the charging script -------------------------------------------------------------------------


async def test_the_charge_pauses_the_job_exactly_once_when_it_crosses_the_cap(redis: ArqRedis) -> None:
    await records.create_job(redis, record_for("cap", 8, max_cost_usd=0.0100), planned=8)
    await records.set_state(redis, "cap", JobState.RUNNING)
    prices = Prices(usd_per_mtok_prompt=1.0, usd_per_mtok_completion=2.0)
    call = Usage(prompt_tokens=1000, completion_tokens=1000, rate_limited=1)  # 1,000 + 2,000 micro-dollars
    assert prices.micro_usd(call) == 3000
    paused = [await caps.charge_awaited(redis, "cap", call, prices) for _ in range(5)]
    assert paused == [False, False, False, True, False]  # 12,000 >= 10,000 on the 4th; never again after
    state, message = await state_and_message(redis, "cap")
    assert state == "paused", message
    assert message.startswith("paused: budget reached ($0.0120 of $0.0100 spent)") and "PATCH /v1/jobs/cap" in message
    c = await redis.hgetall(keys.counters("cap"))
    counted = [c[f] for f in (b"cost_micro_usd", b"prompt_tokens", b"completion_tokens", b"rate_limited")]
    assert counted == [b"15000", b"5000", b"5000", b"5"]  # calls finishing after the pause are still counted
    status = await records.get_status(redis, "cap")
    assert status is not None and status.counters.cost_usd == 0.015 and status.state is JobState.PAUSED
    assert status.budget == JobBudget(max_cost_usd=0.01) and status.budget_left is not None
    assert status.budget_left.cost_usd == 0 and status.budget_left.tokens is None


async def test_a_token_cap_pauses_and_a_finished_job_is_never_paused(redis: ArqRedis) -> None:
    await records.create_job(redis, record_for("tok", 8, max_tokens=250), planned=8)
    call = Usage(prompt_tokens=100, completion_tokens=50)
    assert not await caps.charge_awaited(redis, "tok", call, Prices())
    assert await caps.charge_awaited(redis, "tok", call, Prices())  # 300 >= 250 tokens: a queued job pauses too
    state, message = await state_and_message(redis, "tok")
    assert state == "paused" and "token budget reached (300 of 250 tokens used)" in message

    await records.create_job(redis, record_for("over", 8, max_tokens=10), planned=8)
    await records.set_state(redis, "over", JobState.COMPLETED, "8 accepted")
    assert not await caps.charge_awaited(redis, "over", call, Prices())
    assert (await state_and_message(redis, "over"))[0] == "completed"

    await records.create_job(redis, record_for("free", 8), planned=8)  # no cap: counted, never paused
    for _ in range(3):
        assert not await caps.charge_awaited(redis, "free", call, Prices(1.0, 1.0))
    status = await records.get_status(redis, "free")
    assert status is not None and status.state is JobState.QUEUED and status.budget is None
    assert status.budget_left is None and status.counters.cost_micro_usd == 450


async def test_the_fire_and_forget_charge_lands_and_pauses(redis: ArqRedis) -> None:
    """``metered`` sends the charge with no reply on the tally connection: it must still land and decide."""
    await records.create_job(redis, record_for("ff", 8, max_cost_usd=0.001), planned=8)
    tally = Tally(REDIS_URL, redis, 5)
    await tally.ensure()
    for _ in range(3):
        budget.charge(tally, "ff", Usage(prompt_tokens=200, completion_tokens=100), Prices(1.0, 2.0))  # 400 each
    for _ in range(250):  # no reply to wait for: poll what landed
        if (await state_and_message(redis, "ff"))[0] == "paused":
            break
        await asyncio.sleep(0.02)
    await tally.aclose()
    assert (await state_and_message(redis, "ff"))[0] == "paused"
    assert await redis.hget(keys.counters("ff"), "cost_micro_usd") == b"1200"


# --- a paused job stays still ---------------------------------------------------------------------


async def test_a_chunk_of_a_paused_job_starts_nothing_and_the_watchdog_leaves_it(
    redis: ArqRedis, fake_llm: Any
) -> None:
    fake = await fake_llm.astart(rpm=0)
    record = record_for("still", 16, max_cost_usd=0.01)
    await records.create_job(redis, record, planned=16)
    await redis.hdel(keys.pending_plans("still"), "0-16")  # enqueued, as far as the watchdog knows
    await records.set_state(redis, "still", JobState.PAUSED, "paused: budget reached")
    endpoint = fake.endpoint_settings()
    tally = Tally(REDIS_URL, redis, 5)
    async with raw_client("fake", endpoint) as llm:
        outcome = await run_chunk(redis, record, recipe_for(record, "fake", endpoint), llm,
                                  ChunkTask(job_id="still", start=0, stop=8), False, tally)  # fmt: skip
    await tally.aclose()
    assert outcome.skipped == 8 and outcome.emitted == 0 and (await fake.astats())["requests"] == 0

    watchdog = Watchdog(redis, stall_ms=0)
    for _ in range(3):  # no progress at all, with a zero stall time: still not stalled, not redriven, not failed
        report = await watchdog.run_once()
        assert (report.stalled, report.redriven, report.failed) == (0, 0, 0), report
    assert await redis.zcard(keys.QUEUE_NAME) == 0
    assert (await state_and_message(redis, "still"))[0] == "paused"

    # resuming needs room; with room it enqueues every chunk that still has items to generate
    await redis.hset(keys.counters("still"), "cost_micro_usd", 10_000)  # 10,000 of 10,000: the cap is reached
    await redis.sadd(keys.generated("still"), *range(8, 16))  # the second chunk is done
    with pytest.raises(caps.BudgetExhausted):
        await lifecycle.resume(redis, record)
    assert (await state_and_message(redis, "still"))[0] == "paused"
    await caps.set_budget(redis, "still", JobBudget(max_cost_usd=0.02))
    await lifecycle.resume(redis, record)
    assert (await state_and_message(redis, "still"))[0] == "running"
    queued = [m.decode() for m in await redis.zrange(keys.QUEUE_NAME, 0, -1)]
    assert queued == [ChunkTask(job_id="still", start=0, stop=8).arq_id], queued
    with pytest.raises(caps.NotPaused, match="running"):
        await lifecycle.resume(redis, record)


# --- the whole job, through the API ----------------------------------------------------------------


def test_budget_pause_and_resume_lose_and_duplicate_nothing(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """Done when: a budget-capped job pauses at its cap within one chunk's spend and completes after the cap is
    raised, with exactly ``count`` accepted, no duplicate, and every call the endpoint saw counted."""
    fake = fake_llm(rpm=0, latency_ms=100)
    env = service_env({"fake": fake.endpoint_settings(max_concurrency=CHUNK, **PRICES)})
    api = processes.api(env)
    processes.worker(env)
    n, cap = 96, 0.30
    job_id = submit(api, recipe="prompts", prompts=prompts(n), chunk_size=CHUNK, dedup={"exact": False},
                    budget={"max_cost_usd": cap})  # fmt: skip
    status = wait_for(api, job_id, lambda s: s["state"] == "paused" or finished(s), timeout=60)
    assert status["state"] == "paused", status
    assert status["message"].startswith("paused: budget reached ($") and f"PATCH /v1/jobs/{job_id}" in status["message"]

    def settled(s: dict[str, Any]) -> bool:  # the calls in flight at the pause have finished and been curated
        c = s["counters"]
        return bool(c["processed"] == c["generated"] > 0)

    time.sleep(0.5)
    wait_for(api, job_id, settled, timeout=30)
    before, seen = keyed.get(f"{api}/v1/jobs/{job_id}").json(), fake.stats()["requests"]
    time.sleep(2.0)
    after, seen_after = keyed.get(f"{api}/v1/jobs/{job_id}").json(), fake.stats()["requests"]
    assert seen_after == seen, "calls reached the endpoint while the job was paused"
    assert after["counters"] == before["counters"] and after["state"] == "paused", (before, after)
    c = after["counters"]
    assert c["llm_calls"] == seen and 0 < c["accepted"] < n, c
    per_call = c["cost_usd"] / c["llm_calls"]
    assert cap <= c["cost_usd"] <= cap + CHUNK * per_call * 1.2, c  # paused within one chunk's spend
    assert after["budget"] == {"max_cost_usd": cap, "max_tokens": None}
    assert after["budget_left"] == {"cost_usd": 0.0, "tokens": None}

    refused = keyed.post(f"{api}/v1/jobs/{job_id}/resume")
    assert refused.status_code == 409 and "still at its budget" in refused.json()["detail"], refused.text
    bad = keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_cost_usd": -1}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "budget", "max_cost_usd"], bad.text
    assert keyed.patch(f"{api}/v1/jobs/nope", json={"budget": {"max_cost_usd": 1}}).status_code == 404
    assert keyed.post(f"{api}/v1/jobs/nope/resume").status_code == 404

    raised = keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_cost_usd": 100.0}})
    assert raised.status_code == 200, raised.text
    assert raised.json()["state"] == "running" and raised.json()["budget"]["max_cost_usd"] == 100.0
    status = wait_for(api, job_id, finished, timeout=90)
    assert status["state"] == "completed", status
    c = status["counters"]
    assert c["accepted"] == n and c["rejected"] == 0, c
    accepted = examples(api, job_id)
    assert len(accepted) == n
    assert len({e["id"] for e in accepted}) == n and sorted(e["index"] for e in accepted) == list(range(n))
    assert len({e["instruction"] for e in accepted}) == n
    assert c["llm_calls"] == fake.stats()["requests"], (c, fake.stats())
    assert status["budget_left"]["cost_usd"] == round(100.0 - c["cost_usd"], 6)

    late = keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_cost_usd": 200.0}})
    assert late.status_code == 409 and "completed" in late.json()["detail"], late.text
    assert keyed.post(f"{api}/v1/jobs/{job_id}/resume").status_code == 409


def test_a_token_capped_job_pauses_and_can_be_cancelled(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=50)
    env = service_env({"fake": fake.endpoint_settings(max_concurrency=4, **PRICES)})
    api = processes.api(env)
    processes.worker(env)
    job_id = submit(api, recipe="prompts", prompts=prompts(64), chunk_size=CHUNK, dedup={"exact": False},
                    budget={"max_tokens": 1000})  # fmt: skip
    status = wait_for(api, job_id, lambda s: s["state"] == "paused" or finished(s), timeout=60)
    assert status["state"] == "paused" and "token budget reached" in status["message"], status
    lowered = keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_tokens": 1001}})
    assert lowered.json()["state"] == "paused"  # still no room: stays paused
    assert keyed.post(f"{api}/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    time.sleep(1.0)
    seen = fake.stats()["requests"]
    time.sleep(1.5)
    assert fake.stats()["requests"] == seen
    final = keyed.get(f"{api}/v1/jobs/{job_id}").json()
    assert final["state"] == "cancelled" and final["counters"]["llm_calls"] == seen, final

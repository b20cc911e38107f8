"""Team quotas (issue 16.5): the running-jobs quota admitted atomically, its slot released and self-healed; team
day budgets that pause every job of the team at the cap and resume them when the cap is raised or the UTC day
rolls over, nothing lost or duplicated; fair share per team first, then per job. Real Redis; the API and
worker processes where the issue asks for them; the fake endpoint."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from schemas.errors import OverQuota
from schemas.jobs import JobBudget, JobRecord, JobState, PromptsJobSpec
from schemas.llm import Usage
from schemas.teams import Role, TeamCreate, TeamUpdate
from store import budget, jobs, keys, lifecycle, quotas, records, teams
from store.budget import Prices, TeamBudgetExhausted
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env
from tests.test_end_to_end import finished
from workers.watchdog import Watchdog

T = TypeVar("T")
PRICES = {"usd_per_mtok_prompt": 100.0, "usd_per_mtok_completion": 200.0}  # ~$0.017 a call of the fake
CHUNK = 8


def prompts(n: int, what: str = "number") -> list[str]:
    return [f"Write one sentence about the {what} {i}." for i in range(n)]


def record_for(job_id: str, n: int, team: str, chunk_size: int = CHUNK, max_cost_usd: float | None = None) -> JobRecord:
    cap = {"max_cost_usd": max_cost_usd} if max_cost_usd else None
    spec = PromptsJobSpec.model_validate({"prompts": prompts(n), "budget": cap})
    return JobRecord(id=job_id, spec=spec, team=team, endpoint="fake", model="fake-model", chunk_size=chunk_size,
                     created_at=datetime.now(UTC))  # fmt: skip


async def new_team(redis: ArqRedis, name: str, **quota: Any) -> str:
    """A team with the quotas given and a member key for it; returns the key."""
    await teams.create_team(redis, TeamCreate(name=name, **quota))
    return (await teams.create_key(redis, name, Role.MEMBER, f"{name} member", "cli")).key


async def job_keys(redis: ArqRedis) -> set[str]:
    """The job ids anything is stored under (``job:{id}`` and every ``job:{id}:...``)."""
    return {k.decode().split(":")[2] async for k in redis.scan_iter(match=keys.JOB_PREFIX + "*")}


# --- running jobs ------------------------------------------------------------------------------------------


async def test_two_concurrent_submits_against_a_one_job_quota_admit_exactly_one(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = await fake_llm.astart(rpm=0, latency_ms=20)
    key = await new_team(redis, "solo", max_running_jobs=1)
    api = processes.api(service_env({"fake": fake.endpoint_settings()}))
    body = {"recipe": "prompts", "prompts": prompts(4), "chunk_size": 4, "dedup": {"exact": False}}
    async with httpx.AsyncClient(headers=keyed.auth(key), timeout=30) as client:
        for _ in range(5):  # five races; between them the admitted job is cancelled, which frees its slot
            answers = await asyncio.gather(*(client.post(f"{api}/v1/jobs", json=body) for _ in range(2)))
            codes = sorted(a.status_code for a in answers)
            assert codes == [201, 429], [a.text for a in answers]
            admitted = next(a for a in answers if a.status_code == 201).json()["id"]
            refused = next(a for a in answers if a.status_code == 429)
            assert refused.headers["retry-after"] == str(quotas.RETRY_AFTER_S)
            got = refused.json()
            assert (got["code"], got["quota"], got["limit"], got["used"]) == ("over_quota", "max_running_jobs", 1, 1)
            assert "max_running_jobs=1" in got["detail"] and "skillmix teams update solo" in got["detail"]
            stored = await job_keys(redis)
            assert admitted in stored and await redis.zcard(keys.team_running("solo")) == 1
            cancelled = await client.post(f"{api}/v1/jobs/{admitted}/cancel")
            assert cancelled.json()["state"] == "cancelled"
            assert await redis.zcard(keys.team_running("solo")) == 0  # released with the state change
        # nothing of any refused submit was stored: only the five admitted jobs have keys, index and listing
        listed = (await client.get(f"{api}/v1/jobs")).json()
        assert listed["count"] == 5 and len(stored) == 5 and await redis.zcard(keys.JOBS_INDEX) == 5
        assert await job_keys(redis) == {j["id"] for j in listed["data"]}
        queued = {m.decode().split(":")[2] for m in await redis.zrange(keys.QUEUE_NAME, 0, -1)}
        assert queued <= stored

        # a completed job frees its slot too: a worker finishes the one admitted job, then the next is admitted
        processes.worker(service_env({"fake": fake.endpoint_settings()}))
        first = await client.post(f"{api}/v1/jobs", json=body)
        assert first.status_code == 201, first.text
        assert (await client.post(f"{api}/v1/jobs", json=body)).status_code == 429
        done = await asyncio.to_thread(until, api, key, first.json()["id"], finished, 60)
        assert done["state"] == "completed", done
        usage = await teams.usage(redis, "solo")
        assert usage.running_jobs == 0
        assert (await client.post(f"{api}/v1/jobs", json=body)).status_code == 201


async def test_stale_and_finished_slots_heal_and_a_failed_create_gives_its_slot_back(redis: ArqRedis) -> None:
    await new_team(redis, "heal", max_running_jobs=1)
    ghost = record_for("ghost", 8, "heal")
    assert await quotas.admit(redis, ghost) == "queued"  # an API killed right after admission: no record
    with pytest.raises(OverQuota) as refused:
        await records.create_job(redis, record_for("next", 8, "heal"), planned=8)
    assert (refused.value.quota, refused.value.limit, refused.value.used) == ("max_running_jobs", 1, 1)
    assert "next" not in await job_keys(redis)  # refused: nothing stored

    # the ghost's admission, 61 s ago: dropped (with the meta its admission wrote) before the count
    await redis.zadd(keys.team_running("heal"), {"ghost": await redis_ms(redis) - quotas.STALE_MS - 1000})
    await records.create_job(redis, record_for("next", 8, "heal"), planned=8)
    assert [m.decode() for m in await redis.zrange(keys.team_running("heal"), 0, -1)] == ["next"]
    assert "ghost" not in await job_keys(redis)

    # a member whose job finished (its release lost somehow) is dropped too; a live one is never dropped
    await redis.hset(keys.meta("next"), "state", "completed")
    await records.create_job(redis, record_for("third", 8, "heal"), planned=8)
    with pytest.raises(OverQuota):
        await records.create_job(redis, record_for("fourth", 8, "heal"), planned=8)
    assert await quotas.running_jobs(redis, "heal") == 1

    # a job refused after its admission (here: its id is taken by a record) gives the slot back
    await records.set_state(redis, "third", JobState.CANCELLED, "cancelled by request")
    await redis.set(keys.job("taken"), "someone else's record")
    with pytest.raises(quotas.JobExists):
        await records.create_job(redis, record_for("taken", 8, "heal"), planned=8)
    assert await redis.zcard(keys.team_running("heal")) == 0
    assert await redis.get(keys.job("taken")) == b"someone else's record"  # not ours: left alone
    assert not await redis.exists(keys.meta("taken"))


async def redis_ms(redis: ArqRedis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- team day budgets --------------------------------------------------------------------------------------


async def state_of(redis: ArqRedis, job_id: str) -> tuple[str, str, str]:
    state, message, by = await redis.hmget(keys.meta(job_id), "state", "message", "paused_by")
    return state.decode(), message.decode(), (by or b"").decode()


async def test_the_team_cap_pauses_every_job_of_the_team_and_a_new_day_resumes_them(redis: ArqRedis) -> None:
    await new_team(redis, "day", max_usd_per_day=0.012)  # 12,000 micro-dollars a day
    await new_team(redis, "other")
    for job_id, team in (("a", "day"), ("b", "day"), ("own", "day"), ("spent", "day"), ("x", "other")):
        cap = {"own": 0.004, "spent": 0.001}.get(job_id)
        await records.create_job(redis, record_for(job_id, 8, team, max_cost_usd=cap), planned=8)
        await records.set_state(redis, job_id, JobState.RUNNING)
    call, prices = Usage(prompt_tokens=1000, completion_tokens=1000), Prices(1.0, 2.0)  # 3,000 micro-dollars
    assert await budget.charge_awaited(redis, "spent", Usage(prompt_tokens=1000), prices)  # its own cap: 1,000
    assert not await budget.charge_awaited(redis, "a", call, prices)  # the team's day: 4,000
    assert not await budget.charge_awaited(redis, "own", call, prices)  # 7,000; own: 3,000 of its 4,000
    assert await budget.charge_awaited(redis, "own", call, prices)  # 10,000; own at its own cap
    assert not await budget.charge_awaited(redis, "x", Usage(prompt_tokens=10**6), prices)  # another team's
    assert await budget.charge_awaited(redis, "b", call, prices)  # 13,000 >= 12,000: the team's jobs pause
    for job_id in ("a", "b"):
        state, message, by = await state_of(redis, job_id)
        assert (state, by) == ("paused", "team"), message
        assert message == (
            "paused: team day's daily budget reached ($0.0130 of $0.0120 today); raise it with `skillmix teams "
            "update day --max-usd-per-day Y` or PATCH /v1/teams/day, or wait for the UTC day to end"
        )
    for job_id in ("own", "spent"):  # their own budgets paused them first
        assert (await state_of(redis, job_id))[::2] == ("paused", "job"), job_id
    assert (await state_of(redis, "x"))[0] == "running"
    assert not await budget.charge_awaited(redis, "a", call, prices)  # a call in flight at the pause: charged
    usage = await teams.usage(redis, "day")
    assert usage.spent_today.usd == 0.016 and usage.spent_today.tokens == 11_000 and usage.running_jobs == 4
    assert usage.at_day_cap is not None and "team day's daily budget reached" in usage.at_day_cap
    assert (await teams.usage(redis, "other")).spent_today.tokens == 10**6

    record_a, record_own = await records.load_record(redis, "a"), await records.load_record(redis, "own")
    assert record_a is not None and record_own is not None
    with pytest.raises(TeamBudgetExhausted, match="team day's daily budget reached"):
        await lifecycle.resume(redis, record_a)  # the job-level resume refuses while the team is at its cap
    await budget.set_budget(redis, "own", JobBudget(max_cost_usd=1.0))  # its own cap raised, the team's not:
    with pytest.raises(TeamBudgetExhausted):
        await lifecycle.resume(redis, record_own)
    assert (await state_of(redis, "own"))[::2] == ("paused", "team")  # now it waits for the team's budget
    await records.create_job(redis, record_for("late", 8, "day"), planned=8)  # submitted at the cap: paused
    assert (await state_of(redis, "late"))[::2] == ("paused", "team")

    watchdog = Watchdog(redis, stall_ms=60_000)
    assert (await watchdog.run_once()).resumed == 0  # still today: nothing resumes
    today = await quotas.utc_day(redis)
    await redis.rename(keys.team_day("day", today), keys.team_day("day", today - 1))  # the UTC day rolls over
    assert (await watchdog.run_once()).resumed == 4
    for job_id in ("a", "b", "own", "late"):
        assert (await state_of(redis, job_id))[::2] == ("running", ""), job_id
    assert (await state_of(redis, "spent"))[::2] == ("paused", "job")  # a new day does not raise its own budget
    queued = {m.decode().split(":")[2] for m in await redis.zrange(keys.QUEUE_NAME, 0, -1)}
    assert {"a", "b", "own", "late"} <= queued  # resumed jobs got their chunks enqueued again

    # the token cap works the same way, and removing it (update_team) resumes at once
    await teams.update_team(redis, "day", TeamUpdate(max_tokens_per_day=500))
    assert await budget.charge_awaited(redis, "a", Usage(prompt_tokens=600), Prices())
    state, message, by = await state_of(redis, "b")
    assert (state, by) == ("paused", "team"), message
    assert "team day's daily token budget reached (600 of 500 tokens today)" in message
    assert "--max-tokens-per-day N" in message
    await teams.update_team(redis, "day", TeamUpdate(max_tokens_per_day=None))
    for job_id in ("a", "b", "own", "late"):
        assert (await state_of(redis, job_id))[0] == "running", job_id
    assert (await state_of(redis, "spent"))[0] == "paused"


def test_team_budget_pauses_its_jobs_and_raising_it_loses_and_duplicates_nothing(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """Two jobs of one team against the team's day cap, real API and worker: both pause at the cap with the
    team's message (calls in flight finish and are charged; nothing is sent while paused), a job submitted
    meanwhile starts paused, the job-level resume is refused, and raising the team's cap carries all three to
    completion with every example exactly once and every call the endpoint saw counted."""
    fake = fake_llm(rpm=0, latency_ms=100)
    env = service_env({"fake": fake.endpoint_settings(max_concurrency=CHUNK, **PRICES)})
    key = on_store(lambda r: new_team(r, "tb", max_usd_per_day=0.30))
    api = processes.api(env)
    processes.worker(env)
    n = 48

    def submit(what: str) -> dict[str, Any]:
        spec = {"recipe": "prompts", "prompts": prompts(n, what), "chunk_size": CHUNK, "dedup": {"exact": False}}
        response = keyed.post(f"{api}/v1/jobs", json=spec, key=key)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def status(job_id: str) -> dict[str, Any]:
        return dict(keyed.get(f"{api}/v1/jobs/{job_id}", key=key).json())

    ids = [submit("apple")["id"], submit("pear")["id"]]
    for job_id in ids:
        got = until(api, key, job_id, lambda s: s["state"] == "paused" or finished(s), 90)
        assert got["state"] == "paused", got
        assert got["message"].startswith("paused: team tb's daily budget reached ($"), got["message"]
        assert "skillmix teams update tb --max-usd-per-day" in got["message"] and "UTC day" in got["message"]

    def calm(s: dict[str, Any]) -> bool:  # the calls in flight at the pause have finished and been curated
        return bool(s["counters"]["processed"] == s["counters"]["generated"])

    time.sleep(0.5)
    for job_id in ids:
        until(api, key, job_id, calm, 30)
    before, seen = [status(i)["counters"] for i in ids], fake.stats()["requests"]
    time.sleep(2.0)
    assert fake.stats()["requests"] == seen, "calls reached the endpoint while the team was paused"
    assert [status(i)["counters"] for i in ids] == before
    spent_micro = round(on_store(lambda r: teams.usage(r, "tb")).spent_today.usd * 1e6)
    assert spent_micro == sum(c["cost_micro_usd"] for c in before)  # the team's day is the sum of its jobs'
    per_call = sum(c["cost_usd"] for c in before) / sum(c["llm_calls"] for c in before)
    assert 0.30 <= spent_micro / 1e6 <= 0.30 + 2 * CHUNK * per_call * 1.2  # paused within the calls in flight

    refused = keyed.post(f"{api}/v1/jobs/{ids[0]}/resume", key=key)
    assert refused.status_code == 409 and "team tb's daily budget reached" in refused.json()["detail"], refused.text
    late = submit("plum")  # while the team is at its cap: starts paused, sends nothing
    assert late["state"] == "paused" and "team tb's daily budget" in late["message"], late
    ids.append(late["id"])
    time.sleep(1.0)
    assert status(late["id"])["counters"]["llm_calls"] == 0 and fake.stats()["requests"] == seen

    on_store(lambda r: teams.update_team(r, "tb", TeamUpdate(max_usd_per_day=100.0)))  # resumes all three
    for job_id in ids:
        done = until(api, key, job_id, finished, 120)
        assert done["state"] == "completed", done
        c = done["counters"]
        assert c["accepted"] == n and c["rejected"] == 0, c
        kept = examples_of(api, job_id, key)
        assert len({e["id"] for e in kept}) == n and sorted(e["index"] for e in kept) == list(range(n))
    calls = sum(status(i)["counters"]["llm_calls"] for i in ids)
    assert calls == fake.stats()["requests"], (calls, fake.stats())


def until(api: str, key: str, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """``wait_for`` with another team's key."""
    deadline = time.monotonic() + timeout
    got: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = keyed.get(f"{api}/v1/jobs/{job_id}", key=key).json()
        if done(got):
            return got
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s: {got}")


def examples_of(api: str, job_id: str, key: str) -> list[dict[str, Any]]:
    response = keyed.get(f"{api}/v1/jobs/{job_id}/examples", key=key, timeout=30)
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line]


def on_store(work: Callable[[ArqRedis], Awaitable[T]]) -> T:
    """Run store code from a sync test, on a connection of its own."""

    async def run() -> T:
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
        try:
            return await work(pool)
        finally:
            await pool.aclose()

    return asyncio.run(run())


# --- fair share per team, then per job ---------------------------------------------------------------------


async def teams_in_queue_order(redis: ArqRedis) -> list[str]:
    """The job id of each queued step, in the order arq hands them out (lowest score first)."""
    return [m.decode().split(":")[2] for m in await redis.zrange(keys.QUEUE_NAME, 0, -1)]


async def test_a_team_with_three_jobs_gets_one_jobs_share_against_a_team_with_one(redis: ArqRedis) -> None:
    """Per job, the three jobs of ``many`` would get three quarters of the queue's head; per team, half."""
    for name in ("many", "one"):
        await new_team(redis, name)
    for i in range(3):  # 20 chunks each, submitted one after another: each joins its team's earlier jobs
        await jobs.submit(redis, record_for(f"many{i}", 80, "many", chunk_size=4))
    await jobs.submit(redis, record_for("one", 160, "one", chunk_size=4))  # 40 chunks
    order = await teams_in_queue_order(redis)
    assert len(order) == 100
    head = order[:40]
    print("first 40 steps:", {j: head.count(j) for j in sorted(set(head))})
    assert 17 <= head.count("one") <= 23, head  # about half, where per-job sharing gives it 10 of 40
    for i in range(3):  # and within the team, its jobs share alike
        assert 5 <= head.count(f"many{i}") <= 9, head
    # a job of a team alone keeps the old spacing: consecutive scores
    scores = [int(sc) for _, sc in await redis.zrange(keys.QUEUE_NAME, 0, -1, withscores=True)]
    one = [int(sc) for m, sc in await redis.zrange(keys.QUEUE_NAME, 0, -1, withscores=True) if b":one:" in m]
    assert one == list(range(one[0], one[0] + 40)) and min(scores) == one[0]


def test_fair_share_across_teams_with_a_real_worker(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """Team ``many`` submits four jobs, then team ``one`` one job of the same size; one worker runs two chunks at
    a time. Per job, ``one`` would get a fifth of the worker and finish last, with ``many`` nearly done; per team,
    it gets half, so when it finishes ``many`` has generated about as much as it has."""
    fake = fake_llm(rpm=0, latency_ms=100)
    env = service_env({"fake": fake.endpoint_settings()}, SKILLMIX_WORKER_MAX_JOBS="2")
    many = on_store(lambda r: new_team(r, "many"))
    one = on_store(lambda r: new_team(r, "one"))
    api = processes.api(env)
    n = 40

    def submit(key: str, what: str) -> str:
        spec = {"recipe": "prompts", "prompts": prompts(n, what), "chunk_size": 4, "dedup": {"exact": False}}
        response = keyed.post(f"{api}/v1/jobs", json=spec, key=key, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    theirs = [submit(many, f"apple {i}") for i in range(4)]
    mine = submit(one, "pear")
    processes.worker(env)  # everything is queued before the worker takes the first chunk
    done = until(api, one, mine, finished, 90)
    assert done["state"] == "completed" and done["counters"]["accepted"] == n, done
    generated = sum(until(api, many, j, lambda s: True, 5)["counters"]["generated"] for j in theirs)
    print(f"team many generated {generated} items while team one generated {n}")
    assert generated <= 2 * n, f"team many got {generated / n:.1f}x team one's share (per job it would be 4x)"
    for job_id in theirs:
        assert until(api, many, job_id, finished, 120)["counters"]["accepted"] == n

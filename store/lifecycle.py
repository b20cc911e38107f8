"""Carrying a job on: after every curated item finish it or top it up (exactly once across workers), and
resume it after a budget pause."""

from collections import Counter
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from schemas.jobs import JobCounters, JobRecord, JobState
from store import keys, queue, records, stepped
from store.budget import RESUME, BudgetExhausted, NotPaused, TeamBudgetExhausted
from store.clock import now_iso


def shortfall_message(record: JobRecord, counters: JobCounters) -> str:
    reasons = Counter(counters.rejected_by_reason).most_common(3)
    why = ", ".join(f"{r} {n}" for r, n in reasons) or "none"
    if not record.spec.counts_shortfall:  # e.g. a brought dataset: every row is decided, nothing "falls short"
        return f"{counters.accepted} of {record.spec.count} rows accepted, {counters.rejected} rejected. Top: {why}"
    return (
        f"fell short: {counters.accepted} of {record.spec.count} accepted after {counters.processed} items; "
        f"attempt budget (max_items={record.spec.item_budget}) spent. Top rejections: {why}"
    )


async def advance(redis: ArqRedis, record: JobRecord) -> None:
    counters = await records.read_counters(redis, record)
    if counters.accepted >= record.spec.count:
        await records.set_state(redis, record.id, JobState.COMPLETED, f"{counters.accepted} accepted")
        return
    if counters.processed >= counters.planned and counters.planned >= record.spec.item_budget:
        await records.set_state(redis, record.id, JobState.COMPLETED, shortfall_message(record, counters))
        return
    more = queue.top_up_size(record, counters)
    if more:
        await queue.plan(redis, record, counters.planned, counters.planned + more)


async def _still_at_budget(redis: Redis, job_id: str) -> str:
    current = await records.get_status(redis, job_id)
    cap, c = (current.budget, current.counters) if current else (None, None)
    spent = f"${c.cost_usd:.4f} of ${cap.max_cost_usd:.4f}" if c and cap and cap.max_cost_usd else ""
    used = f"{c.prompt_tokens + c.completion_tokens} of {cap.max_tokens} tokens" if c and cap and cap.max_tokens else ""
    return (
        f"job {job_id} is still at its budget ({', '.join(p for p in (spent, used) if p)} used); raise it "
        f'first with PATCH /v1/jobs/{job_id} {{"budget": {{"max_cost_usd": ...}}}} or `skillmix budget {job_id} '
        "--max-cost-usd X`"
    )


async def _resume_state(redis: Redis, job_id: str, team_only: bool) -> None:
    """Paused -> running, atomically with the check that the job's cap and its team's day cap have room (a
    charge cannot slip in between). ``team_only``: only a job its team's budget paused."""
    script_keys = [keys.counters(job_id), keys.meta(job_id), keys.budget(job_id)]
    mode = "team" if team_only else ""
    outcome = (await redis.eval(RESUME, 3, *script_keys, now_iso(), mode, keys.TEAM_PREFIX, job_id)).decode()
    if outcome == "exhausted":
        raise BudgetExhausted(await _still_at_budget(redis, job_id))
    if outcome.startswith("team:"):
        raise TeamBudgetExhausted(f"job {job_id} is paused at its team's budget: {outcome.removeprefix('team:')}")
    if outcome != "ok":
        state = outcome.removeprefix("state:")
        raise NotPaused(f"job {job_id} is {state}, not paused; only a paused job can be resumed")


SCAN_BATCH = 256  # chunks looked up per pipeline when resuming


async def resume(redis: ArqRedis, record: JobRecord, *, team_only: bool = False) -> None:
    """Paused -> running, then carry on: top the job up if it needs more items, and enqueue every planned chunk
    with items still to generate that arq neither holds nor runs (its reruns skip the generated items).
    ``team_only``: resume only a job paused by its team's day budget (``store.teams.resume_team``)."""
    await _resume_state(redis, record.id, team_only)
    await redis.hdel(keys.WATCHDOG, record.id)  # the stall clock starts again now, not at the pause
    if not stepped.is_stepped(record):  # a stepped job completes by its last step, never by its counters
        await advance(redis, record)
    await requeue_unfinished(redis, record)


async def requeue_unfinished(redis: ArqRedis, record: JobRecord) -> int:
    """Enqueue again each planned chunk with items not generated that is neither queued nor running; returns
    how many. A chunk still running when the job resumed retries itself (``generate.JobResumed``); a stepped
    job (extraction) gets its next step (``store.stepped``)."""
    if stepped.is_stepped(record):
        return await stepped.requeue(redis, record)
    pending = {f.decode() for f in await redis.hkeys(keys.pending_plans(record.id))}
    for field in pending:
        start, stop = (int(n) for n in field.split("-"))
        await queue.enqueue_planned(redis, record, start, stop)
    tasks = [
        task
        for start, stop in await queue.planned_ranges(redis, record.id)
        if f"{start}-{stop}" not in pending
        for task in queue.chunks(record, start, stop)
    ]
    requeued = 0
    for lo in range(0, len(tasks), SCAN_BATCH):
        batch = tasks[lo : lo + SCAN_BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for task in batch:
                pipe.smismember(keys.generated(record.id), list(range(task.start, task.stop)))
                pipe.zscore(keys.QUEUE_NAME, task.arq_id)
                pipe.exists(in_progress_key_prefix + task.arq_id)
            replies: list[Any] = await pipe.execute()
        for i, task in enumerate(batch):
            done, queued, running = replies[3 * i : 3 * i + 3]
            if all(done) or queued is not None or running:
                continue
            stale = (job_key_prefix, result_key_prefix, retry_key_prefix)  # arq's record of its last run
            await redis.delete(*(prefix + task.arq_id for prefix in stale))
            await queue.enqueue_range(redis, record, task.start, task.stop)
            requeued += 1
    return requeued

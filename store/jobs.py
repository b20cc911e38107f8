"""The jobs facade: what the API and the CLI do to a job (submit, cancel, change its budget, resume, ask for
review help), without the engine.

``service`` imports this, ``store`` and ``schemas``, never ``workers`` (the import-linter contracts in
``pyproject.toml``): work is handed to the engine only through the queue, as typed ``Step`` units for the
runner's one arq function (``store.queue.enqueue_steps``).
"""

import contextlib

from arq.connections import ArqRedis
from redis.asyncio import Redis

from schemas.jobs import JobBudget, JobRecord, JobState, JobStatus, PhaseTask
from schemas.llm import Usage
from schemas.review import HelpKind, HelpTask
from store import batches, budget, keys, lifecycle, queue, records, stepped
from store.budget import BudgetExhausted, NotPaused

__all__ = ["BudgetExhausted", "NotPaused", "ask_for_help", "cancel", "create", "patch_budget", "resume", "submit"]


async def create(redis: Redis, record: JobRecord) -> int:
    """Store the job with its first items planned; returns how many (a stepped job, e.g. an extraction, plans
    all its items up front and is queued step by step instead). The one way a job is created: a team's job is
    admitted here (``records.create_job``: ``OverQuota`` over ``max_running_jobs``, nothing stored)."""
    spec = record.spec
    if spec.stepped:
        await records.create_job(redis, record)
        await redis.hset(keys.counters(record.id), "planned", spec.count)
        return 0
    first = min(spec.count, spec.item_budget)
    await records.create_job(redis, record, planned=first)
    return first


async def submit(redis: ArqRedis, record: JobRecord) -> JobStatus:
    """Store the job and queue its first work: its first chunks, or a stepped job's first phase step. A team's
    job is admitted against the team's quotas first (``OverQuota``: nothing stored); its team's other jobs'
    queued work is then spread so the team keeps one job's share of the queue (``queue.respace_team``)."""
    first = await create(redis, record)
    if stepped.is_stepped(record):
        await queue.enqueue_steps(redis, record.id, [PhaseTask(job_id=record.id, step=0)])
    else:
        await queue.enqueue_planned(redis, record, 0, first)
    if record.team:
        await queue.respace_team(redis, record.team, record.id)
    status = await records.get_status(redis, record.id)
    assert status is not None  # just stored
    return status


async def cancel(redis: Redis, job_id: str) -> bool:
    """Cancel a job unless it already finished; False if it had (finished states are final). Its open provider
    batches are polled at once, so their cancel goes out now rather than at their next poll."""
    cancelled = await records.set_state(redis, job_id, JobState.CANCELLED, "cancelled by request")
    if cancelled:
        await batches.poll_now(redis, job_id)
    return cancelled


async def patch_budget(redis: ArqRedis, record: JobRecord, cap: JobBudget, state: JobState) -> None:
    """Replace the limits given in ``cap``. A job paused at its budget resumes if the new cap has room; any
    other job is checked against the new cap at once (lowered below its spend, it pauses now)."""
    await budget.set_budget(redis, record.id, cap)
    if state is JobState.PAUSED:
        with contextlib.suppress(BudgetExhausted, NotPaused):  # still short, or resumed meanwhile
            await lifecycle.resume(redis, record)
    else:  # nothing spent: the same script that charges each call checks the new cap against the spend
        await budget.charge_awaited(redis, record.id, Usage(), budget.Prices())


async def resume(redis: ArqRedis, record: JobRecord) -> None:
    """Carry on with a job paused at its budget; raises ``NotPaused`` or ``BudgetExhausted``."""
    await lifecycle.resume(redis, record)


async def ask_for_help(
    redis: ArqRedis,
    job_id: str,
    item_id: str,
    suggestion_id: str,
    kind: HelpKind,
    by: str,
    skill: str | None,
    note: str,
) -> None:
    """Queue an LLM helper on a review item: a unit of its job, metered to it."""
    task = HelpTask(
        job_id=job_id, item_id=item_id, suggestion_id=suggestion_id, help=kind, by=by, skill=skill, note=note or ""
    )
    await queue.enqueue_steps(redis, job_id, [task])

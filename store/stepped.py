"""Jobs run as a chain of time-boxed steps (a recipe with ``stepped``, e.g. extraction): where the chain stands,
and how to restart it.

A stepped job has one live unit at a time: its last started step (``keys.step``, set by the runner before the
recipe's phase unit runs), or the next one it enqueued. Resuming a paused job, and the watchdog reviving a
stalled one, enqueue it again only when arq neither holds it in its queue nor runs it.
"""

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from schemas.jobs import JobRecord, PhaseTask
from store import keys, queue


def is_stepped(record: JobRecord) -> bool:
    return record.spec.stepped


async def current_step(redis: Redis, job_id: str) -> PhaseTask:
    """The job's last started step (step 0 before any started)."""
    return PhaseTask(job_id=job_id, step=int(await redis.get(keys.step(job_id)) or 0))


async def mark_started(redis: Redis, task: PhaseTask) -> None:
    """Record ``task`` as the job's last started step (the runner, before the recipe's phase unit runs)."""
    await redis.set(keys.step(task.job_id), task.step)


async def live(redis: Redis, task: PhaseTask) -> bool:
    """Whether arq holds the step (queued, or deferred for a retry) or a worker runs it."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(keys.QUEUE_NAME, task.arq_id)
        pipe.exists(in_progress_key_prefix + task.arq_id)
        queued, running = await pipe.execute()
    return queued is not None or bool(running)


async def requeue(redis: ArqRedis, record: JobRecord) -> int:
    """After a pause: enqueue the step after the last one unless that one (or the next) is still live;
    a step still running when the job resumed enqueues the next one itself. Returns how many enqueued."""
    current = await current_step(redis, record.id)
    following = PhaseTask(job_id=record.id, step=current.step + 1)
    if await live(redis, current) or await live(redis, following):
        return 0
    await queue.enqueue_steps(redis, record.id, [following])
    return 1

"""Jobs run as a chain of time-boxed steps (extraction): where the chain stands, and how to restart it.

A stepped job has one live unit at a time: its last started step (kept in the job's extraction state), or
the next one it enqueued. Resuming a paused job, and the watchdog reviving a stalled one, enqueue it again
only when arq neither holds it in its queue nor runs it.
"""

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from schemas.extract import ExtractTask
from schemas.jobs import JobRecord
from store import keys, queue
from store.extraction import ExtractStore


def is_stepped(record: JobRecord) -> bool:
    return record.spec.stepped


async def current_step(redis: Redis, job_id: str) -> ExtractTask:
    """The job's last started step (step 0 before any started)."""
    return ExtractTask(job_id=job_id, step=int((await ExtractStore(redis, job_id).state()).get("step", 0)))


async def live(redis: Redis, task: ExtractTask) -> bool:
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
    following = ExtractTask(job_id=record.id, step=current.step + 1)
    if await live(redis, current) or await live(redis, following):
        return 0
    await queue.enqueue_steps(redis, record.id, [following])
    return 1

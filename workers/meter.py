"""The one metered path for a job's LLM calls, whatever unit asks (chunk items, extraction, review help).

    ReplayClient(metered(Recorder(Resources.client(endpoint))))

``metered`` (``workers.generate``) refuses a call before it leaves when the job is no longer queued or running
(or the worker drains), counts it in the job's ``llm_calls`` at send (``workers.tally``) and charges its tokens
and cost against the job's budget (``workers.budget``); the client under it carries the fleet limiter,
adaptive concurrency and metrics; ``Recorder``/``ReplayClient`` keep each answer so a rerun never pays twice.
"""

from arq.connections import ArqRedis

from schemas.jobs import JobRecord
from workers.batch.parker import BatchParker
from workers.budget import prices_for
from workers.generate import metered_client
from workers.llm.client import ChatClient
from workers.llm.replay import Recorder, ReplayCache, ReplayClient
from workers.unit import Resources


async def job_llm(
    res: Resources,
    record: JobRecord,
    replay: ReplayCache,
    endpoint: str | None = None,
    *,
    refuse_when_finished: bool = True,
    unit: str | None = None,
) -> ReplayClient:
    """The job's metered, replayed view of ``endpoint`` (the job's own by default). Calls made outside an
    ``item_scope`` are metered but not replayed. A batch job's unit (``unit``: its arq id) parks its calls as
    batch lines instead (``workers.batch.parker``); review help (interactive) always goes online."""
    client = await res.client(endpoint or record.endpoint)
    recorder: ChatClient = Recorder(client)
    if record.spec.mode == "batch" and unit is not None:
        return replay.replaying(BatchParker(res.redis, record.id, client, unit), recorder)
    paid = metered_client(
        res.redis, record.id, recorder, res.tally, refuse_when_finished, prices=prices_for(client, record)
    )
    return replay.replaying(paid, recorder)


async def replay_cache(res: Resources, redis: ArqRedis, job_id: str, scope: int | str) -> ReplayCache:
    """The answers kept for one unit of a job (``scope``: a chunk's start, or a unit's own name)."""
    return await ReplayCache.load(redis, res.tally, job_id, scope, res.settings)

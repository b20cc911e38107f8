"""Job records, state and counters in Redis: create and load a job, move its state, read its counters and status.

Counters live in one hash and change only through HINCRBY or Lua scripts, so many workers on many machines
update them without lost writes. Prices are in ``store.pricing``, the cap in ``store.budget``, planning,
enqueueing and fair share in ``store.queue``.
"""

from redis.asyncio import Redis

from schemas.jobs import JobCounters, JobRecord, JobState, JobStatus
from store import batches, keys, quotas
from store.budget import cap_fields, read_budget
from store.clock import now_iso, redis_now_ms
from store.pricing import budget_left, cost_from_counters

_INT_FIELDS = (
    "planned",
    "processed",
    "accepted",
    "rejected",
    "parse_failures",
    "llm_calls",
    "retries",
    "replayed",
    "rate_limited",
    "prompt_tokens",
    "completion_tokens",
    "cost_micro_usd",
)


# Move to a new state unless the job already finished (finished states are final). A finished job stays in
# the active set until the watchdog sees its stream drained (``workers.watchdog``): nothing is left behind,
# and it gives its team's running-jobs slot back here, in the same step (``store.quotas``). Leaving ``paused``
# forgets which budget paused it. ARGV[6]: keys.TEAM_PREFIX.
_SET_STATE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if cur == 'completed' or cur == 'failed' or cur == 'cancelled' then return 0 end
if ARGV[4] ~= '' and cur ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'message', ARGV[2], 'updated_at', ARGV[3])
if ARGV[1] ~= 'paused' then redis.call('HDEL', KEYS[1], 'paused_by') end
if ARGV[1] == 'completed' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  local team = redis.call('HGET', KEYS[1], 'team')
  if team and team ~= '' then redis.call('ZREM', ARGV[6] .. team .. ':running', ARGV[5]) end
end
return 1
"""


async def create_job(redis: Redis, record: JobRecord, planned: int = 0) -> None:
    """Store a job with its first ``planned`` items recorded as pending, in one transaction.

    A team's job is admitted first (``store.quotas.admit``: over ``max_running_jobs`` it raises ``OverQuota``
    and nothing is stored; the admission writes the job's meta, ``paused`` if its team is at its day cap); a
    failure after that gives the slot back. The caller then enqueues the items with ``enqueue_planned``;
    should it die first, ``redrive`` does.
    """
    if record.team:
        await quotas.admit(redis, record)
    try:
        await _store(redis, record, planned)
    except quotas.JobExists:  # someone else's record: leave it
        if record.team:
            await quotas.release(redis, record, drop_record=False)
        raise
    except BaseException:
        if record.team:
            await quotas.release(redis, record)
        raise


async def _store(redis: Redis, record: JobRecord, planned: int) -> None:
    created = await redis.set(keys.job(record.id), record.model_dump_json(), nx=True)
    if not created:
        raise quotas.JobExists(f"job {record.id} exists")
    planned_at = await redis_now_ms(redis) if planned else 0
    spec_budget = record.spec.budget
    async with redis.pipeline(transaction=True) as pipe:
        if not record.team:  # a team's job got its meta at admission
            meta = {"state": JobState.QUEUED.value, "message": "", "updated_at": now_iso()}
            pipe.hset(keys.meta(record.id), mapping=meta)
        pipe.hset(keys.counters(record.id), mapping={"planned": planned, "processed": 0, "accepted": 0})
        cap = {k: v for k, v in cap_fields(spec_budget).items() if v is not None} if spec_budget else {}
        if cap:
            pipe.hset(keys.budget(record.id), mapping=cap)
        if planned:
            pipe.hset(keys.pending_plans(record.id), f"0-{planned}", planned_at)
            pipe.rpush(keys.ranges(record.id), f"0-{planned}")
        pipe.zadd(keys.JOBS_INDEX, {record.id: record.created_at.timestamp()})
        if record.team:
            pipe.zadd(keys.team_jobs(record.team), {record.id: record.created_at.timestamp()})
        pipe.sadd(keys.ACTIVE_JOBS, record.id)
        await pipe.execute()


async def load_record(redis: Redis, job_id: str) -> JobRecord | None:
    raw = await redis.get(keys.job(job_id))
    return None if raw is None else JobRecord.model_validate_json(raw)


async def get_state(redis: Redis, job_id: str) -> JobState | None:
    raw = await redis.hget(keys.meta(job_id), "state")
    return None if raw is None else JobState(raw.decode())


async def set_state(
    redis: Redis, job_id: str, state: JobState, message: str = "", *, only_from: JobState | None = None
) -> bool:
    """Returns False when the job had already finished (or was not in ``only_from``)."""
    changed = await redis.eval(
        _SET_STATE,
        2,
        keys.meta(job_id),
        keys.ACTIVE_JOBS,
        state.value,
        message,
        now_iso(),
        only_from.value if only_from else "",
        job_id,
        keys.TEAM_PREFIX,
    )
    return bool(changed)


async def read_counters(redis: Redis, record: JobRecord) -> JobCounters:
    raw = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.counters(record.id))).items()}
    counters = JobCounters(
        **{f: raw.get(f, 0) for f in _INT_FIELDS},
        generated=await redis.scard(keys.generated(record.id)),
        rejected_by_reason={k.split(":", 1)[1]: v for k, v in sorted(raw.items()) if k.startswith("rejected:")},
    )
    counters.cost_usd = cost_from_counters(raw, record)
    return counters


async def get_status(redis: Redis, job_id: str, record: JobRecord | None = None) -> JobStatus | None:
    """The job's status; ``record``: the job's record if the caller loaded it already (it never changes)."""
    record = record or await load_record(redis, job_id)
    if record is None:
        return None
    meta = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.meta(job_id))).items()}
    skill_set = record.skill_set.ref if record.skill_set else None
    counters = await read_counters(redis, record)
    budget = await read_budget(redis, job_id)
    state = JobState(meta.get("state", "queued"))
    # the watchdog retires a finished job from the active set once its stream is empty and no chunk runs
    settled = state.finished and not await redis.sismember(keys.ACTIVE_JOBS, job_id)
    batch = None
    if record.spec.mode == "batch":
        batch = await batches.progress(redis, job_id, job_endpoints(record))
    return JobStatus(
        id=record.id,
        recipe=record.spec.recipe,
        team=record.team,
        state=state,
        settled=settled,
        count=record.spec.count,
        endpoint=record.endpoint,
        skill_set=skill_set,
        created_at=record.created_at,
        updated_at=meta.get("updated_at") or None,
        message=meta.get("message", ""),
        counters=counters,
        result=meta.get("result") or None,
        budget=budget,
        budget_left=budget_left(budget, counters),
        mode=record.spec.mode,
        batch=batch,
    )


def job_endpoints(record: JobRecord) -> list[str]:
    """Every endpoint the job calls: its own, then those its spec names (a judge, a step checker)."""
    return list(dict.fromkeys([record.endpoint, *record.spec.extra_endpoints().values()]))


async def list_job_ids(redis: Redis, offset: int, limit: int, team: str | None = None) -> tuple[list[str], int]:
    """Newest first: every job's ids, or only ``team``'s."""
    index = keys.JOBS_INDEX if team is None else keys.team_jobs(team)
    ids = await redis.zrevrange(index, offset, offset + limit - 1)
    return [i.decode() for i in ids], await redis.zcard(index)

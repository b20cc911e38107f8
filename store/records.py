"""Job records, state and counters in Redis: the one place that knows how a job is laid out.

Counters live in one hash and change only through HINCRBY or the Lua scripts below, so many workers on
many machines update them without lost writes.
"""

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from schemas.jobs import BudgetLeft, ChunkTask, JobBudget, JobCounters, JobRecord, JobState, JobStatus
from store import keys

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
# the active set until the watchdog sees its stream drained (``workers.watchdog``): nothing is left behind.
_SET_STATE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if cur == 'completed' or cur == 'failed' or cur == 'cancelled' then return 0 end
if ARGV[4] ~= '' and cur ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'message', ARGV[2], 'updated_at', ARGV[3])
return 1
"""

# Raise ``planned`` from an expected value; only one of many racing workers wins a top-up. The new range is
# recorded as pending until its chunks are enqueued, so a process that dies in between loses nothing.
_PLAN = """
local cur = redis.call('HGET', KEYS[2], 'state')
if cur ~= 'queued' and cur ~= 'running' then return -1 end
local planned = tonumber(redis.call('HGET', KEYS[1], 'planned') or '0')
if planned ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'planned', ARGV[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[3], ARGV[1] .. '-' .. ARGV[2], t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('RPUSH', KEYS[4], ARGV[1] .. '-' .. ARGV[2])
return planned
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def redis_now_ms(redis: Redis) -> int:
    """Redis's clock: what pending plans are stamped and judged by, whatever the machines' clocks say."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def create_job(redis: Redis, record: JobRecord, planned: int = 0) -> None:
    """Store a job with its first ``planned`` items recorded as pending, in one transaction.

    The caller then enqueues them with ``enqueue_planned``; should it die first, ``redrive`` does.
    """
    created = await redis.set(keys.job(record.id), record.model_dump_json(), nx=True)
    if not created:
        raise ValueError(f"job {record.id} exists")
    planned_at = await redis_now_ms(redis) if planned else 0
    spec_budget = record.spec.budget
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.meta(record.id), mapping={"state": JobState.QUEUED.value, "message": "", "updated_at": now_iso()}
        )
        pipe.hset(keys.counters(record.id), mapping={"planned": planned, "processed": 0, "accepted": 0})
        cap = {k: v for k, v in cap_fields(spec_budget).items() if v is not None} if spec_budget else {}
        if cap:
            pipe.hset(keys.budget(record.id), mapping=cap)
        if planned:
            pipe.hset(keys.pending_plans(record.id), f"0-{planned}", planned_at)
            pipe.rpush(keys.ranges(record.id), f"0-{planned}")
        pipe.zadd(keys.JOBS_INDEX, {record.id: record.created_at.timestamp()})
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


class Priced(Protocol):
    """What pricing needs of a job record (``JobRecord``, or the prices /metrics caches of one)."""

    @property
    def usd_per_mtok_prompt(self) -> float: ...

    @property
    def usd_per_mtok_completion(self) -> float: ...


def cost_from_counters(raw: Mapping[str, int], record: Priced) -> float:
    """A job's cost from its counters hash: job status and the fleet's /metrics both use this, so they agree."""
    if "cost_micro_usd" in raw:  # exact: each call priced at its own endpoint (``workers.budget``)
        return raw["cost_micro_usd"] / 1e6
    # a job from before the exact counter: every token at the job's endpoint's prices
    return cost_usd(record, raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0))


def cap_fields(budget: JobBudget) -> dict[str, int | None]:
    """The ``job:{id}:budget`` fields of the limits given in ``budget`` (None: that limit is removed)."""
    fields: dict[str, int | None] = {}
    if "max_cost_usd" in budget.model_fields_set:
        usd = budget.max_cost_usd
        fields["max_cost_micro_usd"] = None if usd is None else max(1, round(usd * 1e6))
    if "max_tokens" in budget.model_fields_set:
        fields["max_tokens"] = budget.max_tokens
    return fields


async def read_budget(redis: Redis, job_id: str) -> JobBudget | None:
    """The cap in force (it may have been changed since submit); None without one."""
    raw = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.budget(job_id))).items()}
    if not raw:
        return None
    cost = raw.get("max_cost_micro_usd")
    return JobBudget(max_cost_usd=None if cost is None else cost / 1e6, max_tokens=raw.get("max_tokens"))


def budget_left(budget: JobBudget | None, counters: JobCounters) -> BudgetLeft | None:
    """What the cap still allows (never negative: in-flight calls may finish past it)."""
    if budget is None:
        return None
    cost = tokens = None
    if budget.max_cost_usd is not None:
        cost = max(0, round(budget.max_cost_usd * 1e6) - counters.cost_micro_usd) / 1e6
    if budget.max_tokens is not None:
        tokens = max(0, budget.max_tokens - counters.prompt_tokens - counters.completion_tokens)
    return BudgetLeft(cost_usd=cost, tokens=tokens)


def cost_usd(record: Priced, prompt_tokens: int, completion_tokens: int) -> float:
    """A job's cost estimate at its endpoint's prices (jobs without the exact ``cost_micro_usd`` counter)."""
    return round(
        prompt_tokens * record.usd_per_mtok_prompt / 1e6 + completion_tokens * record.usd_per_mtok_completion / 1e6,
        6,
    )


async def get_status(redis: Redis, job_id: str) -> JobStatus | None:
    record = await load_record(redis, job_id)
    if record is None:
        return None
    meta = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.meta(job_id))).items()}
    skill_set = record.skill_set.ref if record.skill_set else None
    counters = await read_counters(redis, record)
    budget = await read_budget(redis, job_id)
    state = JobState(meta.get("state", "queued"))
    # the watchdog retires a finished job from the active set once its stream is empty and no chunk runs
    settled = state.finished and not await redis.sismember(keys.ACTIVE_JOBS, job_id)
    return JobStatus(
        id=record.id,
        recipe=record.spec.recipe,
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
    )


async def list_job_ids(redis: Redis, offset: int, limit: int) -> tuple[list[str], int]:
    ids = await redis.zrevrange(keys.JOBS_INDEX, offset, offset + limit - 1)
    return [i.decode() for i in ids], await redis.zcard(keys.JOBS_INDEX)


def top_up_size(record: JobRecord, counters: JobCounters) -> int:
    """How many more items to plan so the expected accepted count reaches the target.

    Waits for the in-flight items unless enough have been curated to trust the acceptance rate, so a job
    overshoots its count by little and pays for few surplus calls.
    """
    spec = record.spec
    outstanding = counters.planned - counters.processed
    missing = spec.count - counters.accepted
    if missing <= 0 or counters.planned >= spec.item_budget:
        return 0
    if counters.processed < 16 and outstanding > 0:
        return 0
    rate = counters.accepted / counters.processed if counters.processed else 1.0
    rate = max(rate, 0.05)
    expected = outstanding * rate
    if outstanding > 0 and expected >= missing:
        return 0
    want = min(math.ceil((missing - expected) / rate * 1.1), spec.item_budget - counters.planned)
    if outstanding > 0 and want < record.chunk_size // 2:
        return 0  # wait and top up in chunk-sized steps rather than item by item
    return max(1, want)


async def plan(redis: ArqRedis, record: JobRecord, expected_planned: int, new_planned: int) -> bool:
    """Atomically move ``planned`` and enqueue the new items' chunks; False if another worker won."""
    start = await redis.eval(
        _PLAN,
        4,
        keys.counters(record.id),
        keys.meta(record.id),
        keys.pending_plans(record.id),
        keys.ranges(record.id),
        expected_planned,
        new_planned,
    )
    if int(start) < 0:
        return False
    await enqueue_planned(redis, record, expected_planned, new_planned)
    return True


async def enqueue_planned(redis: ArqRedis, record: JobRecord, start: int, stop: int) -> None:
    """Enqueue a pending range's chunks, then mark the range done (repeating this is harmless)."""
    await enqueue_range(redis, record, start, stop)
    await redis.hdel(keys.pending_plans(record.id), f"{start}-{stop}")


async def redrive(redis: ArqRedis, stale_ms: int) -> int:
    """Enqueue ranges left pending longer than ``stale_ms`` by a process that died; returns how many."""
    now_ms = await redis_now_ms(redis)
    redriven = 0
    for raw_id in await redis.smembers(keys.ACTIVE_JOBS):
        job_id = raw_id.decode()
        pending = await redis.hgetall(keys.pending_plans(job_id))
        stale = [field.decode() for field, at in pending.items() if now_ms - int(at) >= stale_ms]
        record = await load_record(redis, job_id) if stale else None
        if record is None:
            continue
        for field in stale:
            start, stop = (int(n) for n in field.split("-"))
            await enqueue_planned(redis, record, start, stop)
            redriven += 1
    return redriven


def chunks(record: JobRecord, start: int, stop: int) -> list[ChunkTask]:
    """The chunks a planned range is cut into: the same on every process, so their arq ids are too."""
    size = record.chunk_size
    return [ChunkTask(job_id=record.id, start=lo, stop=min(lo + size, stop)) for lo in range(start, stop, size)]


async def planned_ranges(redis: Redis, job_id: str) -> list[tuple[int, int]]:
    """Every item range ever planned for the job, in order (they tile ``[0, planned)``)."""
    return [_range(raw.decode()) for raw in await redis.lrange(keys.ranges(job_id), 0, -1)]


def _range(field: str) -> tuple[int, int]:
    start, stop = field.split("-")
    return int(start), int(stop)


async def enqueue_range(redis: ArqRedis, record: JobRecord, start: int, stop: int) -> None:
    """Chunks get deterministic arq ids, so enqueueing the same range twice runs it once.

    Their queue scores come from ``fair_start``, so jobs interleave instead of queueing behind each other.
    """
    tasks = chunks(record, start, stop)
    first = await fair_start(redis, record.id, len(tasks))
    expires = timedelta(milliseconds=redis.expires_extra_ms)  # from now, whatever the (past) score
    for k, task in enumerate(tasks):
        await redis.enqueue_job(
            "run_chunk_job",
            task.model_dump(),
            _job_id=task.arq_id,
            _queue_name=keys.QUEUE_NAME,
            _defer_until=datetime.fromtimestamp((first + k) / 1000, UTC),
            _expires=expires,
        )


# Reserve ``n`` consecutive scores for a job's new chunks: from the queue's head (ARGV[1]) or right after the
# job's own last chunk, whichever is later, so a job's top-ups queue behind its own backlog.
_FAIR_RESERVE = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
local first = math.max(tonumber(ARGV[1]), last + 1)
redis.call('SET', KEYS[1], string.format('%.0f', first + tonumber(ARGV[2]) - 1))
return string.format('%.0f', first)
"""
FAIR_SCAN = 256  # queue entries looked at for the head (more than the fleet runs at once is plenty)


async def fair_start(redis: Redis, job_id: str, n: int) -> int:
    """The queue score (ms) of the first of a job's ``n`` new chunks; chunk k gets this + k.

    arq runs the lowest ready score first, and a score in the past is ready at once. A new job starts at the
    queue's head (the lowest score of a chunk no worker runs yet; now if none is waiting), so its chunks
    interleave 1:1 with every other job's backlog instead of waiting behind all of it: a small job submitted
    during an overnight run starts within a chunk or two, and three jobs share 1:1:1.
    """
    now_ms = int(datetime.now(UTC).timestamp() * 1000)  # arq's own clock for readiness: this process's
    head = now_ms
    entries = await redis.zrange(keys.QUEUE_NAME, 0, FAIR_SCAN - 1, withscores=True)
    waiting = [(member, int(score)) for member, score in entries if score < now_ms]
    if waiting:  # arq keeps a chunk in its queue while a worker runs it: skip those
        async with redis.pipeline(transaction=False) as pipe:
            for member, _ in waiting:
                pipe.exists(in_progress_key_prefix + member.decode())
            running = await pipe.execute()
        idle = [score for (_, score), busy in zip(waiting, running, strict=True) if not busy]
        if idle:
            head = idle[0]
        elif len(waiting) == FAIR_SCAN:  # the fleet runs more than we looked at: the head is further on
            head = waiting[-1][1]
    return int(await redis.eval(_FAIR_RESERVE, 1, keys.vtime(job_id), head, n))

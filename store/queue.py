"""Planning a job's chunks, enqueueing every unit of work (``Step``) for the runner's one arq function
(``keys.STEP_FUNCTION``), and the fair-share scores that interleave jobs in the one queue."""

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from schemas.jobs import ChunkTask, JobCounters, JobRecord, Step
from store import keys
from store.clock import redis_now_ms
from store.records import load_record

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
    """Chunks get deterministic arq ids, so enqueueing the same range twice runs it once."""
    await enqueue_steps(redis, record.id, chunks(record, start, stop))


# KEYS: the queue. ARGV: arq's job key prefix, its result key prefix, the job keys' TTL (ms), then per step its
# arq id, queue score and serialized job. What ``ArqRedis.enqueue_job`` does for one job (a unit whose job or
# result key exists is not enqueued again), for a whole batch in one round trip.
_ENQUEUE = """
local added = 0
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. id, ARGV[2] .. id) == 0 then
    redis.call('SET', ARGV[1] .. id, ARGV[i + 2], 'PX', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], id)
    added = added + 1
  end
end
return added
"""
ENQUEUE_BATCH = 500  # steps per script call: a 100,000-item job's 3,000 chunks go in 7 round trips


async def enqueue_steps(redis: ArqRedis, job_id: str, steps: Sequence[Step]) -> None:
    """The one way a unit of work enters the queue: as a ``Step`` for the runner's one arq function, under its
    deterministic id. Queue scores come from ``fair_start``, so jobs interleave instead of queueing behind
    each other, whatever their kind. Steps go in batches (``_ENQUEUE``), not one transaction each."""
    if not steps:
        return
    first, stride = await fair_start(redis, job_id, len(steps))
    expires_ms = redis.expires_extra_ms  # from now, whatever the (past) score
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for lo in range(0, len(steps), ENQUEUE_BATCH):
        args: list[str | int | bytes] = [job_key_prefix, result_key_prefix, expires_ms]
        for k, step in enumerate(steps[lo : lo + ENQUEUE_BATCH], start=lo):
            payload = serialize_job(
                keys.STEP_FUNCTION, (step.model_dump(),), {}, None, now_ms, serializer=redis.job_serializer
            )
            args += [step.arq_id, first + k * stride, payload]
        await redis.eval(_ENQUEUE, 1, keys.QUEUE_NAME, *args)


# Lua helpers of fair share. ``vtime``: a job's "last stride" (an old plain "last" is stride 1). ``team_size``:
# how many of the job's team's jobs are queued or running (1 for a job without a team): the job's stride, so the
# team's jobs together get one job's share. ARGV[1] of the callers: keys.TEAM_PREFIX, ARGV[2]: keys.JOB_PREFIX.
_FAIR_LUA = """
local function vtime(key)
  local raw = redis.call('GET', key)
  if not raw then return -1, 1 end
  local last, stride = string.match(raw, '^(%S+) (%S+)$')
  if last then return tonumber(last), tonumber(stride) end
  return tonumber(raw), 1
end
local function team_size(meta)
  local team = redis.call('HGET', meta, 'team')
  if not team or team == '' then return 1 end
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', ARGV[1] .. team .. ':running', 0, -1)) do
    local st = redis.call('HGET', ARGV[2] .. id .. ':meta', 'state')
    if st == 'queued' or st == 'running' then n = n + 1 end
  end
  return math.max(n, 1)
end
"""

# KEYS: the job's vtime, its meta. ARGV: TEAM_PREFIX, JOB_PREFIX, the queue's head, n. Reserve ``n`` scores
# ``stride`` apart for a job's new steps: from the queue's head or one stride after the job's own last step,
# whichever is later, so a job's top-ups queue behind its own backlog. Returns {first, stride}.
_FAIR_RESERVE = (
    _FAIR_LUA
    + """
local last = vtime(KEYS[1])
local s = team_size(KEYS[2])
local first = math.max(tonumber(ARGV[3]), last + s)
redis.call('SET', KEYS[1], string.format('%.0f %d', first + (tonumber(ARGV[4]) - 1) * s, s))
return {string.format('%.0f', first), s}
"""
)

# KEYS: the queue, a job's vtime, its meta. ARGV: TEAM_PREFIX, JOB_PREFIX, the queue's head, then the arq ids of
# the job's steps. Space the job's queued steps at or after the head by its team's size now instead of the
# stride they were given (scaled about the head, so their order stays), once: a second call finds the stride
# already right. ZADD XX: a step that left the queue meanwhile is not put back. Returns how many moved.
_RESPACE = (
    _FAIR_LUA
    + """
local last, old = vtime(KEYS[2])
local s = team_size(KEYS[3])
if last < 0 or old == s then return 0 end
local head, moved = tonumber(ARGV[3]), 0
for i = 4, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) >= head then
    local new = head + math.floor((tonumber(score) - head) * s / old)
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', new), ARGV[i])
    moved = moved + 1
  end
end
if last >= head then last = head + math.floor((last - head) * s / old) end
redis.call('SET', KEYS[2], string.format('%.0f %d', last, s))
return moved
"""
)


FAIR_SCAN = 256  # queue entries looked at for the head (more than the fleet runs at once is plenty)


async def queue_head(redis: Redis) -> int:
    """The lowest score (ms) of a step no worker runs yet; now if none is waiting. arq runs the lowest ready
    score first, and a score in the past is ready at once."""
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
    return head


async def fair_start(redis: Redis, job_id: str, n: int) -> tuple[int, int]:
    """The queue score (ms) of the first of a job's ``n`` new steps and their spacing: step k gets first + k *
    stride.

    Per team first, then per job. A new job starts at the queue's head, so its steps interleave with every
    other job's backlog instead of waiting behind all of it: a small job submitted during an overnight run
    starts within a chunk or two, and three jobs of three teams share 1:1:1. The stride is the number of the
    job's team's jobs queued or running (1 without a team): a team's s jobs each get one step per s ms of
    score, together one job's share, so a team with ten jobs does not get ten times the share of a team with
    one. When a team gains a job, ``respace_team`` spreads its other jobs' queued steps to the new stride.
    """
    head = await queue_head(redis)
    args = [keys.TEAM_PREFIX, keys.JOB_PREFIX, head, n]
    first, stride = await redis.eval(_FAIR_RESERVE, 2, keys.vtime(job_id), keys.meta(job_id), *args)
    return int(first), int(stride)


async def respace_team(redis: Redis, team: str, except_id: str) -> int:
    """Spread the queued steps of the team's other jobs to the team's stride now (after ``except_id`` joined);
    returns how many steps moved. One script per job, each atomic and done once however many call it. A
    stepped job has one step queued at a time and takes the new stride with its next one: not looked at."""
    head = await queue_head(redis)
    moved = 0
    for raw_id in await redis.zrange(keys.team_running(team), 0, -1):
        job_id = raw_id.decode()
        record = await load_record(redis, job_id) if job_id != except_id else None
        if record is None or record.spec.stepped:
            continue
        ids = [
            task.arq_id for start, stop in await planned_ranges(redis, job_id) for task in chunks(record, start, stop)
        ]
        if ids:
            script_keys = [keys.QUEUE_NAME, keys.vtime(job_id), keys.meta(job_id)]
            moved += int(await redis.eval(_RESPACE, 3, *script_keys, keys.TEAM_PREFIX, keys.JOB_PREFIX, head, *ids))
    return moved

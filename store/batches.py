"""Provider batch mode's state in Redis: gathering requests, open batches, applying their outcomes.

Every transition a request line makes is one Lua script, so a worker killed at any point leaves a state
another worker carries on from, and no line is ever in two open batches or applied twice:

- ``park``: a unit's call becomes a line of its job's gathering file for the endpoint (or, answered meanwhile,
  its answer is returned); the unit is woken when the line is answered.
- ``take``: a gathering file is cut into a ``BatchRecord`` after reserving its worst-case cost against the
  job's cap (or the job is paused instead).
- ``apply_line``: one returned line is kept in the replay cache and charged through the same ``CHARGE`` body
  as an online call, or sent back to gathering (a retry, counted as a try), or recorded as failed for good.
- ``finish``: a batch's leftovers go back to gathering, its reservation is released, it stops being polled.

Layout in ``store.keys`` (section "Provider batch mode").
"""

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.batches import BatchProgress, BatchRecord
from schemas.llm import Usage
from store import keys
from store.budget import CHARGE_BODY, Prices, charge_args
from store.quotas import TEAM_LUA

FAILED_MARK = "!"  # a replay-cache value starting with this is a line that failed for good: the message follows
LOCK_MS = 15_000  # a dead holder's lease runs out this soon; a live one renews it every third
LOCK_PREFIX = keys.PREFIX + ":batch:"


def now_ms() -> int:
    return int(time.time() * 1000)


def group_member(job_id: str, endpoint: str) -> str:
    return f"{job_id}|{endpoint}"


def split_member(member: str) -> tuple[str, str]:
    job_id, _, endpoint = member.partition("|")
    return job_id, endpoint


def custom_id(scope: int | str, field: str) -> str:
    """A line's id: the replay-cache unit (a chunk's start, or a unit's name) and the answer's field in it."""
    return f"{scope}/{field}"


def replay_place(cid: str) -> tuple[str, str]:
    """(unit scope, field) of a custom id."""
    scope, _, field = cid.partition("/")
    return scope, field


# KEYS: G:lines, G:open, G:wake, gathering zset, replay hash of the unit, job meta.
# ARGV: custom_id, line JSON, arq id to wake, now ms, gathering member, replay field.
# Returns {'answered', value} when the answer is already kept (it came after the unit read its cache),
# {'stopped', state} when the job is no longer queued or running, else {'parked', 1 | 0} (0: already waiting).
_PARK = """
local answer = redis.call('HGET', KEYS[5], ARGV[6])
if answer then return {'answered', answer} end
local state = redis.call('HGET', KEYS[6], 'state')
if state ~= 'queued' and state ~= 'running' then return {'stopped', tostring(state)} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
if redis.call('HSETNX', KEYS[1], ARGV[1], 'o') == 0 then return {'parked', 0} end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[5])
return {'parked', 1}
"""

# KEYS: G:open, G:lines, counters, meta, budget, batch:{bid}, batch:{bid}:file, job batches set, batches:open,
# gathering zset. ARGV: n, bid, worst micro-usd, worst tokens, record JSON, now ms, member, now ISO, job id,
# new round (1/0), split (1: the cut stopped at the file's bounds, the rest goes now in the same round; 0: lines
# left are new arrivals, which start a gathering window of their own), then the n custom ids. Takes the first n
# gathering lines into a new batch, after reserving its worst-case cost: a job whose cap the file could pass is
# paused instead (nothing taken). Returns 'ok', 'paused' or 'state:<state>'.
_TAKE = """
local state = redis.call('HGET', KEYS[4], 'state')
if state ~= 'queued' and state ~= 'running' then return 'state:' .. tostring(state) end
local n = tonumber(ARGV[1])
local worst, worst_tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local cap = redis.call('HMGET', KEYS[5], 'max_cost_micro_usd', 'max_tokens')
local c = redis.call('HMGET', KEYS[3], 'cost_micro_usd', 'prompt_tokens', 'completion_tokens',
  'batch_reserved_micro_usd', 'batch_reserved_tokens')
local cost, reserved = tonumber(c[1] or '0'), tonumber(c[4] or '0')
local tokens, reserved_tokens = tonumber(c[2] or '0') + tonumber(c[3] or '0'), tonumber(c[5] or '0')
local why
if cap[1] and cost + reserved + worst > tonumber(cap[1]) then
  why = string.format('budget would be passed by the next batch file ($%.4f worst case; $%.4f spent, $%.4f '
    .. 'reserved by open batches, cap $%.4f)', worst / 1e6, cost / 1e6, reserved / 1e6, tonumber(cap[1]) / 1e6)
elseif cap[2] and tokens + reserved_tokens + worst_tokens > tonumber(cap[2]) then
  why = string.format('token budget would be passed by the next batch file (%d tokens worst case; %d used, '
    .. '%d reserved, cap %d)', worst_tokens, tokens, reserved_tokens, tonumber(cap[2]))
end
if why then
  redis.call('HSET', KEYS[4], 'state', 'paused', 'updated_at', ARGV[8], 'paused_by', 'job', 'message',
    'paused: ' .. why .. '; raise it with PATCH /v1/jobs/' .. ARGV[9] .. ' or `skillmix budget ' .. ARGV[9] ..
    ' --max-cost-usd X [--max-tokens N]`')
  return 'paused'
end
redis.call('HINCRBY', KEYS[3], 'batch_reserved_micro_usd', worst)
redis.call('HINCRBY', KEYS[3], 'batch_reserved_tokens', worst_tokens)
if ARGV[10] == '1' then redis.call('HINCRBY', KEYS[3], 'batch_rounds', 1) end
local taken = redis.call('LRANGE', KEYS[1], 0, n - 1)
redis.call('LTRIM', KEYS[1], n, -1)
for i = 1, #taken, 1000 do
  redis.call('RPUSH', KEYS[7], unpack(taken, i, math.min(i + 999, #taken)))
end
for i = 12, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[2]) end
redis.call('SET', KEYS[6], ARGV[5])
redis.call('SADD', KEYS[8], ARGV[2])
redis.call('ZADD', KEYS[9], ARGV[6], ARGV[2])
if redis.call('LLEN', KEYS[1]) > 0 then
  local due = ARGV[6]
  if ARGV[11] == '1' then due = 0 end
  redis.call('ZADD', KEYS[10], due, ARGV[7])
else
  redis.call('ZREM', KEYS[10], ARGV[7])
end
return 'ok'
"""

# KEYS 1-3: CHARGE's (counters, meta, budget); 4: G:lines, 5: replay hash of the unit, 6: replay index,
# 7: G:wake, 8: batches:wake, 9: G:tries, 10: G:open, 11: gathering zset.
# ARGV 1-8: CHARGE's; 9: custom_id, 10: bid, 11: kind (ok | retry | fail), 12: value (ChatResult JSON, or the
# failure's message), 13: replay field, 14: max tries, 15: now ms, 16: gathering member, 17: replay TTL s,
# 18: the index's field for the unit, 19: '1' when the line reached the model (an endpoint call), 20: the
# line's JSON (for a retry), 21: '1' to carry on (the job still runs: retry, wake).
# Applies one line of batch ``bid`` once (a line not held by ``bid`` any more is skipped: -1), then charges
# its usage through CHARGE's body (which returns 1 when that paused the job).
_APPLY = (
    TEAM_LUA
    + """
if redis.call('HGET', KEYS[4], ARGV[9]) ~= ARGV[10] then return -1 end
local tries = tonumber(redis.call('HGET', KEYS[9], ARGV[9]) or '0')
if ARGV[19] == '1' then
  redis.call('HINCRBY', KEYS[1], 'llm_calls', 1)
  if tries > 0 then redis.call('HINCRBY', KEYS[1], 'retries', 1) end
end
local kind, value = ARGV[11], ARGV[12]
if kind == 'retry' then
  tries = redis.call('HINCRBY', KEYS[9], ARGV[9], 1)
  if ARGV[21] ~= '1' then
    kind = 'drop'
  elseif tries <= tonumber(ARGV[14]) then
    redis.call('HSET', KEYS[4], ARGV[9], 'o')
    redis.call('RPUSH', KEYS[10], ARGV[20])
    redis.call('ZADD', KEYS[11], 'NX', ARGV[15], ARGV[16])
    kind = 'queued'
  else
    kind, value = 'fail', 'FAILED_MARKgave up after ' .. tries .. ' tries: ' .. value
  end
end
if kind == 'ok' or kind == 'fail' then
  if kind == 'fail' and string.sub(value, 1, 1) ~= 'FAILED_MARK' then value = 'FAILED_MARK' .. value end
  if redis.call('HSETNX', KEYS[5], ARGV[13], value) == 1 then
    local size = #ARGV[13] + #value
    redis.call('HINCRBY', KEYS[6], 'bytes', size)
    redis.call('HINCRBY', KEYS[6], ARGV[18], size)
  end
  redis.call('EXPIRE', KEYS[5], ARGV[17])
  redis.call('EXPIRE', KEYS[6], ARGV[17])
end
if kind ~= 'queued' then
  redis.call('HDEL', KEYS[4], ARGV[9])
  redis.call('HDEL', KEYS[9], ARGV[9])
  local unit = redis.call('HGET', KEYS[7], ARGV[9])
  redis.call('HDEL', KEYS[7], ARGV[9])
  if unit and ARGV[21] == '1' then redis.call('ZADD', KEYS[8], ARGV[15], unit) end
end
"""
    + CHARGE_BODY
).replace("FAILED_MARK", FAILED_MARK)

# KEYS: job batches set, batches:open, counters, batch:{bid}, batch:{bid}:file. ARGV: bid, minus its worst
# micro-usd, minus its worst tokens (negated in Python: Lua's -0 is no integer to Redis), final record JSON.
# Once per batch: release its reservation, stop polling it, count it done.
_FINISH = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'batch_reserved_micro_usd', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'batch_reserved_tokens', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'batches_done', 1)
redis.call('SET', KEYS[4], ARGV[4], 'EX', 86400)
redis.call('DEL', KEYS[5])
return 1
"""

# KEYS: batches:wake, the arq queue. ARGV: now ms, arq's in-progress key prefix, at most this many.
# A woken unit that is not running is moved to the head of the queue (it stays parked there otherwise); one
# still running stays in the set until it is not (it may have read the cache before its answers came).
_WAKE = """
local woken = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  if redis.call('EXISTS', ARGV[2] .. id) == 0 then
    if redis.call('ZSCORE', KEYS[2], id) then
      redis.call('ZADD', KEYS[2], ARGV[1], id)
      woken = woken + 1
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
return woken
"""

# KEYS: G:open, G:lines, G:wake, G:tries, gathering zset. ARGV: member. A finished job's gathering lines go.
_DROP_GATHERING = """
for _, line in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local cid = cjson.decode(line)['custom_id']
  redis.call('HDEL', KEYS[2], cid)
  redis.call('HDEL', KEYS[3], cid)
  redis.call('HDEL', KEYS[4], cid)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[5], ARGV[1])
"""


@dataclass(frozen=True)
class Group:
    """One job's batch requests to one endpoint."""

    job_id: str
    endpoint: str

    @property
    def prefix(self) -> str:
        return keys.batch_group(self.job_id, self.endpoint)

    @property
    def open(self) -> str:
        return self.prefix + ":open"

    @property
    def lines(self) -> str:
        return self.prefix + ":lines"

    @property
    def wake(self) -> str:
        return self.prefix + ":wake"

    @property
    def tries(self) -> str:
        return self.prefix + ":tries"

    @property
    def member(self) -> str:
        return group_member(self.job_id, self.endpoint)


def file_key(batch_id: str) -> str:
    return keys.batch(batch_id) + ":file"


def lock_key(batch_id: str) -> str:
    return keys.batch(batch_id) + ":lock"


async def park(
    redis: Redis, group: Group, cid: str, line: str, unit: str, replay_key: str, field: str
) -> tuple[str, bytes | str]:
    """Add a call's line to the gathering file (unless it is waiting already); see ``_PARK`` for the reply."""
    reply = await redis.eval(
        _PARK,
        6,
        group.lines,
        group.open,
        group.wake,
        keys.BATCHES_GATHERING,
        replay_key,
        keys.meta(group.job_id),
        cid,
        line,
        unit,
        now_ms(),
        group.member,
        field,
    )
    kind = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    return kind, reply[1]


async def take(
    redis: Redis,
    group: Group,
    record: BatchRecord,
    cids: list[str],
    new_round: bool,
    now_iso: str,
    split: bool = False,
) -> str:
    """Cut the first ``len(cids)`` gathering lines into ``record`` (see ``_TAKE``)."""
    reply = await redis.eval(
        _TAKE,
        10,
        group.open,
        group.lines,
        keys.counters(group.job_id),
        keys.meta(group.job_id),
        keys.budget(group.job_id),
        keys.batch(record.id),
        file_key(record.id),
        keys.job_batches(group.job_id),
        keys.BATCHES_OPEN,
        keys.BATCHES_GATHERING,
        len(cids),
        record.id,
        record.worst_micro_usd,
        record.worst_tokens,
        record.model_dump_json(),
        now_ms(),
        group.member,
        now_iso,
        group.job_id,
        1 if new_round else 0,
        1 if split else 0,
        *cids,
    )
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@dataclass(frozen=True)
class LineOutcome:
    """What to do with one returned line."""

    cid: str
    kind: str  # ok | retry | fail
    value: str  # ChatResult JSON, or the failure's message
    usage: Usage
    reached_model: bool
    line: str = ""  # the request line (for a retry)


def apply_args(
    group: Group,
    batch_id: str,
    outcome: LineOutcome,
    prices: Prices,
    max_tries: int,
    ttl_s: int,
    carry_on: bool,
) -> tuple[list[str], list[str | int | float]]:
    scope, field = replay_place(outcome.cid)
    charge_keys, charge = charge_args(group.job_id, outcome.usage, prices)
    script_keys = [
        *charge_keys,
        group.lines,
        keys.replay(group.job_id, scope),
        keys.replay_index(group.job_id),
        group.wake,
        keys.BATCHES_WAKE,
        group.tries,
        group.open,
        keys.BATCHES_GATHERING,
    ]
    args: list[str | int | float] = [
        *charge,
        outcome.cid,
        batch_id,
        outcome.kind,
        outcome.value,
        field,
        max_tries,
        now_ms(),
        group.member,
        ttl_s,
        f"chunk:{scope}",  # ``workers.llm.replay.CHUNK_FIELD``: the index's per-unit size field
        "1" if outcome.reached_model else "0",
        outcome.line,
        "1" if carry_on else "0",
    ]
    return script_keys, args


async def apply_lines(
    redis: Redis,
    group: Group,
    batch_id: str,
    outcomes: list[LineOutcome],
    prices: Prices,
    max_tries: int,
    ttl_s: int,
    carry_on: bool,
) -> int:
    """Apply returned lines in pipelines of 500 (each line once, whoever applies it); returns lines applied."""
    applied = 0
    for lo in range(0, len(outcomes), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for outcome in outcomes[lo : lo + 500]:
                script_keys, args = apply_args(group, batch_id, outcome, prices, max_tries, ttl_s, carry_on)
                pipe.eval(_APPLY, len(script_keys), *script_keys, *args)
            replies = await pipe.execute()
        applied += sum(1 for r in replies if int(r) >= 0)
    return applied


async def finish(redis: Redis, record: BatchRecord) -> bool:
    """The batch is applied: release its reservation, stop polling it (once; True the first time)."""
    return bool(
        await redis.eval(
            _FINISH,
            5,
            keys.job_batches(record.job_id),
            keys.BATCHES_OPEN,
            keys.counters(record.job_id),
            keys.batch(record.id),
            file_key(record.id),
            record.id,
            -record.worst_micro_usd,
            -record.worst_tokens,
            record.model_dump_json(),
        )
    )


async def wake(redis: Redis, queue: str, in_progress_prefix: str, limit: int = 500) -> int:
    return int(await redis.eval(_WAKE, 2, keys.BATCHES_WAKE, queue, now_ms(), in_progress_prefix, limit))


async def drop_gathering(redis: Redis, group: Group) -> None:
    await redis.eval(
        _DROP_GATHERING, 5, group.open, group.lines, group.wake, group.tries, keys.BATCHES_GATHERING, group.member
    )


async def load(redis: Redis, batch_id: str) -> BatchRecord | None:
    raw = await redis.get(keys.batch(batch_id))
    return None if raw is None else BatchRecord.model_validate_json(raw)


async def save(redis: Redis, record: BatchRecord) -> None:
    await redis.set(keys.batch(record.id), record.model_dump_json())


async def file_lines(redis: Redis, batch_id: str) -> list[bytes]:
    return list(await redis.lrange(file_key(batch_id), 0, -1))


async def lock(redis: Redis, key: str, owner: str, ms: int = LOCK_MS) -> bool:
    return bool(await redis.set(key, owner, nx=True, px=ms))


async def unlock(redis: Redis, key: str, owner: str) -> None:
    """Release a lease only if it is still ours (a slow holder must not free the next one's)."""
    await redis.eval(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0", 1, key, owner
    )


async def progress(redis: Redis, job_id: str, endpoints: list[str]) -> BatchProgress:
    """A batch job's batches for its status: open files, lines waiting, rounds, age of the oldest open one."""
    groups = [Group(job_id, ep) for ep in endpoints]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.job_batches(job_id))
        pipe.hmget(keys.counters(job_id), "batch_lines", "batch_rounds", "batches_done")
        for group in groups:
            pipe.hlen(group.lines)
            pipe.llen(group.open)
        replies = await pipe.execute()
    open_ids, counts = replies[0], replies[1]
    waiting = sum(int(n) for n in replies[2::2])
    gathering = sum(int(n) for n in replies[3::2])
    oldest: float | None = None
    if open_ids:
        raws = await redis.mget([keys.batch(b.decode()) for b in open_ids])
        created = [BatchRecord.model_validate_json(r).created_ms for r in raws if r is not None]
        if created:
            oldest = max(0.0, (now_ms() - min(created)) / 1000)
    lines, rounds, done = (int(v) if v else 0 for v in counts)
    return BatchProgress(
        open_batches=len(open_ids),
        lines_waiting=waiting,
        lines_gathering=gathering,
        lines_submitted=lines,
        rounds=rounds,
        batches_done=done,
        oldest_open_s=oldest,
    )


async def poll_now(redis: Redis, job_id: str) -> None:
    """Move the job's open batches to the head of the poll (e.g. after a cancel: their cancel goes out now)."""
    ids = [b.decode() for b in await redis.smembers(keys.job_batches(job_id))]
    if ids:
        await redis.zadd(keys.BATCHES_OPEN, dict.fromkeys(ids, 0), xx=True)

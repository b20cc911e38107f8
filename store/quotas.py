"""Team quotas in Redis: the running-jobs admission and the team's spend per UTC day.

Admission is one Lua script (``ADMIT``): count the team's unfinished jobs (``team:{t}:running``), refuse over
``max_running_jobs``, else add the job and write its meta hash (state and team) in the same step, so two
concurrent submits can never both pass a limit one of them should have hit. The slot is given back when the job
reaches a finished state (``store.records._SET_STATE``) or when its creation fails after admission
(``release``). The script heals the set before it refuses: members whose job finished, or that have no job
record and were admitted more than ``STALE_MS`` ago (an API killed between admission and storing the job), go.

The team's day spend is counted by the same script that charges each call to its job (``store.budget.CHARGE``,
with ``TEAM_LUA`` below); at the team's cap that script pauses every queued or running job of the team (meta
``paused_by = team``). A job admitted while its team is at its cap starts ``paused`` (decided in ``ADMIT``,
atomically with the spend it read), so it never sends a call that day. ``store.teams.resume_team`` carries
team-paused jobs on once the team has room (a raised cap, or the next UTC day: the worker's watchdog).

These scripts build the team's and the team's jobs' key names themselves (``keys.TEAM_PREFIX``,
``keys.JOB_PREFIX``): fine on one Redis, which is what skillmix runs on (not on Redis Cluster).
"""

from datetime import UTC, date, datetime

from redis.asyncio import Redis

from schemas.errors import Conflict, OverQuota
from schemas.jobs import JobRecord
from store import keys
from store.clock import now_iso, redis_now_ms

STALE_MS = 60_000  # an admitted job with no record after this long was left by an API killed mid-submit
RETRY_AFTER_S = 10  # what a 429 over max_running_jobs suggests; jobs take minutes, so polling faster is no use

# Lua helpers shared by ADMIT, CHARGE and RESUME. ``team_day_key``: today's spend hash (Redis's clock);
# ``team_over``: why the team is at its day cap, or nil while it has room.
TEAM_LUA = """
local function team_day_key(prefix, team)
  local t = redis.call('TIME')
  return prefix .. team .. ':day:' .. math.floor(tonumber(t[1]) / 86400)
end
local function team_over(prefix, team)
  local caps = redis.call('HMGET', prefix .. team, 'max_usd_per_day', 'max_tokens_per_day')
  if not caps[1] and not caps[2] then return nil end
  local day = redis.call('HMGET', team_day_key(prefix, team), 'micro_usd', 'tokens')
  local usd, tokens = tonumber(day[1] or '0'), tonumber(day[2] or '0')
  local how = ' or PATCH /v1/teams/' .. team .. ', or wait for the UTC day to end'
  if caps[1] then
    local cap = math.floor(tonumber(caps[1]) * 1e6 + 0.5)
    if usd >= cap then
      return string.format("team %s's daily budget reached ($%.4f of $%.4f today)", team, usd / 1e6, cap / 1e6) ..
        '; raise it with `skillmix teams update ' .. team .. ' --max-usd-per-day Y`' .. how
    end
  end
  if caps[2] and tokens >= tonumber(caps[2]) then
    return string.format("team %s's daily token budget reached (%d of %d tokens today)", team, tokens,
      tonumber(caps[2])) .. '; raise it with `skillmix teams update ' .. team .. ' --max-tokens-per-day N`' .. how
  end
  return nil
end
"""

# Drop members of a team's running set (KEYS[1]) whose job finished, or that have no record and were admitted
# more than ARGV[2] ms ago (their meta hash, written at admission, goes too). ARGV[1]: keys.JOB_PREFIX.
_HEAL_LUA = """
local function heal(running, job_prefix, stale_ms, now)
  local members = redis.call('ZRANGE', running, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local id, at = members[i], tonumber(members[i + 1])
    local meta = job_prefix .. id .. ':meta'
    local st = redis.call('HGET', meta, 'state')
    if st == 'completed' or st == 'failed' or st == 'cancelled' then
      redis.call('ZREM', running, id)
    elseif redis.call('EXISTS', job_prefix .. id) == 0 and now - at > stale_ms then
      redis.call('ZREM', running, id)
      redis.call('DEL', meta)
    end
  end
  return redis.call('ZCARD', running)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: team:{t}:running, team:{t}, job meta. ARGV: job id, now (ISO), keys.JOB_PREFIX, keys.TEAM_PREFIX, team,
# STALE_MS. Returns {'exists'}, {'over', limit, used} or {'ok', state} (state: queued, or paused at the team's
# day cap with its message written).
ADMIT = (
    TEAM_LUA
    + _HEAL_LUA
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists'} end
local now = now_ms()
local raw = redis.call('HGET', KEYS[2], 'max_running_jobs')
local limit = raw and tonumber(raw)
if limit then
  local used = redis.call('ZCARD', KEYS[1])
  if used >= limit then used = heal(KEYS[1], ARGV[3], tonumber(ARGV[6]), now) end
  if used >= limit then return {'over', limit, used} end
end
local why = team_over(ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[3], 'state', why and 'paused' or 'queued', 'message', why and ('paused: ' .. why) or '',
  'updated_at', ARGV[2], 'team', ARGV[5])
if why then redis.call('HSET', KEYS[3], 'paused_by', 'team') end
return {'ok', why and 'paused' or 'queued'}
"""
)

# KEYS: team:{t}:running. ARGV: keys.JOB_PREFIX, STALE_MS. The healed count of the team's unfinished jobs.
_COUNT = _HEAL_LUA + "return heal(KEYS[1], ARGV[1], tonumber(ARGV[2]), now_ms())"


class JobExists(Conflict, ValueError):
    """A job with this id was already stored (ids are random: a caller's bug). Still a ValueError, as before."""


async def admit(redis: Redis, record: JobRecord) -> str:
    """Take one of the team's running-job slots for ``record`` and write its meta hash; returns its first state
    (``queued``, or ``paused`` when the team is at its day cap). Over ``max_running_jobs``: ``OverQuota``,
    nothing stored."""
    reply = await redis.eval(
        ADMIT,
        3,
        keys.team_running(record.team),
        keys.team(record.team),
        keys.meta(record.id),
        record.id,
        now_iso(),
        keys.JOB_PREFIX,
        keys.TEAM_PREFIX,
        record.team,
        STALE_MS,
    )
    outcome = reply[0].decode()
    if outcome == "exists":
        raise JobExists(f"job {record.id} exists")
    if outcome == "over":
        limit, used = int(reply[1]), int(reply[2])
        raise OverQuota(
            f"team {record.team} has {used} unfinished jobs (queued, running or paused), its limit "
            f"max_running_jobs={limit}; wait for one to finish or cancel one, or raise the limit with "
            f"`skillmix teams update {record.team} --max-running-jobs N`",
            quota="max_running_jobs",
            limit=limit,
            used=used,
            retry_after_s=RETRY_AFTER_S,
        )
    return str(reply[1].decode())


async def release(redis: Redis, record: JobRecord, *, drop_record: bool = True) -> None:
    """Give back the slot of a job refused after admission (its creation failed): nothing of it stays (its
    record too, unless the record was not ours to drop)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.team_running(record.team), record.id)
        pipe.delete(keys.meta(record.id), *([keys.job(record.id)] if drop_record else []))
        await pipe.execute()


async def running_jobs(redis: Redis, team: str) -> int:
    """The team's unfinished jobs (queued, running, paused), after dropping finished and stale members."""
    return int(await redis.eval(_COUNT, 1, keys.team_running(team), keys.JOB_PREFIX, STALE_MS))


async def utc_day(redis: Redis) -> int:
    """Today's UTC day number (days since 1970-01-01) by Redis's clock, as the scripts count it."""
    return await redis_now_ms(redis) // 86_400_000


def day_date(day: int) -> date:
    return datetime.fromtimestamp(day * 86400, UTC).date()


async def spent(redis: Redis, team: str, day: int) -> tuple[int, int]:
    """(micro-USD, tokens) the team's jobs were charged on UTC day ``day``."""
    usd, tokens = await redis.hmget(keys.team_day(team, day), "micro_usd", "tokens")
    return int(usd or 0), int(tokens or 0)


async def over_cap(redis: Redis, team: str) -> str | None:
    """Why the team is at its day cap now (the pause message's reason), or None while it has room."""
    raw = await redis.eval(TEAM_LUA + "return team_over(ARGV[1], ARGV[2])", 0, keys.TEAM_PREFIX, team)
    return None if raw is None else str(raw.decode())

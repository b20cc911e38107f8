"""Per-job spending caps in Redis: the cap in force, the charge that pauses a job at it, the resume after it.

A call's cost is priced at *its* endpoint and kept exactly, in integer micro-dollars (``cost_micro_usd``). The
charge and the cap check are one Lua script (``CHARGE``), so the job pauses exactly once, at the call that
crosses the cap, however many workers charge at once; the engine sends it fire-and-forget
(``workers.budget.charge``). The cap lives in ``job:{id}:budget`` so it can be raised while the job runs;
``store.lifecycle.resume`` then carries the job on. The same charge counts the job's team's spend per UTC day
and pauses all of the team's jobs at the team's cap (``store.quotas``).
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.errors import Conflict
from schemas.jobs import JobBudget
from schemas.llm import Usage
from store import keys
from store.clock import now_iso
from store.quotas import TEAM_LUA

# KEYS: counters, meta, budget. ARGV: rate_limited, prompt_tokens, completion_tokens, cost_micro_usd, now (ISO),
# job id, keys.TEAM_PREFIX, keys.JOB_PREFIX. Adds the call's usage to the job and to its team's day (the team
# is in the job's meta), then pauses a queued/running job whose spend reached its cap (``paused_by = job``), and
# every queued/running job of a team whose day spend reached the team's cap (``paused_by = team``; calls in
# flight finish and are charged). Returns 1 when this call paused this job (exactly one call does: afterwards
# the state is no longer queued/running).
CHARGE_BODY = """
local names = {'rate_limited', 'prompt_tokens', 'completion_tokens', 'cost_micro_usd'}
for i, name in ipairs(names) do
  local v = tonumber(ARGV[i])
  if v ~= 0 then redis.call('HINCRBY', KEYS[1], name, v) end
end
local team = redis.call('HGET', KEYS[2], 'team')
if team == '' then team = false end
if team then
  local tokens, usd = tonumber(ARGV[2]) + tonumber(ARGV[3]), tonumber(ARGV[4])
  if tokens ~= 0 or usd ~= 0 then
    local day = team_day_key(ARGV[7], team)
    redis.call('HINCRBY', day, 'tokens', tokens)
    redis.call('HINCRBY', day, 'micro_usd', usd)
    redis.call('EXPIRE', day, TEAM_DAY_TTL_S)
  end
end
local paused = 0
local state = redis.call('HGET', KEYS[2], 'state')
local cap = redis.call('HMGET', KEYS[3], 'max_cost_micro_usd', 'max_tokens')
if (state == 'queued' or state == 'running') and (cap[1] or cap[2]) then
  local c = redis.call('HMGET', KEYS[1], 'cost_micro_usd', 'prompt_tokens', 'completion_tokens')
  local cost = tonumber(c[1] or '0')
  local tokens = tonumber(c[2] or '0') + tonumber(c[3] or '0')
  local why
  if cap[1] and cost >= tonumber(cap[1]) then
    why = string.format('budget reached ($%.4f of $%.4f spent)', cost / 1e6, tonumber(cap[1]) / 1e6)
  elseif cap[2] and tokens >= tonumber(cap[2]) then
    why = string.format('token budget reached (%d of %d tokens used)', tokens, tonumber(cap[2]))
  end
  if why then
    local hint = '; raise it with PATCH /v1/jobs/' .. ARGV[6] .. ' or `skillmix budget ' .. ARGV[6] ..
      ' --max-cost-usd X [--max-tokens N]`'
    redis.call('HSET', KEYS[2], 'state', 'paused', 'message', 'paused: ' .. why .. hint, 'updated_at', ARGV[5],
      'paused_by', 'job')
    paused = 1
  end
end
if team then
  local why = team_over(ARGV[7], team)
  if why then
    for _, id in ipairs(redis.call('ZRANGE', ARGV[7] .. team .. ':running', 0, -1)) do
      local meta = ARGV[8] .. id .. ':meta'
      local st = redis.call('HGET', meta, 'state')
      if st == 'queued' or st == 'running' then
        redis.call('HSET', meta, 'state', 'paused', 'message', 'paused: ' .. why, 'updated_at', ARGV[5],
          'paused_by', 'team')
        if id == ARGV[6] then paused = 1 end
      end
    end
  end
end
return paused
""".replace("TEAM_DAY_TTL_S", str(keys.TEAM_DAY_TTL_S))
CHARGE = TEAM_LUA + CHARGE_BODY  # (``store.batches`` runs the same body after applying a batch line)

# KEYS: counters, meta, budget. ARGV: now (ISO), mode, keys.TEAM_PREFIX, job id. Back to running if paused, its
# own cap has room and its team is not at its day cap, atomically with the checks (a charge cannot slip in
# between). Mode 'team' (a team's cap raised, a new day) resumes only a job its team's budget paused; one whose
# own cap is also spent becomes paused by its own budget instead, and one whose own cap has room but whose team
# is at its cap becomes paused by the team (so the team's resume carries it on). Returns 'ok', 'exhausted',
# 'team:<why>' or 'state:<current state>'.
RESUME = (
    TEAM_LUA
    + """
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'paused' then return 'state:' .. tostring(state) end
local by = redis.call('HGET', KEYS[2], 'paused_by')
if ARGV[2] == 'team' and by ~= 'team' then return 'state:paused by its own budget' end
local cap = redis.call('HMGET', KEYS[3], 'max_cost_micro_usd', 'max_tokens')
local c = redis.call('HMGET', KEYS[1], 'cost_micro_usd', 'prompt_tokens', 'completion_tokens')
local tokens = tonumber(c[2] or '0') + tonumber(c[3] or '0')
if (cap[1] and tonumber(c[1] or '0') >= tonumber(cap[1])) or (cap[2] and tokens >= tonumber(cap[2])) then
  if by == 'team' and ARGV[2] == 'team' then
    redis.call('HSET', KEYS[2], 'paused_by', 'job', 'updated_at', ARGV[1], 'message',
      'paused: budget reached (its own); raise it with PATCH /v1/jobs/' .. ARGV[4] .. ' or `skillmix budget ' ..
      ARGV[4] .. ' --max-cost-usd X [--max-tokens N]`')
  end
  return 'exhausted'
end
local team = redis.call('HGET', KEYS[2], 'team')
if team and team ~= '' then
  local why = team_over(ARGV[3], team)
  if why then  -- its own budget has room now: it waits for the team's, and resumes with the team's jobs
    redis.call('HSET', KEYS[2], 'paused_by', 'team', 'message', 'paused: ' .. why, 'updated_at', ARGV[1])
    return 'team:' .. why
  end
end
redis.call('HSET', KEYS[2], 'state', 'running', 'message', 'resumed', 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[2], 'paused_by')
return 'ok'
"""
)


@dataclass(frozen=True)
class Prices:
    """USD per million tokens of one endpoint: what its calls cost."""

    usd_per_mtok_prompt: float = 0.0
    usd_per_mtok_completion: float = 0.0

    def micro_usd(self, usage: Usage) -> int:
        """Tokens x USD per million tokens = micro-dollars, rounded per call."""
        return round(
            usage.prompt_tokens * self.usd_per_mtok_prompt + usage.completion_tokens * self.usd_per_mtok_completion
        )


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


async def set_budget(redis: Redis, job_id: str, budget: JobBudget) -> None:
    """Replace the limits given in ``budget`` (explicit nulls remove one); the others stay as they are."""
    fields = cap_fields(budget)
    async with redis.pipeline(transaction=True) as pipe:
        for name, value in fields.items():
            if value is None:
                pipe.hdel(keys.budget(job_id), name)
            else:
                pipe.hset(keys.budget(job_id), name, value)
        await pipe.execute()


def charge_args(job_id: str, usage: Usage, prices: Prices) -> tuple[list[str], list[str | int | float]]:
    return (
        [keys.counters(job_id), keys.meta(job_id), keys.budget(job_id)],
        [
            usage.rate_limited,
            usage.prompt_tokens,
            usage.completion_tokens,
            prices.micro_usd(usage),
            now_iso(),
            job_id,
            keys.TEAM_PREFIX,
            keys.JOB_PREFIX,
        ],
    )


async def charge_awaited(redis: Redis, job_id: str, usage: Usage, prices: Prices) -> bool:
    """``charge`` with a reply: True when this charge paused the job. With an empty usage it only checks the
    cap (after the cap was lowered)."""
    script_keys, args = charge_args(job_id, usage, prices)
    return bool(await redis.eval(CHARGE, len(script_keys), *script_keys, *args))


class NotPaused(Conflict):
    """The job is not paused (the message names its current state)."""


class BudgetExhausted(Conflict):
    """The job is paused and its cap still has no room: raise it first (the message says how)."""


class TeamBudgetExhausted(BudgetExhausted):
    """The job is paused and its team is still at its day cap: raise the team's cap or wait for the next UTC day."""

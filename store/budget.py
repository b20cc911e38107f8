"""Per-job spending caps in Redis: the cap in force, the charge that pauses a job at it, the resume after it.

A call's cost is priced at *its* endpoint and kept exactly, in integer micro-dollars (``cost_micro_usd``). The
charge and the cap check are one Lua script (``CHARGE``), so the job pauses exactly once, at the call that
crosses the cap, however many workers charge at once; the engine sends it fire-and-forget
(``workers.budget.charge``). The cap lives in ``job:{id}:budget`` so it can be raised while the job runs;
``store.lifecycle.resume`` then carries the job on.
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.errors import Conflict
from schemas.jobs import JobBudget
from schemas.llm import Usage
from store import keys
from store.clock import now_iso

# KEYS: counters, meta, budget. ARGV: rate_limited, prompt_tokens, completion_tokens, cost_micro_usd, now (ISO),
# job id. Adds the call's usage, then pauses a queued/running job whose spend reached its cap. Returns 1 when
# this call paused the job (exactly one call does: afterwards the state is no longer queued/running).
CHARGE = """
local names = {'rate_limited', 'prompt_tokens', 'completion_tokens', 'cost_micro_usd'}
for i, name in ipairs(names) do
  local v = tonumber(ARGV[i])
  if v ~= 0 then redis.call('HINCRBY', KEYS[1], name, v) end
end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
local cap = redis.call('HMGET', KEYS[3], 'max_cost_micro_usd', 'max_tokens')
if not cap[1] and not cap[2] then return 0 end
local c = redis.call('HMGET', KEYS[1], 'cost_micro_usd', 'prompt_tokens', 'completion_tokens')
local cost = tonumber(c[1] or '0')
local tokens = tonumber(c[2] or '0') + tonumber(c[3] or '0')
local why
if cap[1] and cost >= tonumber(cap[1]) then
  why = string.format('budget reached ($%.4f of $%.4f spent)', cost / 1e6, tonumber(cap[1]) / 1e6)
elseif cap[2] and tokens >= tonumber(cap[2]) then
  why = string.format('token budget reached (%d of %d tokens used)', tokens, tonumber(cap[2]))
else
  return 0
end
local hint = '; raise it with PATCH /v1/jobs/' .. ARGV[6] .. ' or `skillmix budget ' .. ARGV[6] ..
  ' --max-cost-usd X [--max-tokens N]`'
redis.call('HSET', KEYS[2], 'state', 'paused', 'message', 'paused: ' .. why .. hint, 'updated_at', ARGV[5])
return 1
"""

# KEYS: counters, meta, budget. ARGV: now (ISO). Back to running if paused and the cap has room, atomically
# with the check (a charge cannot slip in between). Returns 'ok', 'exhausted' or 'state:<current state>'.
RESUME = """
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'paused' then return 'state:' .. tostring(state) end
local cap = redis.call('HMGET', KEYS[3], 'max_cost_micro_usd', 'max_tokens')
local c = redis.call('HMGET', KEYS[1], 'cost_micro_usd', 'prompt_tokens', 'completion_tokens')
local tokens = tonumber(c[2] or '0') + tonumber(c[3] or '0')
if (cap[1] and tonumber(c[1] or '0') >= tonumber(cap[1])) or (cap[2] and tokens >= tonumber(cap[2])) then
  return 'exhausted'
end
redis.call('HSET', KEYS[2], 'state', 'running', 'message', 'resumed', 'updated_at', ARGV[1])
return 'ok'
"""


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

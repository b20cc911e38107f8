"""Per-job spending caps: every call is charged to its job, and a job at its cap pauses instead of failing.

A call's cost is priced at *its* endpoint (a judge on another endpoint has other prices) and kept exactly,
in integer micro-dollars (``cost_micro_usd``). The charge and the cap check are one Lua script (``CHARGE``),
so the job pauses exactly once, at the call that crosses the cap, however many workers charge at once. It is
sent fire-and-forget on the tally connection (``Tally.eval``): no Redis round trip on the hot path.

Paused means: no new call leaves (``metered``'s ``on_send`` refuses them), calls in flight finish and are
curated, chunks of the job start nothing, the watchdog leaves the job alone and no top-up is planned. The
cap in force lives in Redis (``job:{id}:budget``) so it can be raised while the job runs; ``resume`` (after
``PATCH`` or ``POST .../resume``) re-enqueues every planned chunk that still has items to generate.
"""

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from schemas.jobs import JobBudget, JobRecord
from schemas.llm import Usage
from schemas.settings import EndpointSettings
from store import keys, records
from store.lifecycle import advance
from workers.tally import Tally

SCAN_BATCH = 256  # chunks looked up per pipeline when resuming

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


def prices_for(client: object, record: JobRecord) -> Prices:
    """The prices of the endpoint ``client`` calls (an ``LLMClient`` carries its ``EndpointSettings``); the
    job's own endpoint's, as recorded at submit, for a client without one (no LLM, a test double)."""
    endpoint = getattr(client, "endpoint", None)
    if isinstance(endpoint, EndpointSettings):
        return Prices(endpoint.usd_per_mtok_prompt, endpoint.usd_per_mtok_completion)
    return Prices(record.usd_per_mtok_prompt, record.usd_per_mtok_completion)


def _charge_args(job_id: str, usage: Usage, prices: Prices) -> tuple[list[str], list[str | int | float]]:
    return (
        [keys.counters(job_id), keys.meta(job_id), keys.budget(job_id)],
        [
            usage.rate_limited,
            usage.prompt_tokens,
            usage.completion_tokens,
            prices.micro_usd(usage),
            records.now_iso(),
            job_id,
        ],
    )


def charge(tally: Tally, job_id: str, usage: Usage, prices: Prices) -> None:
    """Add a returned call's usage and cost to its job, pausing it at its cap; never awaits."""
    script_keys, args = _charge_args(job_id, usage, prices)
    tally.eval(CHARGE, script_keys, args)


async def charge_awaited(redis: Redis, job_id: str, usage: Usage, prices: Prices) -> bool:
    """``charge`` with a reply: True when this charge paused the job. With an empty usage it only checks the
    cap (after the cap was lowered)."""
    script_keys, args = _charge_args(job_id, usage, prices)
    return bool(await redis.eval(CHARGE, len(script_keys), *script_keys, *args))


async def set_budget(redis: Redis, job_id: str, budget: JobBudget) -> None:
    """Replace the limits given in ``budget`` (explicit nulls remove one); the others stay as they are."""
    fields = records.cap_fields(budget)
    async with redis.pipeline(transaction=True) as pipe:
        for name, value in fields.items():
            if value is None:
                pipe.hdel(keys.budget(job_id), name)
            else:
                pipe.hset(keys.budget(job_id), name, value)
        await pipe.execute()


class NotPaused(Exception):
    """The job is not paused (its current state is the message)."""


class BudgetExhausted(Exception):
    """The job is paused and its cap still has no room: raise it first."""


async def resume(redis: ArqRedis, record: JobRecord) -> None:
    """Paused -> running, then carry on: top the job up if it needs more items, and enqueue every planned chunk
    with items still to generate that arq neither holds nor runs (its reruns skip the generated items)."""
    script_keys = [keys.counters(record.id), keys.meta(record.id), keys.budget(record.id)]
    outcome = (await redis.eval(RESUME, 3, *script_keys, records.now_iso())).decode()
    if outcome == "exhausted":
        raise BudgetExhausted(record.id)
    if outcome != "ok":
        raise NotPaused(outcome.removeprefix("state:"))
    await redis.hdel(keys.WATCHDOG, record.id)  # the stall clock starts again now, not at the pause
    await advance(redis, record)
    await requeue_unfinished(redis, record)


async def requeue_unfinished(redis: ArqRedis, record: JobRecord) -> int:
    """Enqueue again each planned chunk with items not generated that is neither queued nor running; returns
    how many. A chunk still running when the job resumed retries itself (``generate.JobResumed``)."""
    pending = {f.decode() for f in await redis.hkeys(keys.pending_plans(record.id))}
    for field in pending:
        start, stop = (int(n) for n in field.split("-"))
        await records.enqueue_planned(redis, record, start, stop)
    tasks = [
        task
        for start, stop in await records.planned_ranges(redis, record.id)
        if f"{start}-{stop}" not in pending
        for task in records.chunks(record, start, stop)
    ]
    requeued = 0
    for lo in range(0, len(tasks), SCAN_BATCH):
        batch = tasks[lo : lo + SCAN_BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for task in batch:
                pipe.smismember(keys.generated(record.id), list(range(task.start, task.stop)))
                pipe.zscore(keys.QUEUE_NAME, task.arq_id)
                pipe.exists(in_progress_key_prefix + task.arq_id)
            replies: list[Any] = await pipe.execute()
        for i, task in enumerate(batch):
            done, queued, running = replies[3 * i : 3 * i + 3]
            if all(done) or queued is not None or running:
                continue
            stale = (job_key_prefix, result_key_prefix, retry_key_prefix)  # arq's record of its last run
            await redis.delete(*(prefix + task.arq_id for prefix in stale))
            await records.enqueue_range(redis, record, task.start, task.stop)
            requeued += 1
    return requeued

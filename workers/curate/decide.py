"""The one atomic, idempotent decision per item: accepted (with a sequence number) or rejected (why).

Stream entries can be delivered twice (a worker died before its XACK); the decision hash makes the
second delivery reuse the first decision, so counters never double and storage slots never move.
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.examples import Reason
from workers import keys

_DECIDE = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then return prev end
local reason = ARGV[2]
local decision
if reason == '' then
  local accepted = tonumber(redis.call('HGET', KEYS[2], 'accepted') or '0')
  if accepted < tonumber(ARGV[3]) then
    redis.call('HINCRBY', KEYS[2], 'accepted', 1)
    decision = 'a:' .. accepted
  else
    reason = 'surplus'
  end
end
if not decision then
  local seq = redis.call('HINCRBY', KEYS[2], 'rejected', 1) - 1
  redis.call('HINCRBY', KEYS[2], 'rejected:' .. reason, 1)
  decision = 'r:' .. seq .. ':' .. reason
end
redis.call('HINCRBY', KEYS[2], 'processed', 1)
redis.call('HSET', KEYS[1], ARGV[1], decision)
return decision
"""


@dataclass(frozen=True)
class Decision:
    accepted: bool
    seq: int
    reason: Reason | None


def _parse(raw: bytes | str) -> Decision:
    text = raw.decode() if isinstance(raw, bytes) else raw
    kind, seq, *rest = text.split(":")
    return Decision(accepted=kind == "a", seq=int(seq), reason=Reason(rest[0]) if rest else None)


async def previous(redis: Redis, job_id: str, index: int) -> Decision | None:
    raw = await redis.hget(keys.decisions(job_id), str(index))
    return None if raw is None else _parse(raw)


async def decide(redis: Redis, job_id: str, index: int, reason: Reason | None, target: int) -> Decision:
    """Accept if no reason and the job still wants examples; otherwise reject (``surplus`` past the target)."""
    raw = await redis.eval(
        _DECIDE,
        2,
        keys.decisions(job_id),
        keys.counters(job_id),
        str(index),
        reason.value if reason else "",
        target,
    )
    return _parse(raw)

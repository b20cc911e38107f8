"""The one atomic, idempotent step per item: decide (accepted with a sequence number, or rejected and why)
and store the example in the same Lua script, so "counted" always means "stored".

Stream entries can be delivered twice (a worker died before its XACK); the decision hash makes the second
delivery a no-op, so counters never double and storage slots never move. The caller passes the example in
both of its possible forms (as accepted and as rejected) because only the script knows, atomically with
every other worker's decisions, whether the job still wants it.

The storage bucket (``keys.bucket``) depends on the sequence number the script assigns, so the script
appends the bucket number to the prefix it is given; all keys of one job share the ``{job id}`` part.
"""

import hashlib
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from schemas.examples import Reason
from store import keys

_DECIDE_AND_STORE = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then return prev end
local reason = ARGV[2]
local decision, seq, kind, body
if reason == '' then
  local accepted = tonumber(redis.call('HGET', KEYS[2], 'accepted') or '0')
  if accepted < tonumber(ARGV[3]) then
    redis.call('HINCRBY', KEYS[2], 'accepted', 1)
    seq, kind, body = accepted, KEYS[3], ARGV[5]
    decision = 'a:' .. accepted
  else
    reason = 'surplus'
  end
end
if not decision then
  seq = redis.call('HINCRBY', KEYS[2], 'rejected', 1) - 1
  kind, body = KEYS[4], ARGV[6]
  redis.call('HINCRBY', KEYS[2], 'rejected:' .. reason, 1)
  decision = 'r:' .. seq .. ':' .. reason
end
redis.call('HSET', kind .. math.floor(seq / tonumber(ARGV[4])), seq, body)
redis.call('HINCRBY', KEYS[2], 'processed', 1)
redis.call('HSET', KEYS[1], ARGV[1], decision)
return decision
"""


_SHA = hashlib.sha1(_DECIDE_AND_STORE.encode()).hexdigest()


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


async def decide_and_store(
    redis: Redis, job_id: str, index: int, reason: Reason | None, target: int, as_accepted: str, as_rejected: str
) -> Decision:
    """Accept if no reason and the job still wants examples, otherwise reject (``surplus`` past the target);
    store ``as_accepted`` or ``as_rejected`` (JSON) in the slot the decision gets, in the same step."""
    return (await decide_many(redis, job_id, target, [Pending(index, reason, as_accepted, as_rejected)]))[0]


@dataclass(frozen=True)
class Pending:
    """An item checked and ready to be decided: ``decide_and_store``'s arguments."""

    index: int
    reason: Reason | None
    as_accepted: str
    as_rejected: str


async def decide_many(redis: Redis, job_id: str, target: int, pending: list[Pending]) -> list[Decision]:
    """``decide_and_store`` for each, in order, in one pipeline (one round trip): each script is still atomic
    and idempotent on its own, so a batch cut short by a crash, or sent again after NOSCRIPT, is finished
    by its redelivery or retry without a second count."""
    if not pending:
        return []
    job_keys = [
        keys.decisions(job_id),
        keys.counters(job_id),
        keys.bucket_prefix(job_id, "accepted"),
        keys.bucket_prefix(job_id, "rejected"),
    ]

    async def send() -> list[bytes]:
        async with redis.pipeline(transaction=False) as pipe:
            for p in pending:
                reason = p.reason.value if p.reason else ""
                args = [str(p.index), reason, target, keys.BUCKET_SIZE, p.as_accepted, p.as_rejected]
                pipe.evalsha(_SHA, len(job_keys), *job_keys, *args)
            return list(await pipe.execute())

    try:
        raw = await send()
    except NoScriptError:  # a Redis that has not seen the script yet (or restarted): load it, send again
        await redis.script_load(_DECIDE_AND_STORE)
        raw = await send()
    return [_parse(r) for r in raw]

"""Run-time endpoint limits: what the fleet applies to an endpoint now, and changing it while jobs run.

A change is written to Redis and announced on the limiter's channel; every worker's fleet limiter
(``workers.llm.fleet``) reads it on its next call, so it applies fleet-wide at once, without a restart.
"""

import math

from redis.asyncio import Redis

from schemas.settings import EndpointSettings
from store import keys

# KEYS: limits, tat, learned   ARGV: reset ('1'/'0'), rpm or '', tpm or '', channel, endpoint name
SET_LIMITS = """
if ARGV[1] == '1' then redis.call('DEL', KEYS[1], KEYS[3]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'rpm', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'tpm', ARGV[3]) end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' limits')
return 1
"""


def signal_channel(redis: Redis) -> str:
    """The limiter's pub/sub channel for the database ``redis`` is on (``keys.limiter_channel``)."""
    return keys.limiter_channel(int(redis.connection_pool.connection_kwargs.get("db") or 0))


async def set_limits(redis: Redis, name: str, rpm: int | None, tpm: int | None, *, reset: bool = False) -> None:
    """Set ``name``'s rpm/tpm for every worker (``reset`` first drops earlier run-time and learned limits)."""
    script_keys = [keys.limiter_limits(name), keys.limiter_tat(name), keys.limiter_learned(name)]
    args = ["1" if reset else "0", rpm or "", tpm or "", signal_channel(redis), name]
    await redis.eval(SET_LIMITS, len(script_keys), *script_keys, *args)


async def effective_limits(redis: Redis, name: str, endpoint: EndpointSettings) -> dict[str, object]:
    """What the fleet applies to ``name`` now: configured, set at run time, learned, cool-down left."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.limiter_limits(name))
        pipe.hgetall(keys.limiter_learned(name))
        pipe.get(keys.limiter_cooldown(name))
        pipe.time()
        overrides, learned, cool, (sec, usec) = await pipe.execute()
    now_ms = int(sec) * 1000 + int(usec) / 1000
    runtime = {k.decode(): int(float(v)) for k, v in overrides.items()}
    learnt = {k.decode(): int(float(v)) for k, v in learned.items()}
    rpm = min(runtime.get("rpm", endpoint.rpm), learnt.get("rpm", math.inf))
    tpm = min(runtime.get("tpm", endpoint.tpm), learnt.get("tpm", math.inf))
    return {
        "configured": {"rpm": endpoint.rpm, "tpm": endpoint.tpm},
        "runtime": runtime,
        "learned": learnt,
        "effective": {"rpm": int(rpm), "tpm": int(tpm)},
        "cooldown_s": round(max(0.0, (float(cool) - now_ms) / 1000.0), 3) if cool else 0.0,
    }

"""Durable per-job storage of curated examples: Redis hashes of 1,000 examples each.

Examples are written by the same Lua script that decides them (``workers.curate.decide``), into a slot fixed
by their sequence number, so a counted example is always a stored one. With Redis's append-only file on (as
compose.yaml runs it) they survive a restart; no single key grows past one bucket.
"""

from collections.abc import AsyncIterator
from typing import Literal

from redis.asyncio import Redis

from schemas.examples import Example
from store import keys

Kind = Literal["accepted", "rejected"]
COUNTER_FOR: dict[Kind, str] = {"accepted": "accepted", "rejected": "rejected"}


async def count(redis: Redis, job_id: str, kind: Kind) -> int:
    raw = await redis.hget(keys.counters(job_id), COUNTER_FOR[kind])
    return int(raw or 0)


async def iter_raw(redis: Redis, job_id: str, kind: Kind) -> AsyncIterator[bytes]:
    """Stream stored examples as JSON bytes in sequence order, one bucket in memory at a time."""
    total = await count(redis, job_id, kind)
    for b in range((total + keys.BUCKET_SIZE - 1) // keys.BUCKET_SIZE):
        bucket = await redis.hgetall(f"{keys.bucket_prefix(job_id, kind)}{b}")
        for seq in sorted(bucket, key=int):
            yield bucket[seq]


async def iter_examples(redis: Redis, job_id: str, kind: Kind) -> AsyncIterator[Example]:
    async for raw in iter_raw(redis, job_id, kind):
        yield Example.model_validate_json(raw)

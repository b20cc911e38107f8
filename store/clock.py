"""The two clocks the store stamps with: this process's (ISO, for people) and Redis's (ms, for comparisons)."""

from datetime import UTC, datetime

from redis.asyncio import Redis


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def redis_now_ms(redis: Redis) -> int:
    """Redis's clock: what pending plans are stamped and judged by, whatever the machines' clocks say."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000

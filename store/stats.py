"""Fleet-wide stats any module can add to, exported by the API's ``GET /metrics`` without a Prometheus import.

Two Redis hashes, fields ``"<metric>|<endpoint>"`` (``stat_field``):

- ``keys.STATS``: numbers that only grow (HINCRBYFLOAT) -> counter ``skillmix_<metric>_total{endpoint="..."}``;
- ``keys.GAUGES``: current values (HSET) -> gauge ``skillmix_<metric>{endpoint="..."}``.

Every worker process writes to the same fields, so a scrape of the API sees the fleet's total. Known metrics:
``limiter_wait_seconds``, ``limiter_acquired``, ``rate_limited_cooldowns``, ``replay_hits`` (counters) and
``adaptive_concurrency`` (gauge). A pipeline writes them the same way:
``pipe.hincrbyfloat(keys.STATS, stat_field("limiter_wait_seconds", name), waited)``.
"""

import re

from redis.asyncio import Redis

from store import keys

SEPARATOR = "|"
# Lower-case Prometheus-safe names; "_total" is added on export, so a counter's name must not carry it.
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

LIMITER_WAIT_SECONDS = "limiter_wait_seconds"
LIMITER_ACQUIRED = "limiter_acquired"
RATE_LIMITED_COOLDOWNS = "rate_limited_cooldowns"
REPLAY_HITS = "replay_hits"
ADAPTIVE_CONCURRENCY = "adaptive_concurrency"


def stat_field(metric: str, endpoint: str) -> str:
    """The hash field of ``metric`` for ``endpoint``; a bad name fails here, at the writer, not at a scrape."""
    if not METRIC_NAME.fullmatch(metric) or metric.endswith("_total"):
        raise ValueError(f"metric name {metric!r} must match {METRIC_NAME.pattern} and not end in _total")
    return f"{metric}{SEPARATOR}{endpoint}"


def parse_field(field: str) -> tuple[str, str] | None:
    """(metric, endpoint) of a hash field, None for a field that breaks the contract (it is then skipped)."""
    metric, sep, endpoint = field.partition(SEPARATOR)
    if not sep or not METRIC_NAME.fullmatch(metric) or metric.endswith("_total"):
        return None
    return metric, endpoint


async def add(redis: Redis, metric: str, endpoint: str, amount: float = 1.0) -> None:
    """Add to a fleet counter (``amount`` >= 0: counters never go down)."""
    if amount < 0:
        raise ValueError("a counter only grows")
    await redis.hincrbyfloat(keys.STATS, stat_field(metric, endpoint), amount)


async def set_gauge(redis: Redis, metric: str, endpoint: str, value: float) -> None:
    """Set a fleet gauge (last writer wins: suited to values one process owns or all agree on)."""
    await redis.hset(keys.GAUGES, stat_field(metric, endpoint), value)

"""Fleet-wide stats any module can add to, exported by the API's ``GET /metrics`` without a Prometheus import.

Two Redis hashes, fields ``"<metric>|<endpoint>"`` (``stat_field``):

- ``keys.STATS``: numbers that only grow (HINCRBYFLOAT) -> counter ``skillmix_<metric>_total{endpoint="..."}``;
- ``keys.GAUGES``: current values (HSET) -> gauge ``skillmix_<metric>{endpoint="..."}``.

Every worker process writes to the same fields, so a scrape of the API sees the fleet's total. Known metrics:
``limiter_wait_seconds``, ``limiter_acquired``, ``rate_limited_cooldowns``, ``replay_hits`` (counters) and
``adaptive_concurrency`` (gauge). A pipeline writes them the same way:
``pipe.hincrbyfloat(keys.STATS, stat_field("limiter_wait_seconds", name), waited)``.
"""

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from store import batches, keys
from store.pricing import cost_from_counters

log = logging.getLogger(__name__)

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


# --- what ``GET /metrics`` reads: the fleet's jobs, queue, counters and these hashes, in one pass --------

JOB_BATCH = 500  # jobs per pipelined round trip (~25 ms of event loop at most)
BATCH_SCAN = 1000  # open batches, and jobs' gathering files, looked at per scrape (the rest: UNSCANNED)
UNSCANNED = "(unscanned)"  # the endpoint label of open batches past BATCH_SCAN (or whose record is gone)
PRICE_CACHE_MAX = 100_000  # job records never change: their prices are read once per process


class _Endpoint(BaseModel):
    """The one field of a ``BatchRecord`` the scrape labels it by."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    endpoint: str = UNSCANNED


class _Prices(BaseModel):
    """The two fields of a ``JobRecord`` that price its tokens (the rest of the record is not kept)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    usd_per_mtok_prompt: float = 0.0
    usd_per_mtok_completion: float = 0.0


_prices: dict[str, _Prices] = {}
_warned: set[str] = set()


@dataclass
class FleetSnapshot:
    """Everything one scrape exports, read from Redis before any collector runs."""

    jobs_by_state: Counter[str] = field(default_factory=Counter)
    queue_depth: int = 0
    totals: Counter[str] = field(default_factory=Counter)  # counters-hash field -> sum over jobs
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> sum over jobs
    cost_usd: float = 0.0
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> endpoint -> total
    gauges: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> endpoint -> value
    batches_open: Counter[str] = field(default_factory=Counter)  # endpoint -> provider batches not yet applied
    batch_lines_gathering: Counter[str] = field(default_factory=Counter)  # endpoint -> lines waiting for a file


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _by_metric(raw: dict[bytes, bytes], kind: str, reserved: frozenset[str]) -> dict[str, dict[str, float]]:
    """``"<metric>|<endpoint>" -> number`` fields grouped by metric; fields that break the contract are skipped."""
    grouped: dict[str, dict[str, float]] = {}
    for raw_field, raw_value in raw.items():
        name = _decode(raw_field)
        parsed = parse_field(name)
        try:
            value = float(raw_value)
        except ValueError:
            parsed = None
        if parsed is None or parsed[0] in reserved:
            _warn_once(f"{kind} field {name!r} is not '<metric>|<endpoint>' with a number; not exported")
            continue
        metric, endpoint = parsed
        grouped.setdefault(metric, {})[endpoint] = value
    return grouped


def _warn_once(message: str) -> None:
    if message not in _warned and len(_warned) < 1000:
        _warned.add(message)
        log.warning(message)


async def read_fleet(redis: Redis, reserved: frozenset[str] = frozenset()) -> FleetSnapshot:
    """One consistent-enough read of the fleet: job ids first, then each batch of jobs' state and counters,
    added up as it arrives (an await per batch, so a big fleet never holds the event loop for long). Stats or
    gauges named in ``reserved`` (the exporter's own metric names) are skipped with a warning."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.JOBS_INDEX, 0, -1)
        pipe.zcard(keys.QUEUE_NAME)
        pipe.hgetall(keys.STATS)
        pipe.hgetall(keys.GAUGES)
        raw_ids, depth, raw_stats, raw_gauges = await pipe.execute()
    snapshot = FleetSnapshot(queue_depth=int(depth), stats=_by_metric(raw_stats, "stats", reserved))
    for metric, by_endpoint in _by_metric(raw_gauges, "gauges", reserved).items():
        if metric in snapshot.stats:  # one name, one type in an exposition: the counter wins
            _warn_once(f"gauge {metric!r} has the name of a skillmix:stats counter; not exported")
        else:
            snapshot.gauges[metric] = by_endpoint
    costs: list[float] = []
    unpriced: dict[str, dict[str, int]] = {}  # jobs older than the exact cost counter, whose prices are unknown
    for start in range(0, len(raw_ids), JOB_BATCH):
        job_ids = [_decode(i) for i in raw_ids[start : start + JOB_BATCH]]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.meta(job_id), "state")
                pipe.hgetall(keys.counters(job_id))
            replies = await pipe.execute()
        for job_id, state, raw in zip(job_ids, replies[::2], replies[1::2], strict=True):
            if state is not None:
                snapshot.jobs_by_state[_decode(state)] += 1
            counters = {_decode(k): int(v) for k, v in raw.items()}
            _add(snapshot, counters)
            prices = _prices.get(job_id)
            if "cost_micro_usd" in counters or prices is not None:
                costs.append(cost_from_counters(counters, prices or _Prices()))
            else:
                unpriced[job_id] = counters
    if unpriced:  # priced from their records, read once per process
        await _load_prices(redis, list(unpriced))
        costs.extend(cost_from_counters(c, _prices[j]) for j, c in unpriced.items() if j in _prices)
    snapshot.cost_usd = math.fsum(costs)  # exactly rounded: the total cannot dip as jobs are added
    await _read_batches(redis, snapshot)
    return snapshot


async def _read_batches(redis: Redis, snapshot: FleetSnapshot) -> None:
    """Provider batch mode's gauges, by endpoint: open batches (``keys.BATCHES_OPEN``, labelled from their
    records) and lines gathering (``keys.BATCHES_GATHERING`` members ``{job}|{ep}``: their open list's length).
    At most ``BATCH_SCAN`` of each are looked at; open batches past that count under ``UNSCANNED``."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.BATCHES_OPEN)
        pipe.zrange(keys.BATCHES_OPEN, 0, BATCH_SCAN - 1)
        pipe.zrange(keys.BATCHES_GATHERING, 0, BATCH_SCAN - 1)
        open_total, open_ids, members = await pipe.execute()
    groups = [batches.Group(*batches.split_member(_decode(m))) for m in members]
    async with redis.pipeline(transaction=False) as pipe:
        if open_ids:
            pipe.mget([keys.batch(_decode(b)) for b in open_ids])
        for group in groups:
            pipe.llen(group.open)
        replies = await pipe.execute()
    raws = replies.pop(0) if open_ids else []
    for raw in raws:
        try:
            endpoint = UNSCANNED if raw is None else _Endpoint.model_validate_json(raw).endpoint
        except ValidationError:
            endpoint = UNSCANNED
        snapshot.batches_open[endpoint] += 1
    if int(open_total) > len(raws):
        snapshot.batches_open[UNSCANNED] += int(open_total) - len(raws)
    for group, length in zip(groups, replies, strict=True):
        snapshot.batch_lines_gathering[group.endpoint] += int(length)


def _add(snapshot: FleetSnapshot, counters: dict[str, int]) -> None:
    for name, value in counters.items():
        if name.startswith("rejected:"):
            snapshot.rejected[name.split(":", 1)[1]] += value
        else:
            snapshot.totals[name] += value


async def _load_prices(redis: Redis, job_ids: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.get(keys.job(job_id))
        records = await pipe.execute()
    if len(_prices) + len(job_ids) > PRICE_CACHE_MAX:
        _prices.clear()
    for job_id, record in zip(job_ids, records, strict=True):
        if record is None:
            continue
        try:
            _prices[job_id] = _Prices.model_validate_json(record)
        except ValidationError:
            _warn_once(f"job {job_id}: record unreadable; its cost is not in skillmix_cost_usd_total")

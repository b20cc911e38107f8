"""``GET /metrics``: the fleet's totals in Prometheus text format, read from Redis at each scrape.

Any API process answers for the whole fleet: everything comes from Redis, nothing from this process's
memory, so scraping one API (or several behind a balancer) gives the same numbers. prometheus-client's
collectors are synchronous, so the route reads Redis first (pipelined: one round trip per ``JOB_BATCH`` jobs)
and then hands the snapshot to a collector in a registry built for this one scrape.

Job keys are never deleted or expired (``store.keys``), so totals summed over every job never go down.
Should jobs ever be deleted, their counters must first be folded into a retired-totals hash read here.
"""

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from schemas.jobs import JobState
from service.deps import RedisDep
from store import keys, pricing
from store.stats import parse_field

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
JOB_BATCH = 500  # jobs per pipelined round trip (~25 ms of event loop at most)
PRICE_CACHE_MAX = 100_000  # job records never change: their prices are read once per process
# counters hash field -> exported counter (``skillmix_<name>_total``)
JOB_COUNTERS = {
    "accepted": ("items_accepted", "examples accepted and stored, over every job"),
    "llm_calls": ("llm_calls", "LLM requests sent, over every job (retries included)"),
    "retries": ("llm_retries", "LLM requests that were retries of an earlier attempt, over every job"),
    "rate_limited": ("llm_rate_limited", "LLM requests answered 429, over every job"),
}
BUILT_IN = frozenset(
    {"jobs", "queue_depth", "items_rejected", "llm_tokens", "cost_usd", *(n for n, _ in JOB_COUNTERS.values())}
)


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


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _by_metric(raw: dict[bytes, bytes], kind: str) -> dict[str, dict[str, float]]:
    """``"<metric>|<endpoint>" -> number`` fields grouped by metric; fields that break the contract are skipped."""
    grouped: dict[str, dict[str, float]] = {}
    for raw_field, raw_value in raw.items():
        name = _decode(raw_field)
        parsed = parse_field(name)
        try:
            value = float(raw_value)
        except ValueError:
            parsed = None
        if parsed is None or parsed[0] in BUILT_IN:
            _warn_once(f"{kind} field {name!r} is not '<metric>|<endpoint>' with a number; not exported")
            continue
        metric, endpoint = parsed
        grouped.setdefault(metric, {})[endpoint] = value
    return grouped


def _warn_once(message: str) -> None:
    if message not in _warned and len(_warned) < 1000:
        _warned.add(message)
        log.warning(message)


async def read_fleet(redis: Redis) -> FleetSnapshot:
    """One consistent-enough read of the fleet: job ids first, then each batch of jobs' state and counters,
    added up as it arrives (an await per batch, so a big fleet never holds the event loop for long)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.JOBS_INDEX, 0, -1)
        pipe.zcard(keys.QUEUE_NAME)
        pipe.hgetall(keys.STATS)
        pipe.hgetall(keys.GAUGES)
        raw_ids, depth, raw_stats, raw_gauges = await pipe.execute()
    snapshot = FleetSnapshot(queue_depth=int(depth), stats=_by_metric(raw_stats, "stats"))
    for metric, by_endpoint in _by_metric(raw_gauges, "gauges").items():
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
                costs.append(pricing.cost_from_counters(counters, prices or _Prices()))
            else:
                unpriced[job_id] = counters
    if unpriced:  # priced from their records, read once per process
        await _load_prices(redis, list(unpriced))
        costs.extend(pricing.cost_from_counters(c, _prices[j]) for j, c in unpriced.items() if j in _prices)
    snapshot.cost_usd = math.fsum(costs)  # exactly rounded: the total cannot dip as jobs are added
    return snapshot


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


class FleetCollector:
    """Turns a ``FleetSnapshot`` into metric families (a collector for one scrape's registry)."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        jobs = GaugeMetricFamily("skillmix_jobs", "jobs by state", labels=["state"])
        for state in [*(s.value for s in JobState), *sorted(set(snap.jobs_by_state) - set(JobState))]:
            jobs.add_metric([state], snap.jobs_by_state.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("skillmix_queue_depth", "chunks waiting in the arq queue", value=snap.queue_depth)
        for counter_field, (name, doc) in JOB_COUNTERS.items():
            yield CounterMetricFamily(f"skillmix_{name}", doc, value=snap.totals.get(counter_field, 0))
        rejected = CounterMetricFamily(
            "skillmix_items_rejected", "items rejected, by reason, over every job", labels=["reason"]
        )
        for reason, count in sorted(snap.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        tokens = CounterMetricFamily("skillmix_llm_tokens", "LLM tokens, over every job", labels=["kind"])
        tokens.add_metric(["prompt"], snap.totals.get("prompt_tokens", 0))
        tokens.add_metric(["completion"], snap.totals.get("completion_tokens", 0))
        yield tokens
        yield CounterMetricFamily(
            "skillmix_cost_usd", "estimated spend in US dollars, over every job", value=snap.cost_usd
        )
        for metric, by_endpoint in sorted(snap.stats.items()):
            family = CounterMetricFamily(
                f"skillmix_{metric}", f"fleet total of {metric} (skillmix:stats)", labels=["endpoint"]
            )
            for endpoint, value in sorted(by_endpoint.items()):
                family.add_metric([endpoint], value)
            yield family
        for metric, by_endpoint in sorted(snap.gauges.items()):
            gauge = GaugeMetricFamily(f"skillmix_{metric}", f"{metric} (skillmix:gauges)", labels=["endpoint"])
            for endpoint, value in sorted(by_endpoint.items()):
                gauge.add_metric([endpoint], value)
            yield gauge


def render(snapshot: FleetSnapshot) -> bytes:
    """The snapshot in Prometheus text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(snapshot))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)
async def metrics(redis: RedisDep) -> Response:
    """Fleet-wide jobs, queue, items, LLM calls, tokens, cost and ``skillmix:stats`` / ``skillmix:gauges``."""
    return Response(render(await read_fleet(redis)), media_type=CONTENT_TYPE)

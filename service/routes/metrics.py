"""``GET /metrics``: the fleet's totals in Prometheus text format, read from Redis at each scrape.

Any API process answers for the whole fleet: everything comes from Redis, nothing from this process's
memory, so scraping one API (or several behind a balancer) gives the same numbers. prometheus-client's
collectors are synchronous, so the route reads Redis first (``store.stats.read_fleet``, pipelined: one round
trip per ``JOB_BATCH`` jobs) and then hands the snapshot to a collector in a registry built for this scrape.

Provider batch mode's gauges (``skillmix_batches_open``, ``skillmix_batch_lines_gathering``, by endpoint) are
read at each scrape too, bounded (``store.stats.BATCH_SCAN``).

Job keys are never deleted or expired (``store.keys``), so totals summed over every job never go down.
Should jobs ever be deleted, their counters must first be folded into a retired-totals hash read here.
"""

from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis

from schemas.jobs import JobState
from service.auth import AdminDep
from service.deps import RedisDep
from store.stats import FleetSnapshot
from store.stats import read_fleet as read_snapshot

router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
# counters hash field -> exported counter (``skillmix_<name>_total``)
JOB_COUNTERS = {
    "accepted": ("items_accepted", "examples accepted and stored, over every job"),
    "llm_calls": ("llm_calls", "LLM requests sent, over every job (retries included)"),
    "retries": ("llm_retries", "LLM requests that were retries of an earlier attempt, over every job"),
    "rate_limited": ("llm_rate_limited", "LLM requests answered 429, over every job"),
}
BATCH_GAUGES = {
    "batches_open": "provider batches submitted (or being submitted) and not yet applied, by endpoint",
    "batch_lines_gathering": "batch requests waiting for their file to be submitted, by endpoint",
}
BUILT_IN = frozenset(
    {
        "jobs",
        "queue_depth",
        "items_rejected",
        "llm_tokens",
        "cost_usd",
        *(n for n, _ in JOB_COUNTERS.values()),
        *BATCH_GAUGES,
    }
)


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
        for name, counts in (
            ("batches_open", snap.batches_open),
            ("batch_lines_gathering", snap.batch_lines_gathering),
        ):
            gauge = GaugeMetricFamily(f"skillmix_{name}", BATCH_GAUGES[name], labels=["endpoint"])
            for endpoint, count in sorted(counts.items()):
                gauge.add_metric([endpoint], count)
            yield gauge
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


async def read_fleet(redis: Redis) -> FleetSnapshot:
    """The fleet's numbers for one scrape; stats or gauges under the names exported here are skipped."""
    return await read_snapshot(redis, BUILT_IN)


def render(snapshot: FleetSnapshot) -> bytes:
    """The snapshot in Prometheus text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(snapshot))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)
async def metrics(redis: RedisDep, caller: AdminDep) -> Response:
    """Fleet-wide jobs, queue, items, LLM calls, tokens, cost and ``skillmix:stats`` / ``skillmix:gauges``
    (an admin key: the numbers are every team's)."""
    return Response(render(await read_fleet(redis)), media_type=CONTENT_TYPE)

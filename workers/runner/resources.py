"""Per-process resources of the runner: the one place endpoint clients are built (and cached).

Every LLM call of every job goes through a client from ``Resources.client``, wrapped by the runner's
metered path (``workers.meter``); ``LLMClient`` refuses to be built without the key held here.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from arq.connections import ArqRedis

from schemas.jobs import JobRecord
from schemas.settings import Settings
from store import endpoints, records
from workers.llm.adaptive import AdaptiveConcurrency
from workers.llm.client import _BUILD_KEY, LLMClient
from workers.llm.fleet import FleetLimiter, LimitSignals
from workers.recipes import NO_ENDPOINT, Recipe, recipe_for
from workers.tally import Tally

log = logging.getLogger(__name__)
RECIPE_CACHE = 64
ENDPOINT_RECHECK_S = 2.0


@dataclass
class _CachedClient:
    client: LLMClient
    fingerprint: str
    checked_at: float


class Resources:
    """Per-process caches: one LLM client per endpoint, one recipe per job.

    Each LLM client owns the process's HTTP connection pool for its endpoint, sized to the endpoint's
    concurrency and sharded (see ``ShardedTransport``), together with that endpoint's limiter. Endpoint
    settings are looked up again every ``ENDPOINT_RECHECK_S``: a restarted ``skillmix local-llm`` (new port)
    or changed settings get a fresh client within seconds; the old one closes once its calls are done.
    """

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.tally = Tally(settings.redis_url, redis, settings.redis_timeout_s)
        self.limit_signals = LimitSignals(redis)  # 429 cool-downs and limit changes, all endpoints
        self.limit_signals.start()
        self.clients: dict[str, _CachedClient] = {}
        self.adaptive: dict[str, AdaptiveConcurrency] = {}
        self.recipes: dict[str, tuple[JobRecord, Recipe]] = {}
        self._retired: set[asyncio.Task[None]] = set()

    async def client(self, name: str) -> LLMClient:
        cached = self.clients.get(name)
        now = time.monotonic()
        if cached is not None and now - cached.checked_at < ENDPOINT_RECHECK_S:
            return cached.client
        endpoint = await endpoints.resolve(self.redis, self.settings, name)
        fingerprint = endpoints.fingerprint(endpoint)
        if cached is not None and cached.fingerprint == fingerprint:
            cached.checked_at = now
            return cached.client
        # raises LLMMissingKey before anything is replaced; the rate limits are the fleet's, kept in Redis
        limiter = FleetLimiter(self.redis, self.tally, name, endpoint, self.limit_signals)
        adaptive = None
        if endpoint.concurrency == "adaptive":  # one per process and endpoint: its waiters queue locally
            adaptive = self.adaptive.get(name)
            if adaptive is None:
                adaptive = AdaptiveConcurrency.from_settings(self.redis, name, endpoint, self.tally)
                self.adaptive[name] = adaptive
        client = LLMClient(name, endpoint, _key=_BUILD_KEY, limiter=limiter, adaptive=adaptive)
        if cached is not None:
            log.info("endpoint %s changed; new calls use the new settings", name)
            retire = asyncio.create_task(_close_later(cached.client, endpoint.timeout_s * 2))
            self._retired.add(retire)
            retire.add_done_callback(self._retired.discard)
        self.clients[name] = _CachedClient(client, fingerprint, now)
        return client

    async def recipe(self, job_id: str) -> tuple[JobRecord, Recipe] | None:
        if job_id not in self.recipes:
            record = await records.load_record(self.redis, job_id)
            if record is None:
                return None
            endpoint = (
                await endpoints.resolve(self.redis, self.settings, record.endpoint)
                if record.spec.needs_endpoint()
                else NO_ENDPOINT  # a job that calls no LLM (curate without a judge) needs none configured
            )
            if len(self.recipes) >= RECIPE_CACHE:  # oldest first: dicts keep insertion order
                del self.recipes[next(iter(self.recipes))]
            self.recipes[job_id] = (record, recipe_for(record, record.endpoint, endpoint))
        return self.recipes[job_id]

    async def aclose(self) -> None:
        for task in list(self._retired):
            task.cancel()
        for cached in self.clients.values():
            await cached.client.aclose()
        await self.tally.aclose()
        await self.limit_signals.aclose()
        for adaptive in self.adaptive.values():
            await adaptive.aclose()


async def _close_later(client: LLMClient, after_s: float) -> None:
    """Close a replaced client once the calls still using it have had time to finish."""
    try:
        await asyncio.sleep(after_s)
    finally:
        await client.aclose()

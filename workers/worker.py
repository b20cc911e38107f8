"""The arq worker: chunk generation jobs plus the curate consumer, sharing one Redis pool and HTTP client.

Start with ``skillmix worker`` (or ``arq workers.worker.WorkerSettings``). Shared resources are created
once per process in ``startup`` and carried in ``ctx``; the job function stays thin.
"""

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any, ClassVar

from arq import Retry, Worker
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from schemas.jobs import ChunkTask, JobRecord
from schemas.settings import Settings, get_settings
from workers import endpoints, jobstore, keys
from workers.curate.consumer import CurateConsumer
from workers.extract.runner import extract_function
from workers.generate import EndpointDown, run_chunk
from workers.liveness import Liveness
from workers.llm.client import LLMClient
from workers.recipes import Recipe, recipe_for
from workers.redis_pool import REDIS_DOWN, open_redis, redis_settings, rerun_on_redis_trouble

log = logging.getLogger(__name__)
MAX_TRIES = 8
RECONNECT_MAX_S = 10.0
RECIPE_CACHE = 64


class Resources:
    """Per-process caches: one LLM client per endpoint, one recipe per job.

    Each LLM client owns the process's HTTP connection pool for its endpoint, sized to the endpoint's
    concurrency and sharded (see ``ShardedTransport``), together with that endpoint's limiter.
    """

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.clients: dict[str, LLMClient] = {}
        self.recipes: dict[str, tuple[JobRecord, Recipe]] = {}

    async def client(self, name: str) -> LLMClient:
        if name not in self.clients:
            endpoint = await endpoints.resolve(self.redis, self.settings, name)
            self.clients[name] = LLMClient(name, endpoint)
        return self.clients[name]

    async def recipe(self, job_id: str) -> tuple[JobRecord, Recipe] | None:
        if job_id not in self.recipes:
            record = await jobstore.load_record(self.redis, job_id)
            if record is None:
                return None
            endpoint = await endpoints.resolve(self.redis, self.settings, record.endpoint)
            if len(self.recipes) >= RECIPE_CACHE:  # oldest first: dicts keep insertion order
                del self.recipes[next(iter(self.recipes))]
            self.recipes[job_id] = (record, recipe_for(record, record.endpoint, endpoint))
        return self.recipes[job_id]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def run_chunk_job(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, int]:
    task = ChunkTask.model_validate(payload)
    try:
        return await _run_chunk(ctx, task)
    except EndpointDown as exc:
        log.warning("%s; retry %d", exc, ctx["job_try"])
        raise Retry(defer=min(5 * ctx["job_try"], 60)) from exc
    except Exception as exc:
        rerun_on_redis_trouble(exc, ctx["job_try"], task.arq_id)
        raise


async def _run_chunk(ctx: dict[str, Any], task: ChunkTask) -> dict[str, int]:
    res: Resources = ctx["resources"]
    found = await res.recipe(task.job_id)
    if found is None:
        return {"emitted": 0, "skipped": task.stop - task.start}
    record, recipe = found
    llm = await res.client(record.endpoint)
    outcome = await run_chunk(ctx["redis"], record, recipe, llm, task, ctx["job_try"] >= MAX_TRIES)
    return {"emitted": outcome.emitted, "skipped": outcome.skipped}


async def startup(ctx: dict[str, Any]) -> None:
    """Per-process resources, plus the two background loops: the curate consumer and the heartbeat."""
    settings: Settings = ctx.get("settings") or get_settings()
    ctx["resources"] = Resources(ctx["redis"], settings)
    liveness = Liveness(ctx["redis"], settings)
    consumer = CurateConsumer(ctx["redis"], settings, f"{socket.gethostname()}-{os.getpid()}")
    stop = asyncio.Event()
    ctx["liveness"], ctx["background_stop"] = liveness, stop
    await liveness.beat()  # alive before the first job starts
    ctx["background"] = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(liveness.run(stop))]


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["background_stop"].set()
    tasks: list[asyncio.Task[None]] = ctx["background"]
    _, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await ctx["liveness"].close()
    await ctx["resources"].aclose()


async def job_started(ctx: dict[str, Any]) -> None:
    await ctx["liveness"].job_started(ctx)


async def job_ended(ctx: dict[str, Any]) -> None:
    await ctx["liveness"].job_ended(ctx)


def make_worker(settings: Settings, **overrides: Any) -> Worker:
    """A worker built from explicit settings (the CLI and the in-process quick start use this)."""
    options: dict[str, Any] = {
        "functions": WorkerSettings.functions,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": job_started,
        "after_job_end": job_ended,
        "queue_name": keys.QUEUE_NAME,
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.chunk_timeout_s,
        "max_tries": MAX_TRIES,
        "keep_result": 3600,
        "redis_settings": redis_settings(settings),
        "ctx": {"settings": settings},
    }
    options.update(overrides)
    return Worker(**options)


async def run_resilient(settings: Settings, burst: bool = False) -> None:
    """Run a worker that outlives Redis restarts and failovers.

    arq's worker stops on a lost connection; a fleet must not. On a lost connection the chunks this process
    was running are cancelled, and once Redis answers again their arq in-progress keys are released so any
    worker picks them up at once (their finished items are skipped; curation is idempotent).
    """
    delay = 0.5
    while True:
        try:
            pool = await open_redis(settings)
        except REDIS_DOWN as exc:
            log.warning("Redis not answering (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            continue
        worker = make_worker(settings, burst=burst, redis_pool=pool)
        try:
            await worker.async_run()
            await worker.close()
            return
        except asyncio.CancelledError:  # SIGINT/SIGTERM: arq cancels its main task; shut down as arq would
            await worker.close()
            return
        except REDIS_DOWN as exc:
            log.warning("lost Redis (%s); restarting the worker when it answers", exc)
        orphans = list(worker.tasks)
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        if "background" in worker.ctx:
            await shutdown(worker.ctx)
        with contextlib.suppress(*REDIS_DOWN):
            await pool.aclose()
        while not await _release(settings, orphans):
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
        delay = 0.5


async def _release(settings: Settings, job_ids: list[str]) -> bool:
    """Delete the in-progress marks of chunks this process abandoned; False while Redis is still away."""
    try:
        redis = await open_redis(settings)
    except REDIS_DOWN:
        return False
    try:
        if job_ids:
            marks = [in_progress_key_prefix + job_id for job_id in job_ids]
            await redis.delete(*marks)
            await redis.hdel(keys.RUNNING, *job_ids)
        return True
    except REDIS_DOWN:
        return False
    finally:
        await redis.aclose()


class WorkerSettings:
    """For ``arq workers.worker.WorkerSettings``; ``skillmix worker`` uses ``make_worker`` instead."""

    functions: ClassVar[list[Any]] = [run_chunk_job, extract_function]
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started
    after_job_end = job_ended
    queue_name = keys.QUEUE_NAME
    max_jobs = get_settings().worker_max_jobs
    job_timeout = get_settings().chunk_timeout_s
    max_tries = MAX_TRIES
    keep_result = 3600
    redis_settings = redis_settings(get_settings())

"""The arq worker: the job runner's one function (``workers.runner.step.run_step``) plus the curate consumer,
sharing one Redis pool and HTTP client.

Start with ``skillmix worker`` (or ``arq workers.worker.WorkerSettings``). Shared resources are created
once per process in ``startup`` (``workers.runner.resources.Resources``) and carried in ``ctx``.
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any, ClassVar

from arq import Worker
from arq.constants import in_progress_key_prefix

from schemas.settings import Settings, get_settings
from store import keys
from store.connection import REDIS_DOWN, open_redis, redis_settings
from workers import drain, recipes
from workers.batch.manager import BatchManager
from workers.curate.consumer import CurateConsumer
from workers.extract import runner as _extraction_units  # noqa: F401  (registers the extraction's phase unit)
from workers.liveness import Liveness
from workers.metrics import serve as serve_metrics
from workers.review import help as _review_help_units  # noqa: F401  (registers the math recipe's help unit)
from workers.runner.resources import Resources
from workers.runner.step import MAX_TRIES, run_step
from workers.watchdog import ARQ_TIMEOUT_MARGIN_S

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 10.0


async def startup(ctx: dict[str, Any]) -> None:
    """Per-process resources, plus the background loops: the curate consumer, the heartbeat, the batch manager."""
    settings: Settings = ctx.get("settings") or get_settings()
    recipes.load(settings.recipes)  # plug-in recipes: known before the first step runs
    if settings.metrics_port is not None:  # once per process; a busy port is logged and the worker runs on
        serve_metrics(settings.metrics_port, settings.metrics_host)
    ctx["resources"] = Resources(ctx["redis"], settings)
    liveness = Liveness(ctx["redis"], settings)
    consumer = CurateConsumer(ctx["redis"], settings, f"{socket.gethostname()}-{os.getpid()}")
    stop = asyncio.Event()
    ctx["liveness"], ctx["background_stop"] = liveness, stop
    await liveness.beat()  # alive before the first job starts
    batch = BatchManager(ctx["redis"], settings, ctx["resources"])  # provider batches: cut, poll, apply
    ctx["background"] = [
        asyncio.create_task(consumer.run(stop)),
        asyncio.create_task(liveness.run(stop)),
        asyncio.create_task(batch.run(stop)),
    ]


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["background_stop"].set()
    tasks: list[asyncio.Task[None]] = ctx["background"]
    _, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await ctx["liveness"].close()
    await ctx["resources"].aclose()
    recipes.close_process()  # e.g. an answer-comparison pool a recipe started on first use


async def job_started(ctx: dict[str, Any]) -> None:
    await ctx["liveness"].job_started(ctx)


async def job_ended(ctx: dict[str, Any]) -> None:
    await ctx["liveness"].job_ended(ctx)


class ChunkWorker(Worker):  # type: ignore[misc]  # arq ships no type information
    """arq's worker, minus its costliest habit at fleet scale.

    arq keeps running jobs in its queue and, on every poll, re-examines each job at the head of the queue
    with four round trips (WATCH, EXISTS, ZSCORE, UNWATCH), running ones included: with 16 chunks running per
    process that was 1.3 Redis round trips per LLM call. Here the jobs this process runs are skipped outright
    and the rest are checked for an in-progress mark in one pipelined round trip; arq's own check (in a
    transaction) still decides, so a job that starts elsewhere meanwhile is not run twice.
    """

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        candidates = [j for j in job_ids if j.decode() not in self.tasks]
        if candidates:
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id in candidates:
                    pipe.exists(in_progress_key_prefix + job_id.decode())
                running = await pipe.execute()
            candidates = [j for j, busy in zip(candidates, running, strict=True) if not busy]
        await super().start_jobs(candidates)


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
        "job_timeout": settings.chunk_timeout_s + ARQ_TIMEOUT_MARGIN_S,
        "max_tries": MAX_TRIES,
        "keep_result": 3600,
        "redis_settings": redis_settings(settings),
        "ctx": {"settings": settings},
    }
    options.update(overrides)
    return ChunkWorker(**options)


async def run_resilient(settings: Settings, burst: bool = False) -> None:
    """Run a worker that outlives Redis restarts and failovers.

    arq's worker stops on a lost connection; a fleet must not. On a lost connection the chunks this process
    was running are cancelled, and once Redis answers again their arq in-progress keys are released so any
    worker picks them up at once (their finished items are skipped; curation is idempotent).
    """
    drain.reset()
    stopper = _Stopper(settings.stop_grace_s)
    stopper.install()
    try:
        await _run_resilient(settings, burst, stopper)
    except asyncio.CancelledError:
        if not drain.draining():
            raise
        log.info("stopped while Redis was away; the reaper frees this worker's chunks once its heartbeat expires")
    finally:
        stopper.remove()


async def _run_resilient(settings: Settings, burst: bool, stopper: "_Stopper") -> None:
    delay = 0.5
    while not drain.draining():
        try:
            pool = await open_redis(settings)
        except REDIS_DOWN as exc:
            log.warning("Redis not answering (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            continue
        worker = stopper.worker = make_worker(settings, burst=burst, redis_pool=pool, handle_signals=False)
        try:
            await worker.async_run()
            await worker.close()
            return
        except asyncio.CancelledError:  # stopped (``_Stopper``): its main task was cancelled; shut down as arq would
            await worker.close()
            return
        except REDIS_DOWN as exc:
            log.warning("lost Redis (%s); restarting the worker when it answers", exc)
        finally:
            stopper.worker = None
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


class _Stopper:
    """SIGTERM/SIGINT drain the worker (``workers.drain``) instead of arq's cancel-everything-now.

    First signal: arq picks no more chunks, no new LLM call leaves, calls in flight finish, and each running
    chunk then hands itself back to the queue at once (``run_chunk_job``). Whatever still runs after
    ``stop_grace_s`` is cancelled, which arq hands back too; then the worker shuts down (``shutdown``: heartbeat
    and running entries removed) and the process exits 0. A second signal stops at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.worker: Worker | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None

    def install(self) -> None:
        self._main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self.on_signal, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)

    def on_signal(self, sig: signal.Signals) -> None:
        worker = self.worker
        if worker is None:  # between two workers (Redis away): nothing runs here, stop now
            drain.start()
            if self._main is not None:
                self._main.cancel()
            return
        if drain.draining():
            log.warning("%s again: stopping now; running chunks go back to the queue", sig.name)
            worker.handle_sig(sig)
            return
        drain.start()
        running = sum(not t.done() for t in worker.tasks.values())
        log.info("%s: draining %d jobs, up to %.0f s for calls in flight", sig.name, running, self.grace_s)
        worker.allow_pick_jobs = False
        self._stopping = asyncio.create_task(self._stop(worker, sig))

    async def _stop(self, worker: Worker, sig: signal.Signals) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while (running := [t for t in worker.tasks.values() if not t.done()]) and loop.time() < deadline:
            await asyncio.wait(running, timeout=deadline - loop.time())  # a job picked as the signal came: again
        if left := sum(not t.done() for t in worker.tasks.values()):
            log.warning("grace of %.0f s over: cancelling %d jobs; they go back to the queue", self.grace_s, left)
        worker.handle_sig(sig)  # cancels what is left (arq re-queues it at once) and ends the main task


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

    functions: ClassVar[list[Any]] = [run_step]  # every kind of work: chunks, phase steps, help requests
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started
    after_job_end = job_ended
    queue_name = keys.QUEUE_NAME
    max_jobs = get_settings().worker_max_jobs
    job_timeout = get_settings().chunk_timeout_s + ARQ_TIMEOUT_MARGIN_S
    max_tries = MAX_TRIES
    keep_result = 3600
    redis_settings = redis_settings(get_settings())

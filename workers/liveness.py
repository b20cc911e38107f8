"""Worker liveness: every process beats a heartbeat, and the work of a process that died is picked up again.

arq marks a running job with an in-progress key that expires only after the job timeout (30 minutes by
default), so the chunks of a worker that was SIGKILLed, ran out of memory or lost its machine would wait
that long. Here each running arq job names its worker; a worker silent for ``DEAD_AFTER_BEATS`` beats is
dead, and any live worker deletes the in-progress keys of its jobs so the queue hands them out at once.
Running a chunk twice is safe: finished items are skipped and curation is idempotent per item.

The same loop re-enqueues item ranges that were planned but never enqueued (``queue.redrive``): the API
or a worker died between raising ``planned`` and enqueueing the chunks; and it runs the job watchdog
(``workers.watchdog``), which re-enqueues chunks arq dropped and fails jobs that cannot progress.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from schemas.settings import Settings
from store import keys, queue
from store.connection import REDIS_ERRORS
from workers.watchdog import ARQ_TIMEOUT_MARGIN_S, Watchdog, WatchReport

log = logging.getLogger(__name__)
DEAD_AFTER_BEATS = 3

# Free an orphaned job only if it is still marked as run by the dead worker and that worker is still silent.
_RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] or redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# Forget a finished job only if it is still ours (a reaper may have handed it to another worker meanwhile).
_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class Liveness:
    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._release = redis.register_script(_RELEASE)
        self._forget = redis.register_script(_FORGET)
        # arq's in-progress TTL: its job timeout (see ``workers.worker.make_worker``) plus arq's own 10 s
        in_progress_ms = (settings.chunk_timeout_s + ARQ_TIMEOUT_MARGIN_S + 10) * 1000
        self.watchdog = Watchdog(redis, int(settings.stall_s * 1000), in_progress_ms, settings.batch_window_h)

    async def job_started(self, ctx: dict[str, Any]) -> None:
        """arq's ``on_job_start``: record who runs this job.

        arq calls its hooks outside its own error handling, so a Redis blip here must not escape: the job
        would be neither run nor released until arq's in-progress mark expired.
        """
        try:
            await self.redis.hset(keys.RUNNING, ctx["job_id"], self.worker_id)
        except REDIS_ERRORS as exc:  # the job runs anyway, only without fast recovery should we die
            log.warning("could not record %s as running here: %s", ctx["job_id"], exc)

    async def job_ended(self, ctx: dict[str, Any]) -> None:
        """arq's ``after_job_end``: runs once arq has removed its in-progress mark."""
        try:
            await self._forget(keys=[keys.RUNNING], args=[ctx["job_id"], self.worker_id])
        except REDIS_ERRORS as exc:  # a stale entry is harmless: the reaper drops it once we are gone
            log.warning("could not forget %s: %s", ctx["job_id"], exc)

    @property
    def dead_after_ms(self) -> int:
        return int(self.settings.heartbeat_s * DEAD_AFTER_BEATS * 1000)

    async def beat(self) -> None:
        await self.redis.set(keys.heartbeat(self.worker_id), b"1", px=self.dead_after_ms)

    async def redrive(self) -> int:
        """Re-enqueue plans a dead process left pending; one worker of the fleet does it per interval."""
        stale_ms = 2 * self.dead_after_ms
        if not await self.redis.set(keys.REDRIVE_LOCK, self.worker_id, nx=True, px=stale_ms // 2):
            return 0
        return await queue.redrive(self.redis, stale_ms)

    async def watch(self) -> WatchReport | None:
        """Look after every active job (``workers.watchdog``); one worker of the fleet does it per interval."""
        interval_ms = max(1, int(self.settings.heartbeat_s * 1000))
        if not await self.redis.set(keys.WATCHDOG_LOCK, self.worker_id, nx=True, px=interval_ms):
            return None
        return await self.watchdog.run_once()

    async def reap(self) -> int:
        """Free the running jobs of dead workers; returns how many were freed.

        Reads one hash of the jobs running fleet-wide (never a keyspace scan), then one EXISTS per worker.
        """
        running = {job.decode(): owner.decode() for job, owner in (await self.redis.hgetall(keys.RUNNING)).items()}
        workers = sorted(set(running.values()))
        beating = await asyncio.gather(*(self.redis.exists(keys.heartbeat(w)) for w in workers))
        dead = {w for w, alive in zip(workers, beating, strict=True) if not alive}
        freed = 0
        for job_id, owner in running.items():
            if owner not in dead:
                continue
            marks = [in_progress_key_prefix + job_id, keys.RUNNING, keys.heartbeat(owner)]
            if await self._release(keys=marks, args=[job_id, owner]):
                log.warning("worker %s stopped beating; %s runs again", owner, job_id)
                freed += 1
        return freed

    async def run(self, stop: asyncio.Event) -> None:
        """Beat, and look for orphans, once per ``heartbeat_s`` until ``stop`` is set.

        The beat has a loop of its own: the watchdog's scans may take a while, and a late beat would get
        this worker taken for dead and its chunks run twice.
        """
        await asyncio.gather(
            self._every_beat(stop, self.beat, self.reap), self._every_beat(stop, self.redrive, self.watch)
        )

    async def _every_beat(self, stop: asyncio.Event, *steps: Callable[[], Awaitable[object]]) -> None:
        while not stop.is_set():
            try:
                for step in steps:
                    await step()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:  # Redis away: run_resilient restarts the worker when it is back
                log.warning("liveness step failed: %s", exc)
            except Exception:  # never let the beat die while the worker lives: it would be taken for dead
                log.exception("liveness step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_s)

    async def close(self) -> None:
        """A stopping worker says so at once (its cancelled jobs went back to the queue already): no heartbeat,
        and no running entry naming it (one left by a failed ``job_ended``), so nobody waits for it."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.delete(keys.heartbeat(self.worker_id))
            running = await self.redis.hgetall(keys.RUNNING)
            for job_id, owner in running.items():
                if owner.decode() == self.worker_id:  # ours and we are silent now: free it like the reaper would
                    marks = [in_progress_key_prefix + job_id.decode(), keys.RUNNING, keys.heartbeat(self.worker_id)]
                    await self._release(keys=marks, args=[job_id, self.worker_id])

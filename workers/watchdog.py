"""The one owner of a job's liveness: every job reaches a terminal state or keeps a live path to one.

One worker of the fleet per interval (``Liveness.run`` takes a lock) looks at every active job:

- Every kind of job is watched: chunked jobs as below; a stepped job (e.g. extraction, ``store.stepped``)
  whose live step is neither queued nor running has that step enqueued again, and fails after
  ``MAX_REDRIVES`` such reruns without progress.
- A job with work outstanding whose progress (planned, generated, processed, calls, stream length) has
  not moved for ``stall_s`` is *stalled*. It is advanced (complete it, or top it up: a curator that died
  between its acknowledgement and ``advance`` leaves that undone), then each of its chunks with items
  not generated is looked up in arq: a chunk neither queued nor running (it ended as an arq failure, ran
  out of tries, its key expired, or a timeout) is enqueued again. A chunk enqueued again
  ``MAX_REDRIVES`` times without generating anything new fails the job with arq's last error for it.
  A chunk marked in progress by arq for longer than ``stall_ms`` with no worker recorded as running it
  was picked up by a worker that died before its ``on_job_start`` hook ran (the liveness reaper cannot
  see it): its mark is removed so the queue hands the chunk out again.
- A paused job (at its spending budget, ``workers.budget``) is left alone: it is waiting for a person. One
  paused by its team's day budget (``store.quotas``) is resumed once its team has room again: after a UTC
  day rolls over, the next run carries it on (``store.teams.resume_team``).
- A batch job with provider batches open (``store.batches``), the oldest younger than the batch window plus
  an hour, is not stalled: it is waiting on the provider. Its parked chunks stay deferred in arq's queue,
  so they are never orphans; skipping it only saves a needless scan.
- A finished job leaves the active set only once its stream is empty and none of its chunks runs, so
  items generated in the last moment are still curated (as surplus) instead of abandoned.

Re-running a chunk is safe: generated items are skipped and curation is idempotent per item. A false
stall costs one scan and changes nothing, because only chunks that nobody has are enqueued.
"""

import logging
from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job

from schemas.batches import BatchRecord
from schemas.jobs import ChunkTask, JobRecord, JobState, PhaseTask, Step
from store import clock, keys, queue, records, stepped, teams
from store.lifecycle import advance
from workers.llm.replay import drop_job as drop_replay

log = logging.getLogger(__name__)
MAX_REDRIVES = 5
ARQ_TIMEOUT_MARGIN_S = 30  # arq's job timeout is the chunk timeout plus this (ours fires first, and retries)
SCAN_BATCH = 256  # chunks looked up per pipeline
BATCH_GRACE_MS = 3_600_000  # past the provider's completion window, an open batch no longer excuses a job


@dataclass
class WatchReport:
    stalled: int = 0
    redriven: int = 0
    failed: int = 0
    retired: int = 0
    freed: int = 0
    resumed: int = 0


# Free an arq in-progress mark that no worker owns and that was set more than ARGV[2] ms ago (arq sets it
# with a TTL of ARGV[1] ms when a worker picks the chunk up, so its age is ARGV[1] - PTTL).
_FREE_UNOWNED = """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or tonumber(ARGV[1]) - ttl < tonumber(ARGV[2]) then return 0 end
return redis.call('DEL', KEYS[1])
"""


class Watchdog:
    def __init__(
        self, redis: ArqRedis, stall_ms: int, in_progress_ms: int | None = None, batch_window_h: int = 24
    ) -> None:
        """``in_progress_ms``: the TTL arq gives an in-progress mark (its job timeout + 10 s); without it,
        unowned marks are left to expire. ``batch_window_h``: the completion window asked of providers."""
        self.redis, self.stall_ms, self.in_progress_ms = redis, stall_ms, in_progress_ms
        self.batch_wait_ms = batch_window_h * 3_600_000 + BATCH_GRACE_MS
        self._free_unowned = redis.register_script(_FREE_UNOWNED)

    async def run_once(self) -> WatchReport:
        report = WatchReport()
        now_ms = await clock.redis_now_ms(self.redis)
        team_paused: set[str] = set()
        for raw_id in await self.redis.smembers(keys.ACTIVE_JOBS):
            job_id = raw_id.decode()
            state = await records.get_state(self.redis, job_id)
            if state is None or state.finished:
                report.retired += await self._retire(job_id)
                continue
            if state is JobState.PAUSED:  # at its budget, waiting for a person: not stalled (resume re-enqueues)
                await self.redis.hdel(keys.WATCHDOG, job_id)
                by, team = await self.redis.hmget(keys.meta(job_id), "paused_by", "team")
                if by == b"team" and team:
                    team_paused.add(team.decode())
                continue
            record = await records.load_record(self.redis, job_id)
            if record is None:
                continue
            if record.spec.mode == "batch" and await self._waiting_on_batch(job_id, now_ms):
                await self.redis.hdel(keys.WATCHDOG, job_id)  # its clock starts again when the answers come
                continue
            if await self._stalled(record, now_ms):
                report.stalled += 1
                if stepped.is_stepped(record):
                    await self._revive_stepped(record, report)
                else:
                    await self._revive(record, report)
        for team in sorted(team_paused):  # a new UTC day (or a cap raised behind our back): room again?
            report.resumed += await teams.resume_team(self.redis, team)
        return report

    async def _stalled(self, record: JobRecord, now_ms: int) -> bool:
        """Whether the job's progress fingerprint has not moved for ``stall_ms`` (restarting the clock if so)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.counters(record.id), "planned", "processed", "llm_calls", "accepted")
            pipe.scard(keys.generated(record.id))
            pipe.xlen(keys.items(record.id))
            pipe.hget(keys.WATCHDOG, record.id)
            counters, generated, queued, seen = await pipe.execute()
        fingerprint = ",".join(v.decode() if v else "0" for v in counters) + f",{generated},{queued}"
        if seen is not None:
            old, _, since = seen.decode().partition("|")
            if old == fingerprint and now_ms - int(since) >= self.stall_ms:
                await self.redis.hset(keys.WATCHDOG, record.id, f"{fingerprint}|{now_ms}")
                return True
            if old == fingerprint:
                return False
        await self.redis.hset(keys.WATCHDOG, record.id, f"{fingerprint}|{now_ms}")
        return False

    async def _waiting_on_batch(self, job_id: str, now_ms: int) -> bool:
        """Whether the job has provider batches open, the oldest within the batch window (plus the grace)."""
        ids = await self.redis.smembers(keys.job_batches(job_id))
        if not ids:
            return False
        raws = await self.redis.mget([keys.batch(b.decode()) for b in ids])
        created = [BatchRecord.model_validate_json(r).created_ms for r in raws if r is not None]
        return bool(created) and now_ms - min(created) < self.batch_wait_ms

    async def _revive(self, record: JobRecord, report: WatchReport) -> None:
        await advance(self.redis, record)
        if (await records.get_state(self.redis, record.id) or JobState.FAILED).finished:
            return
        pending = {f.decode() for f in await self.redis.hkeys(keys.pending_plans(record.id))}
        tasks = [
            task
            for start, stop in await queue.planned_ranges(self.redis, record.id)
            if f"{start}-{stop}" not in pending  # not enqueued yet: ``queue.redrive`` owns those
            for task in queue.chunks(record, start, stop)
        ]
        for lo in range(0, len(tasks), SCAN_BATCH):
            orphans, unowned = await self._orphans(tasks[lo : lo + SCAN_BATCH])
            for task in unowned:
                await self._free(task, report)
            for task, missing in orphans:
                if not await self._redrive(record, task, missing, report):
                    return

    async def _revive_stepped(self, record: JobRecord, report: WatchReport) -> None:
        """A stepped job (e.g. extraction) whose live step is neither queued nor running: enqueue that step again
        (it resumes from the saved place and replays what it was answered)."""
        task = await stepped.current_step(self.redis, record.id)
        if await stepped.live(self.redis, task) or await stepped.live(
            self.redis, PhaseTask(job_id=record.id, step=task.step + 1)
        ):
            return
        counters = await records.read_counters(self.redis, record)
        await self._redrive(record, task, max(counters.planned - counters.processed, 0), report)

    async def _orphans(self, tasks: list[ChunkTask]) -> tuple[list[tuple[ChunkTask, int]], list[ChunkTask]]:
        """Chunks with items not generated that arq neither holds in its queue nor runs: (task, missing);
        and those marked in progress that no worker is recorded as running."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task in tasks:
                pipe.smismember(keys.generated(task.job_id), list(range(task.start, task.stop)))
                pipe.zscore(keys.QUEUE_NAME, task.arq_id)
                pipe.exists(in_progress_key_prefix + task.arq_id)
                pipe.hexists(keys.RUNNING, task.arq_id)
            replies = await pipe.execute()
        orphans, unowned = [], []
        for i, task in enumerate(tasks):
            done, queued, running, owned = replies[4 * i : 4 * i + 4]
            missing = len(done) - sum(done)
            if missing and queued is None and not running:
                orphans.append((task, missing))
            elif missing and running and not owned:
                unowned.append(task)
        return orphans, unowned

    async def _free(self, task: ChunkTask, report: WatchReport) -> None:
        if self.in_progress_ms is None:
            return
        mark = in_progress_key_prefix + task.arq_id
        args = [self.in_progress_ms, self.stall_ms, task.arq_id]
        if await self._free_unowned(keys=[mark, keys.RUNNING], args=args):
            report.freed += 1
            log.warning("chunk %s was marked running by nobody alive; handed out again", task.arq_id)

    async def _redrive(self, record: JobRecord, task: Step, missing: int, report: WatchReport) -> bool:
        """Enqueue an orphaned unit again; False when it failed the job instead (stop looking)."""
        raw = await self.redis.hget(keys.redrives(record.id), task.arq_id)
        times, last_missing = (int(n) for n in raw.decode().split(":")) if raw else (0, missing + 1)
        times = times + 1 if missing >= last_missing else 1  # progress since the last redrive resets the count
        if times > MAX_REDRIVES:
            why = await self._last_error(task)
            unit = f"chunk {task.start}-{task.stop}" if isinstance(task, ChunkTask) else f"{task.kind} {task.arq_id}"
            message = (
                f"{unit} made no progress in {MAX_REDRIVES} reruns ({missing} items not generated); last error: {why}"
            )
            if await records.set_state(self.redis, record.id, JobState.FAILED, message):
                report.failed += 1
                log.error("job %s failed: %s", record.id, message)
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(prefix + task.arq_id for prefix in (job_key_prefix, result_key_prefix, retry_key_prefix)))
            pipe.hset(keys.redrives(record.id), task.arq_id, f"{times}:{missing}")
            await pipe.execute()
        await queue.enqueue_steps(self.redis, record.id, [task])
        report.redriven += 1
        log.warning("job %s: %s was neither queued nor running; enqueued again", record.id, task.arq_id)
        return True

    async def _last_error(self, task: Step) -> str:
        try:
            info = await Job(task.arq_id, self.redis, _queue_name=keys.QUEUE_NAME).result_info()
        except Exception as exc:  # an unreadable result (e.g. from another code version) is no reason to stop
            return f"unreadable ({type(exc).__name__})"
        if info is None or info.success:
            return "none recorded (the chunk's arq record expired or was never written)"
        return f"{type(info.result).__name__}: {info.result}"

    async def _retire(self, job_id: str) -> int:
        """Drop a finished job from the active set once nothing of it is left to curate or running."""
        if await self.redis.xlen(keys.items(job_id)):
            return 0
        if any(keys.job_of_step(f.decode()) == job_id for f in await self.redis.hkeys(keys.RUNNING)):
            return 0  # a unit of it (any kind) still runs
        await drop_replay(self.redis, job_id)  # no chunk of it will run again: its kept answers go
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.ACTIVE_JOBS, job_id)
            pipe.hdel(keys.WATCHDOG, job_id)
            await pipe.execute()
        return 1

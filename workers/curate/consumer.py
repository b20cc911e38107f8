"""The curate stage: a Redis consumer group over every active job's item stream.

Each entry is checked for quality, then for duplicates (shared state in Redis, so every worker of a job
sees the same dedup index), decided atomically, stored, and only then acknowledged. An entry whose worker
died before the acknowledgement is claimed again after ``claim_idle_ms`` and redone idempotently.
"""

import asyncio
import logging
import time

from arq.connections import ArqRedis
from redis.exceptions import ResponseError

from schemas.examples import Example, GeneratedItem, QualityVerdict, Reason
from schemas.jobs import JobRecord, JobState
from schemas.settings import Settings
from store import keys, records
from store.lifecycle import advance
from workers.curate import semantic
from workers.curate.batch import batched, curate_batch
from workers.curate.decide import Pending, decide_many
from workers.curate.dedup import Deduper
from workers.curate.quality import QualityFilter, quality_filter_for
from workers.curate.semantic import SemanticDeduper
from workers.logs import job_context

log = logging.getLogger(__name__)
GATHER_S = 0.25
Entry = tuple[bytes, dict[bytes, bytes]]


class CurateConsumer:
    def __init__(self, redis: ArqRedis, settings: Settings, name: str) -> None:
        self.redis, self.settings, self.name = redis, settings, name
        self.deduper = Deduper()
        self.semantic = SemanticDeduper()
        self._groups: set[str] = set()
        self._records: dict[str, JobRecord] = {}
        self._filters: dict[str, QualityFilter] = {}  # built once per job, not once per item
        self._last_claim = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.step(block_ms=1000)
                if not handled:
                    await asyncio.sleep(0.05)
                elif handled < self.settings.curate_batch:
                    # Items trickle in at the endpoint's pace: reading each alone costs a read's half-dozen
                    # round trips per item; a moment's wait lets a batch gather (curation is not in a hurry).
                    await asyncio.sleep(GATHER_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the stage alive; the entry stays pending and is claimed again
                log.exception("curate step failed")
                await asyncio.sleep(1.0)

    async def _ensure_group(self, job_id: str) -> None:
        if job_id in self._groups:
            return
        try:
            await self.redis.xgroup_create(keys.items(job_id), keys.CURATE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(job_id)

    async def step(self, block_ms: int = 0) -> int:
        """Curate one batch from all active jobs; returns how many entries were handled."""
        job_ids = sorted(j.decode() for j in await self.redis.smembers(keys.ACTIVE_JOBS))
        if not job_ids:
            return 0
        active = set(job_ids)  # forget finished jobs so a long-lived worker's caches stay small
        self._groups &= active
        self._records = {k: v for k, v in self._records.items() if k in active}
        self._filters = {k: v for k, v in self._filters.items() if k in active}
        for job_id in job_ids:
            await self._ensure_group(job_id)
        batches: dict[str, list[Entry]] = {}
        if time.monotonic() - self._last_claim > self.settings.claim_idle_ms / 4000:
            self._last_claim = time.monotonic()
            for job_id in job_ids:
                _, claimed, *_ = await self.redis.xautoclaim(
                    keys.items(job_id),
                    keys.CURATE_GROUP,
                    self.name,
                    min_idle_time=self.settings.claim_idle_ms,
                    start_id="0-0",
                    count=self.settings.curate_batch,
                )
                batches.setdefault(job_id, []).extend(claimed)
        streams = {keys.items(j): ">" for j in job_ids}
        replies = await self.redis.xreadgroup(
            keys.CURATE_GROUP, self.name, streams, count=self.settings.curate_batch, block=block_ms or None
        )
        for stream, entries in replies or []:
            job_id = stream.decode().removeprefix(keys.job("")).removesuffix(":items")
            batches.setdefault(job_id, []).extend(entries)
        handled = 0
        for job_id, entries in batches.items():
            if entries:
                with job_context(job_id):  # log lines while curating carry the job id
                    handled += await self.handle(job_id, entries)
        return handled

    async def _record(self, job_id: str) -> JobRecord | None:
        if job_id not in self._records:
            record = await records.load_record(self.redis, job_id)
            if record is None:
                return None
            self._records[job_id] = record
        return self._records[job_id]

    async def handle(self, job_id: str, entries: list[Entry]) -> int:
        """Curate a batch of one job's entries, acknowledge them together, then advance the job once."""
        record = await self._record(job_id)
        if record is not None and await records.get_state(self.redis, job_id) != JobState.CANCELLED:
            if batched(record):  # recipe curate: a few round trips per batch instead of three per item
                items = [GeneratedItem.model_validate_json(f[b"d"]) for _, f in entries if f.get(b"d")]
                await curate_batch(self, record, items)
            else:
                items = [GeneratedItem.model_validate_json(f[b"d"]) for _, f in entries if f.get(b"d")]
                await self._curate_all(record, items)
        ids = [msg_id for msg_id, _ in entries]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.items(job_id), keys.CURATE_GROUP, *ids)
            pipe.xdel(keys.items(job_id), *ids)
            await pipe.execute()
        if record is not None:
            await advance(self.redis, record)
        return len(entries)

    async def _curate_all(self, record: JobRecord, items: list[GeneratedItem]) -> None:
        """Each item checked in stream order (dedup sees the ones before it), then every decision in one
        pipeline: three round trips per batch (and dedup's), not three per item."""
        unique = list({item.index: item for item in reversed(items)}.values())[::-1]  # first delivery of an index
        if not unique:
            return
        earlier = await self.redis.hmget(keys.decisions(record.id), [str(item.index) for item in unique])
        decisions = []
        for item, prev in zip(unique, earlier, strict=True):
            if prev is None:  # else decided and stored in one step by an earlier delivery
                decisions.append(await self._curate(record, item))
        await decide_many(self.redis, record.id, record.spec.count, decisions)

    async def _curate(self, record: JobRecord, item: GeneratedItem) -> Pending:
        example_id = f"{record.id}-{item.index}"
        if record.id not in self._filters:
            self._filters[record.id] = quality_filter_for(record, semantic.embedder())
        verdict = self._filters[record.id].verdict(item)
        reason = verdict.reasons[0] if verdict.reasons else None
        duplicate_of = None
        if reason is None:
            # the request is the instruction plus its input (a brought dataset repeats one instruction over inputs)
            request = f"{item.instruction}\n{item.input}" if item.input else item.instruction
            dedup = await self.deduper.check_and_add(self.redis, record.id, example_id, request, record.spec.dedup)
            if dedup.reason is not None and dedup.duplicate_of != example_id:
                reason, duplicate_of = dedup.reason, dedup.duplicate_of
            elif record.spec.dedup.semantic:  # paraphrases (optional [embed] extra; skipped if absent)
                dedup = await self.semantic.check_and_add(
                    self.redis, record.id, example_id, item.instruction, record.spec.dedup
                )
                reason, duplicate_of = dedup.reason, dedup.duplicate_of
        example = Example(
            id=example_id,
            job_id=record.id,
            index=item.index,
            instruction=item.instruction,
            input=item.input,
            output=item.output,
            skills=item.skills,
            query_type=item.query_type,
            model=item.model,
            endpoint=item.endpoint,
            recipe=item.recipe,
            template_version=item.template_version,
            usage=item.usage,
            verdict=verdict,
            duplicate_of=duplicate_of,
            conversation=item.conversation,
            judge=item.judge,
            extras=item.extras,
        )
        rejected_for = reason or Reason.SURPLUS  # no reason: rejected only if the job has enough already
        rejected = QualityVerdict(
            accepted=False,
            reasons=[rejected_for, *(r for r in verdict.reasons if r != rejected_for)],
            detail=verdict.detail,
        )
        return Pending(
            item.index,
            reason,
            example.model_copy(update={"verdict": QualityVerdict(accepted=True)}).model_dump_json(),
            example.model_copy(update={"verdict": rejected}).model_dump_json(),
        )

"""The batch manager: one per worker process, a background loop that cuts, submits, polls and applies batches.

State lives in Redis (``store.batches``), never in a worker: every step takes a lease (one submitter per
gathering file, one poller per batch), renewed while it works, so a SIGKILLed worker's batch is carried on by
any other within a lease, and a restarted fleet carries on where it stood.

A batch's life: ``new`` (lines taken, worst case reserved) -> ``uploading`` (noted *before* anything is sent:
a worker that dies between creating the batch and noting its id leaves ``uploading`` behind, and the next
poller finds the batch by its ``metadata`` instead of creating a second one) -> the provider's statuses ->
applied (answers kept in the replay cache and charged, retryable lines back to gathering, parked units woken).
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from schemas.batches import FINISHED_AT_PROVIDER, OPEN_AT_PROVIDER, BatchRecord
from schemas.jobs import JobState
from schemas.llm import Usage
from schemas.settings import EndpointSettings, Settings
from store import batches, keys, records
from store.batches import Group, LineOutcome
from store.budget import Prices
from store.clock import now_iso
from store.connection import REDIS_DOWN
from store.endpoints import UnknownEndpoint
from workers.batch.outcome import read_lines
from workers.batch.provider import BatchAPI, ProviderRejected, ProviderTransient
from workers.llm.errors import LLMMissingKey
from workers.llm.limits import text_tokens
from workers.unit import Resources

log = logging.getLogger(__name__)
TICK_S = 0.5  # gathering windows, polls and wake-ups are looked at this often
PARALLEL = 8  # batches submitted or polled at once by one process
SCAN = 200  # gathering files / due batches looked at per tick
BACKOFF_MAX_S = 60.0
MIB = 1024 * 1024
# a failed validation worth one more try (OpenAI: the organisation's enqueued-token limit was reached)
TRANSIENT_VALIDATION = frozenset({"token_limit_exceeded", "rate_limit_exceeded", "server_error"})
METADATA_KEY = "skillmix_batch"


def batch_prices(endpoint: EndpointSettings) -> Prices:
    """A batch line's price: the endpoint's online price times its ``batch_price_factor``."""
    factor = endpoint.batch_price_factor
    return Prices(endpoint.usd_per_mtok_prompt * factor, endpoint.usd_per_mtok_completion * factor)


class BatchManager:
    def __init__(self, redis: Redis, settings: Settings, resources: Resources) -> None:
        self.redis, self.settings, self.resources = redis, settings, resources
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.apis: dict[str, tuple[str, BatchAPI]] = {}
        self.busy: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(PARALLEL)
        self.backoff: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except REDIS_DOWN as exc:
                    log.warning("batch manager: Redis unreachable (%s); trying again", exc)
                except Exception:
                    log.exception("batch manager tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK_S)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for _, api in self.apis.values():
                await api.aclose()

    async def tick(self) -> None:
        now = batches.now_ms()
        gather_ms = self.settings.batch_gather_s * 1000
        entries = await self.redis.zrange(keys.BATCHES_GATHERING, 0, SCAN - 1, withscores=True)
        young = [m.decode() for m, score in entries if score and now - score < gather_ms]
        due = [m.decode() for m, score in entries if not score or now - score >= gather_ms]
        if young:  # a file that reached its bounds goes now, not at the end of its window
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in young:
                    pipe.llen(Group(*batches.split_member(member)).open)
                sizes = await pipe.execute()
            due += [m for m, n in zip(young, sizes, strict=True) if n >= await self._max_requests(m)]
        for member in due:
            self._spawn("submit:" + member, self._submit(member))
        for raw in await self.redis.zrangebyscore(keys.BATCHES_OPEN, "-inf", now, start=0, num=SCAN):
            bid = raw.decode()
            self._spawn("poll:" + bid, self._poll(bid))
        await batches.wake(self.redis, keys.QUEUE_NAME, in_progress_key_prefix)

    def _spawn(self, name: str, work: Any) -> None:
        if name in self.busy:
            work.close()
            return
        self.busy.add(name)

        async def run() -> None:
            try:
                async with self.slots:
                    await work
            except Exception:
                log.exception("batch manager: %s failed", name)
            finally:
                self.busy.discard(name)

        task = asyncio.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _max_requests(self, member: str) -> int:
        try:
            return (await self.resources.client(batches.split_member(member)[1])).endpoint.batch_max_requests
        except (UnknownEndpoint, LLMMissingKey):
            return 50_000

    def _api(self, name: str, endpoint: EndpointSettings) -> BatchAPI:
        fingerprint = endpoint.model_dump_json()
        cached = self.apis.get(name)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        api = BatchAPI(name, endpoint)
        self.apis[name] = (fingerprint, api)
        if cached is not None:
            self._spawn(f"close:{name}:{id(cached[1])}", cached[1].aclose())
        return api

    @contextlib.asynccontextmanager
    async def _lease(self, key: str) -> AsyncIterator[bool]:
        """Hold ``key`` (renewed every third of the lease) while the block runs; False if another holds it."""
        if not await batches.lock(self.redis, key, self.owner):
            yield False
            return

        async def renew() -> None:
            while True:
                await asyncio.sleep(batches.LOCK_MS / 3000)
                with contextlib.suppress(*REDIS_DOWN):
                    await self.redis.pexpire(key, batches.LOCK_MS)

        renewer = asyncio.create_task(renew())
        try:
            yield True
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(*REDIS_DOWN):
                await batches.unlock(self.redis, key, self.owner)

    # --- cutting a gathering file into a batch -------------------------------------------------------------

    async def _submit(self, member: str) -> None:
        job_id, endpoint_name = batches.split_member(member)
        group = Group(job_id, endpoint_name)
        async with self._lease(keys.batch_submit_lock(job_id, endpoint_name)) as held:
            if not held:
                return
            state = await records.get_state(self.redis, job_id)
            if state is None or state.finished:  # cancelled or failed: its gathering lines go unsent
                await batches.drop_gathering(self.redis, group)
                return
            if state is JobState.PAUSED:  # at its budget: the lines wait (a resume carries on)
                return
            endpoint = (await self.resources.client(endpoint_name)).endpoint
            score = await self.redis.zscore(keys.BATCHES_GATHERING, member)
            raw = await self.redis.lrange(group.open, 0, endpoint.batch_max_requests - 1)
            if not raw:
                await self.redis.eval(
                    "if redis.call('LLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end",
                    2,
                    group.open,
                    keys.BATCHES_GATHERING,
                    member,
                )
                return
            record, cids = self._cut(job_id, endpoint_name, endpoint, raw)
            split = len(cids) < len(raw) or len(raw) >= endpoint.batch_max_requests  # the file is full
            rounds = await self.redis.hget(keys.counters(job_id), "batch_rounds")
            record.round = int(rounds or 0) + (1 if score else 0)
            outcome = await batches.take(self.redis, group, record, cids, bool(score), now_iso(), split)
            log.info("job %s: batch %s of %d lines for %s: %s", job_id, record.id, len(cids), endpoint_name, outcome)

    def _cut(
        self, job_id: str, endpoint_name: str, endpoint: EndpointSettings, raw: list[bytes]
    ) -> tuple[BatchRecord, list[str]]:
        """The file's lines (within the endpoint's bounds) and its worst case: every line at max_tokens."""
        budget_bytes = int(endpoint.batch_max_mb * MIB)
        prices = batch_prices(endpoint)
        cids: list[str] = []
        size = worst_tokens = worst_usd = 0
        for line in raw:
            size += len(line) + 1
            if cids and size > budget_bytes:
                break
            data = orjson.loads(line)
            body = data["body"]
            prompt = text_tokens(*(str(m.get("content", "")) for m in body.get("messages", [])))
            completion = int(body.get("max_tokens") or 0)
            worst_tokens += prompt + completion
            worst_usd += round(prompt * prices.usd_per_mtok_prompt + completion * prices.usd_per_mtok_completion)
            cids.append(data["custom_id"])
        record = BatchRecord(
            id=uuid.uuid4().hex,
            job_id=job_id,
            endpoint=endpoint_name,
            lines=len(cids),
            created_ms=batches.now_ms(),
            worst_micro_usd=worst_usd,
            worst_tokens=worst_tokens,
        )
        return record, cids

    # --- one batch: submit, poll, apply ---------------------------------------------------------------------

    async def _poll(self, bid: str) -> None:
        async with self._lease(batches.lock_key(bid)) as held:
            if not held:
                return
            try:
                delay = await self._advance(bid)
            except ProviderTransient as exc:
                wait = min(BACKOFF_MAX_S, self.backoff.get(bid, 1.0) * 2)
                self.backoff[bid] = wait
                log.warning("batch %s: %s; again in %.0fs", bid, exc, wait)
                await self.redis.zadd(keys.BATCHES_OPEN, {bid: batches.now_ms() + wait * 1000}, xx=True)
                return
            self.backoff.pop(bid, None)
            if delay is not None:
                await self.redis.zadd(keys.BATCHES_OPEN, {bid: batches.now_ms() + delay * 1000}, xx=True)

    async def _advance(self, bid: str) -> float | None:
        """One step of the batch's life; the seconds until it is looked at again, or None once applied."""
        record = await batches.load(self.redis, bid)
        if record is None:
            await self.redis.zrem(keys.BATCHES_OPEN, bid)
            return None
        state = await records.get_state(self.redis, record.job_id)
        carry_on = state is not None and not state.finished
        try:
            endpoint = (await self.resources.client(record.endpoint)).endpoint
            api = self._api(record.endpoint, endpoint)
        except (UnknownEndpoint, LLMMissingKey) as exc:
            await self._fail_job(record, f"batch endpoint {record.endpoint}: {exc}")
            await self._close(record, endpoint=None, carry_on=False)
            return None
        if record.status in ("new", "uploading"):
            return await self._send(record, endpoint, api, carry_on)
        if not carry_on and record.status in OPEN_AT_PROVIDER and not record.cancel_sent:
            await api.cancel(record.provider_id)  # lines it still completes are applied (counted and priced)
            record.cancel_sent = True
            await batches.save(self.redis, record)
            log.info("job %s ended: batch %s cancelled", record.job_id, record.provider_id)
        found = await api.get(record.provider_id)
        record.status = found.get("status", record.status)
        record.output_file_id = found.get("output_file_id") or ""
        record.error_file_id = found.get("error_file_id") or ""
        counts = found.get("request_counts") or {}
        record.completed_lines, record.failed_lines = int(counts.get("completed", 0)), int(counts.get("failed", 0))
        if record.status not in FINISHED_AT_PROVIDER:
            await batches.save(self.redis, record)
            return endpoint.batch_poll_s
        if record.status == "failed":
            return await self._failed(record, endpoint, found, carry_on)
        await self._apply(record, endpoint, api, carry_on)
        return None

    async def _send(self, record: BatchRecord, endpoint: EndpointSettings, api: BatchAPI, carry_on: bool) -> float:
        """Upload the file and create the batch, or adopt the one a dead worker created."""
        if not carry_on:  # the job ended before its file went out: its lines go unsent
            await self._close(record, endpoint, carry_on=False)
            return 0.0
        if record.status == "uploading" and not record.provider_id:
            created_after = record.created_ms / 1000 - 300
            found = await api.find(METADATA_KEY, record.id, created_after)
            if found is not None:
                log.warning("batch %s: adopting %s, created by a worker that stopped", record.id, found["id"])
                await self._created(record, found)
                return endpoint.batch_poll_s
        record.status = "uploading"  # noted before anything is sent (see the module's docstring)
        await batches.save(self.redis, record)
        if not record.input_file_id:
            content = b"\n".join(await batches.file_lines(self.redis, record.id)) + b"\n"
            try:
                record.input_file_id = await api.upload(content, f"skillmix-{record.id}.jsonl")
            except ProviderRejected as exc:
                await self._fail_job(record, f"batch upload to {record.endpoint} refused: {exc}")
                await self._close(record, endpoint, carry_on=False)
                return 0.0
            await batches.save(self.redis, record)
        metadata = {METADATA_KEY: record.id, "skillmix_job": record.job_id}
        try:
            created = await api.create(record.input_file_id, metadata, self.settings.batch_window_h)
        except ProviderRejected as exc:
            await self._fail_job(record, f"batch creation at {record.endpoint} refused: {exc}")
            await self._close(record, endpoint, carry_on=False)
            return 0.0
        await self._created(record, created)
        return endpoint.batch_poll_s

    async def _created(self, record: BatchRecord, created: dict[str, Any]) -> None:
        record.provider_id = str(created["id"])
        record.status = created.get("status", "validating")
        record.submitted_ms = batches.now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.batch(record.id), record.model_dump_json())
            pipe.hincrby(keys.counters(record.job_id), "batch_lines", record.lines)
            await pipe.execute()

    async def _failed(
        self, record: BatchRecord, endpoint: EndpointSettings, found: dict[str, Any], carry_on: bool
    ) -> float | None:
        """A batch that failed validation: once more if the reason is transient, else the job fails with it."""
        errors = [e for e in (found.get("errors") or {}).get("data") or [] if isinstance(e, dict)]
        transient = bool(errors) and all(e.get("code") in TRANSIENT_VALIDATION for e in errors)
        if carry_on and transient and record.resubmits < 1:
            record.resubmits += 1
            record.provider_id, record.status = "", "new"  # the same input file, in a new batch
            await batches.save(self.redis, record)
            log.warning("batch %s failed validation (%s); submitting it again", record.id, errors[0].get("code"))
            return endpoint.batch_poll_s
        described = "; ".join(
            f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") is not None else "")
            for e in errors[:3]
        )
        more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
        await self._fail_job(
            record,
            f"batch {record.provider_id} at {record.endpoint} failed validation: {described or 'no reason'}{more}",
        )
        await self._close(record, endpoint, carry_on=False)
        return None

    async def _apply(self, record: BatchRecord, endpoint: EndpointSettings, api: BatchAPI, carry_on: bool) -> None:
        """Apply every line of a finished batch (completed, expired or cancelled), then close it."""
        group = Group(record.job_id, record.endpoint)
        file = await batches.file_lines(self.redis, record.id)
        requests = {orjson.loads(line)["custom_id"]: line.decode() for line in file}
        tries = {k.decode(): int(v) for k, v in (await self.redis.hgetall(group.tries)).items()}
        found: dict[str, LineOutcome] = {}
        for file_id in (record.output_file_id, record.error_file_id):
            if file_id:
                found |= read_lines(await api.content(file_id), record.endpoint, endpoint.model, tries)
        outcomes = []
        for cid, line in requests.items():
            outcome = found.get(cid) or LineOutcome(
                cid, "retry", "missing from the provider's result files", Usage(), reached_model=False
            )
            outcomes.append(dataclasses.replace(outcome, line=line) if outcome.kind == "retry" else outcome)
        applied = await batches.apply_lines(
            self.redis,
            group,
            record.id,
            outcomes,
            batch_prices(endpoint),
            endpoint.max_retries,
            self.settings.replay_ttl_s,
            carry_on,
        )
        ok = sum(o.kind == "ok" for o in outcomes)
        log.info("batch %s (%s) %s: %d of %d lines applied, %d answered", record.id, record.provider_id,
                 record.status, applied, len(outcomes), ok)  # fmt: skip
        await self._close(record, endpoint, carry_on=carry_on, api=api, release=False)

    async def _close(
        self,
        record: BatchRecord,
        endpoint: EndpointSettings | None,
        carry_on: bool,
        api: BatchAPI | None = None,
        release: bool = True,
    ) -> None:
        """Finish the batch: with ``release``, lines it still holds (never sent, or the job ended) go back to
        gathering or, the job over, are dropped; then its reservation goes and it stops being polled. Its
        files at the provider are deleted (best effort)."""
        group = Group(record.job_id, record.endpoint)
        held = [
            LineOutcome(cid, "retry", "not sent", Usage(), reached_model=False, line=line.decode())
            for line in (await batches.file_lines(self.redis, record.id) if release else [])
            for cid in [orjson.loads(line)["custom_id"]]
        ]
        if held:
            max_tries = endpoint.max_retries if endpoint is not None else 0
            await batches.apply_lines(
                self.redis, group, record.id, held, Prices(), max_tries, self.settings.replay_ttl_s, carry_on
            )
        record.status = "done"
        await batches.finish(self.redis, record)
        if api is not None:
            for file_id in (record.input_file_id, record.output_file_id, record.error_file_id):
                if file_id:
                    with contextlib.suppress(ProviderTransient, ProviderRejected):
                        await api.delete_file(file_id)

    async def _fail_job(self, record: BatchRecord, message: str) -> None:
        if await records.set_state(self.redis, record.job_id, JobState.FAILED, message):
            log.error("job %s failed: %s", record.job_id, message)

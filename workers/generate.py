"""The generate stage: run one chunk's items through its recipe and append each result to the job stream.

Items in a chunk run concurrently; the LLM client's limits bound the real concurrency. An item already
generated (a retried chunk) is skipped, and a failed item still produces a stream entry carrying its
reason, so curation always sees every planned item exactly once and the job can finish.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from arq.connections import ArqRedis

from schemas.examples import GeneratedItem, JudgeVerdict, Reason, WorkItem
from schemas.jobs import ChunkTask, JobRecord, JobState
from schemas.llm import Usage
from schemas.settings import Settings, get_settings
from store import keys, records
from store.budget import Prices
from store.connection import redis_trouble
from workers import drain
from workers.batch.parker import BatchParker, Parked, WaitingOnBatch
from workers.budget import charge, prices_for
from workers.curate.judge import JudgePanel
from workers.drain import WorkerDraining
from workers.llm.client import ChatClient, LLMClient, MeteredClient
from workers.llm.errors import JobStopped, LLMBadRequest, LLMError, LLMFatal
from workers.llm.replay import Recorder, ReplayCache, item_scope
from workers.recipes import ParseFailure, Recipe
from workers.tally import Tally
from workers.unit import EndpointDown, JobResumed

log = logging.getLogger(__name__)
STATE_POLL_S = 0.5
EMIT_GATHER_S = 0.25  # one transaction for the items finishing within this long (their answers are kept)


@dataclass
class ChunkOutcome:
    emitted: int = 0
    skipped: int = 0
    stopped: int = 0
    drained: int = 0  # items not started because this worker is stopping (``workers.drain``)
    parked: int = 0  # batch mode: items waiting for a batch's answer (``workers.batch``)
    unavailable: list[int] = field(default_factory=list)


async def generate_item(recipe: Recipe, llm: ChatClient, index: int, retries: int) -> tuple[GeneratedItem, int]:
    """Returns the record and how many parse failures it took; redraws the item on each parse failure."""
    usage, conversation, detail = Usage(), [], ""
    fields: dict[str, object] = {}
    for attempt in range(retries + 1):
        item = recipe.item(index, attempt)
        try:
            with item_scope(index, attempt):  # its answers are kept and replayed under this (llm.replay)
                result = await recipe.generate(item, llm)
        except ParseFailure as exc:
            usage, conversation, detail = usage.add(exc.usage), exc.conversation, exc.detail
            fields = exc.fields
            continue
        except LLMBadRequest as exc:
            usage = usage.add(exc.usage or Usage())
            return recipe.record_for(item, error=Reason.LLM_ERROR, error_detail=str(exc), usage=usage), attempt
        result.usage = result.usage.add(usage)
        return result, attempt
    last: WorkItem = recipe.item(index, retries)
    failed = recipe.record_for(
        last,
        error=Reason.UNPARSEABLE,
        error_detail=detail,
        usage=usage,
        conversation=conversation if recipe.record.spec.keep_conversation else [],
        **fields,
    )
    return failed, retries + 1


class _Emitter:
    """Coalesces a job's emits that are ready within ``EMIT_GATHER_S`` into one transaction.

    Items that finish together (a ``curate`` chunk reads its rows with no LLM call, so all its items do) cost
    one round trip instead of one each; an item finishing alone is sent alone, ``EMIT_GATHER_S`` later. Each
    entry still goes in with its 'generated' mark in the same transaction, and ``emit`` returns only once
    its transaction is done (or raises its error), exactly as when each item was sent on its own.
    """

    def __init__(self, redis: ArqRedis, job_id: str) -> None:
        self.redis, self.job_id = redis, job_id
        self.pending: list[tuple[bytes, int, int, asyncio.Future[None]]] = []
        self.flusher: asyncio.Task[None] | None = None

    async def emit(self, item: GeneratedItem, parse_failures: int) -> None:
        done = asyncio.get_running_loop().create_future()
        self.pending.append((orjson.dumps(item.model_dump(mode="json")), item.index, parse_failures, done))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush())  # runs after the emits already ready this turn
        await done

    async def _flush(self) -> None:
        await asyncio.sleep(EMIT_GATHER_S)  # items finish one by one at the endpoint's pace: let a few gather
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for payload, index, parse_failures, _ in batch:
                        pipe.xadd(keys.items(self.job_id), {"d": payload})
                        pipe.sadd(keys.generated(self.job_id), index)
                        if parse_failures:
                            pipe.hincrby(keys.counters(self.job_id), "parse_failures", parse_failures)
                    await pipe.execute()
            except BaseException as exc:
                for *_, done in batch + self.pending:
                    if not done.done():
                        done.set_exception(exc)
                self.pending = []
                if not isinstance(exc, Exception):
                    raise
                continue
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)
        _emitters.pop((id(self.redis), self.job_id), None)


_emitters: dict[tuple[int, str], _Emitter] = {}


async def emit(redis: ArqRedis, record: JobRecord, item: GeneratedItem, parse_failures: int) -> None:
    """Stream entry, 'generated' mark and parse-failure count in one transaction (usage is metered per call),
    shared with the job's other emits of the same loop turn (``_Emitter``)."""
    emitter = _emitters.get((id(redis), record.id))
    if emitter is None:
        emitter = _emitters[(id(redis), record.id)] = _Emitter(redis, record.id)
    await emitter.emit(item, parse_failures)


def metered_client(
    redis: ArqRedis,
    job_id: str,
    llm: ChatClient,
    tally: Tally,
    refuse_when_finished: bool = True,
    *,
    prices: Prices,
) -> MeteredClient:
    """The job's view of the endpoint: a call is refused once the job is cancelled or finished, and counted
    in the same synchronous step that hands its request to the kernel (``workers.tally``), so the job's
    ``llm_calls`` is what the endpoint saw even if this worker is killed mid-call; tokens land in the
    counters as each call returns. ``refuse_when_finished=False`` (review help on a finished math job)
    meters the same way but never refuses."""
    meta, counters = keys.meta(job_id), keys.counters(job_id)
    # A fleet limiter reads the job's state in the same script that books the call's turn (no extra round
    # trip); otherwise the state is read here, right before the request is written.
    gated = refuse_when_finished and bool(getattr(llm, "gates", False))

    async def on_send(attempt: int) -> None:
        drain.refuse_new_calls(refuse_when_finished)  # a stopping worker sends nothing new (workers.drain)
        await tally.ensure()
        if refuse_when_finished and not gated:
            state = await redis.hget(meta, "state")
            if state not in (b"queued", b"running"):
                raise JobStopped(job_id)
        # nothing below may await: the request's headers are written right after this returns
        tally.incr(counters, *(("llm_calls", "retries") if attempt > 1 else ("llm_calls",)))

    def on_usage(usage: Usage) -> None:
        # tokens, 429s and cost (at ``prices``, this endpoint's) in one fire-and-forget script that also
        # pauses the job at its budget (``workers.budget``): no round trip on the hot path
        charge(tally, job_id, usage, prices)

    return MeteredClient(llm, on_send, on_usage, gate=meta if gated else None)


async def run_chunk(
    redis: ArqRedis,
    record: JobRecord,
    recipe: Recipe,
    client: ChatClient,
    task: ChunkTask,
    final_try: bool,
    tally: Tally,
    judge_client: ChatClient | None = None,
    settings: Settings | None = None,
    more_judges: Sequence[ChatClient] = (),
) -> ChunkOutcome:
    """Generate the chunk's missing items and emit them; with ``quality.judge`` set (and quality on),
    ``judge_client`` (the judge endpoint's client) grades each item that came out without an error, with
    ``more_judges`` (the other ``quality.judge.endpoints``) beside it, each on the same metered path.
    Every answer is kept as it arrives and a rerun of the chunk replays it (``workers.llm.replay``)."""
    outcome = ChunkOutcome()
    state = await records.get_state(redis, record.id)
    if state is None or state.finished or state is JobState.PAUSED:  # ended or at its budget: start nothing
        outcome.skipped = task.stop - task.start  # (resuming a paused job enqueues its chunks again)
        return outcome
    indexes = list(range(task.start, task.stop))
    done = await redis.smismember(keys.generated(record.id), indexes)
    todo = [i for i, d in zip(indexes, done, strict=True) if not d]
    outcome.skipped = len(indexes) - len(todo)
    if not todo:
        return outcome
    await records.set_state(redis, record.id, JobState.RUNNING, only_from=JobState.QUEUED)
    replay = await ReplayCache.load(redis, tally, record.id, task.start, settings or get_settings())
    client = Recorder(client)  # keeps each fresh answer the moment it arrives, before metering awaits
    judge_client = Recorder(judge_client) if judge_client is not None else None

    def metered(recorder: ChatClient) -> ChatClient:
        """Online: the metered path. Batch mode: each call parks as a line of the job's batch file."""
        base = getattr(recorder, "inner", None)
        if record.spec.mode == "batch" and isinstance(base, LLMClient):
            return BatchParker(redis, record.id, base, task.arq_id)
        return metered_client(redis, record.id, recorder, tally, prices=prices_for(recorder, record))

    llm = metered(client)
    await recipe.prepare(redis, todo)  # what the items read from storage (most recipes: nothing)
    judge_settings = getattr(record.spec, "quality", None)
    judge_settings = judge_settings.judge if judge_settings is not None and judge_settings.enabled else None
    judge: JudgePanel | None = None
    # answers this chunk already got (a rerun) are replayed: no call, no metering, no second payment
    if judge_settings is not None:
        # no endpoint of its own: the job's endpoint judges. Each judge endpoint: same job counters, same
        # stop on cancel, its own endpoint's prices
        seats = [judge_client or client, *(Recorder(c) for c in more_judges)]
        judge = JudgePanel.for_clients(
            record, judge_settings, [(seat, replay.replaying(metered(seat), seat)) for seat in seats]
        )
    elif judge_client is not None:  # a recipe that calls its own judge (eval-math): metered the same way
        recipe.judge_llm = metered(judge_client)
        recipe.judge_json = bool(getattr(getattr(judge_client, "endpoint", None), "json_schema", False))
    replay_llm = replay.replaying(llm, client)
    if judge is None and judge_client is not None and recipe.judge_llm is not None:
        recipe.judge_llm = replay.replaying(recipe.judge_llm, judge_client)

    async def one(index: int) -> None:
        try:
            item, failures = await generate_item(recipe, replay_llm, index, record.spec.item_retries)
        except Parked:  # batch mode: a request of it waits in a batch file; the unit is woken when answered
            outcome.parked += 1
            return
        except JobStopped:
            outcome.stopped += 1
            return
        except WorkerDraining:  # like an unavailable item, but the chunk goes back at once (below)
            outcome.drained += 1
            return
        except LLMFatal as exc:
            await records.set_state(redis, record.id, JobState.FAILED, f"endpoint {record.endpoint}: {exc}")
            return
        except LLMError as exc:
            if not final_try:
                outcome.unavailable.append(index)
                return
            item = recipe.record_for(recipe.item(index), error=Reason.LLM_ERROR, error_detail=str(exc))
            failures = 0
        except Exception as exc:  # a recipe bug on this item: reject the item, never loop its chunk for ever
            if redis_trouble(exc):
                raise  # Redis away: the chunk runs again (see rerun_on_redis_trouble)
            log.exception("item %d of job %s failed", index, record.id)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            item = recipe.record_for(recipe.item(index), error=Reason.INTERNAL_ERROR, error_detail=detail)
            failures = 0
        if judge is not None and item.error is None:
            try:
                with item_scope(index, "judge"):
                    item.judge = await judge.judge(item)
            except Parked:
                outcome.parked += 1
                return
            except JobStopped:
                outcome.stopped += 1
                return
            except WorkerDraining:
                outcome.drained += 1
                return
            except LLMFatal as exc:
                message = f"judge endpoint {judge.endpoint_name}: {exc}"
                await records.set_state(redis, record.id, JobState.FAILED, message)
                return
            except LLMError as exc:  # the judge endpoint is down: like the generator's, retry the chunk
                if not final_try:
                    outcome.unavailable.append(index)
                    return
                item.judge = JudgeVerdict(
                    verdict=False, reason=f"judge call failed: {exc}"[:300], endpoint=judge.endpoint_name
                )
        await emit(redis, record, item, failures)
        outcome.emitted += 1

    tasks = [asyncio.create_task(one(i)) for i in todo]
    finished = asyncio.Event()
    watcher = asyncio.create_task(_stop_when_finished(redis, record.id, tasks, finished))
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        finished.set()  # the watcher ends at once by this flag (the job's shared poll does the Redis reads)
        for t in tasks:
            t.cancel()
        await asyncio.wait([watcher])
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    outcome.skipped += sum(isinstance(r, asyncio.CancelledError) for r in results) + outcome.stopped
    if outcome.drained:  # before EndpointDown: a stopping worker hands back, it does not back off
        raise WorkerDraining(f"{outcome.drained} items of {task.arq_id} not started: this worker is stopping")
    if outcome.parked and await records.get_state(redis, record.id) in (JobState.QUEUED, JobState.RUNNING):
        raise WaitingOnBatch(f"{outcome.parked} items of {task.arq_id} wait on batch answers")
    if outcome.unavailable:
        raise EndpointDown(f"{len(outcome.unavailable)} items of {task.arq_id} could not reach the endpoint")
    if outcome.stopped and await records.get_state(redis, record.id) in (JobState.QUEUED, JobState.RUNNING):
        raise JobResumed(f"{outcome.stopped} items of {task.arq_id} were refused while the job was paused")
    if outcome.emitted == len(todo):
        replay.drop()  # every item generated: nothing of this chunk is asked again
    return outcome


class _JobWatch:
    """One state poll per job per process, however many of its chunks run here (each poll is a round trip)."""

    def __init__(self, redis: ArqRedis, job_id: str) -> None:
        self.redis, self.job_id = redis, job_id
        self.stopped = asyncio.Event()  # the job is cancelled, completed, failed or gone
        self.users = 0
        self.task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        try:
            while self.users > 0:  # ends by its users leaving, never by a cancel (redis-py can swallow those)
                try:
                    state = await records.get_state(self.redis, self.job_id)
                except Exception as exc:  # Redis away: the chunks' calls fail on their own; look again
                    log.debug("job %s: state poll failed: %s", self.job_id, exc)
                else:
                    if state is None or state.finished:
                        self.stopped.set()
                        return
                await asyncio.sleep(STATE_POLL_S)
        finally:
            if _watches.get((id(self.redis), self.job_id)) is self:
                del _watches[(id(self.redis), self.job_id)]


_watches: dict[tuple[int, str], _JobWatch] = {}


async def _stop_when_finished(
    redis: ArqRedis, job_id: str, tasks: list[asyncio.Task[None]], finished: asyncio.Event
) -> None:
    """A cancelled or completed job stops paying for calls: in-flight items are cancelled within a poll.

    (No new call leaves even before that: ``metered`` refuses it.)
    """
    watch = _watches.get((id(redis), job_id))
    if watch is None or watch.task.done() or watch.task.get_loop() is not asyncio.get_running_loop():
        watch = _watches[(id(redis), job_id)] = _JobWatch(redis, job_id)
    watch.users += 1
    waits = [asyncio.ensure_future(finished.wait()), asyncio.ensure_future(watch.stopped.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if watch.stopped.is_set() and not finished.is_set():
            for t in tasks:
                t.cancel()
    finally:
        watch.users -= 1
        for w in waits:
            w.cancel()

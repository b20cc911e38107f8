"""The generate stage: run one chunk's items through its recipe and append each result to the job stream.

Items in a chunk run concurrently; the LLM client's limits bound the real concurrency. An item already
generated (a retried chunk) is skipped, and a failed item still produces a stream entry carrying its
reason, so curation always sees every planned item exactly once and the job can finish.
"""

import asyncio
import logging
from dataclasses import dataclass, field

import orjson
from arq.connections import ArqRedis
from redis.asyncio.client import Pipeline

from schemas.examples import GeneratedItem, Reason, WorkItem
from schemas.jobs import ChunkTask, JobRecord, JobState
from schemas.llm import Usage
from workers import jobstore, keys
from workers.llm.client import ChatClient, MeteredClient
from workers.llm.errors import LLMBadRequest, LLMError, LLMFatal
from workers.recipes import ParseFailure, Recipe

log = logging.getLogger(__name__)
STATE_POLL_S = 0.5


class EndpointDown(Exception):
    """Some items could not reach the endpoint even after the client's retries: retry the chunk later."""


@dataclass
class ChunkOutcome:
    emitted: int = 0
    skipped: int = 0
    unavailable: list[int] = field(default_factory=list)


async def generate_item(recipe: Recipe, llm: ChatClient, index: int, retries: int) -> tuple[GeneratedItem, int]:
    """Returns the record and how many parse failures it took; redraws the item on each parse failure."""
    usage, conversation, detail = Usage(), [], ""
    for attempt in range(retries + 1):
        item = recipe.item(index, attempt)
        try:
            result = await recipe.generate(item, llm)
        except ParseFailure as exc:
            usage, conversation, detail = usage.add(exc.usage), exc.conversation, exc.detail
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
    )
    return failed, retries + 1


def _count_usage(pipe: Pipeline, job_id: str, usage: Usage) -> None:
    for name, value in (
        ("llm_calls", usage.calls),
        ("retries", usage.retries),
        ("rate_limited", usage.rate_limited),
        ("prompt_tokens", usage.prompt_tokens),
        ("completion_tokens", usage.completion_tokens),
    ):
        if value:
            pipe.hincrby(keys.counters(job_id), name, value)


async def emit(redis: ArqRedis, record: JobRecord, item: GeneratedItem, parse_failures: int) -> None:
    """Stream entry, 'generated' mark and parse-failure count in one transaction (usage is metered per call)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.items(record.id), {"d": orjson.dumps(item.model_dump(mode="json"))})
        pipe.sadd(keys.generated(record.id), item.index)
        if parse_failures:
            pipe.hincrby(keys.counters(record.id), "parse_failures", parse_failures)
        await pipe.execute()


def metered(redis: ArqRedis, job_id: str, llm: ChatClient) -> MeteredClient:
    """The job's view of the endpoint: every call's usage lands in the job counters as it finishes."""

    async def count(usage: Usage) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            _count_usage(pipe, job_id, usage)
            await pipe.execute()

    return MeteredClient(llm, count)


async def run_chunk(
    redis: ArqRedis, record: JobRecord, recipe: Recipe, client: ChatClient, task: ChunkTask, final_try: bool
) -> ChunkOutcome:
    outcome = ChunkOutcome()
    llm = metered(redis, record.id, client)
    indexes = list(range(task.start, task.stop))
    done = await redis.smismember(keys.generated(record.id), indexes)
    todo = [i for i, d in zip(indexes, done, strict=True) if not d]
    outcome.skipped = len(indexes) - len(todo)
    await jobstore.set_state(redis, record.id, JobState.RUNNING, only_from=JobState.QUEUED)

    async def one(index: int) -> None:
        try:
            item, failures = await generate_item(recipe, llm, index, record.spec.item_retries)
        except LLMFatal as exc:
            await jobstore.set_state(redis, record.id, JobState.FAILED, f"endpoint {record.endpoint}: {exc}")
            return
        except LLMError as exc:
            if not final_try:
                outcome.unavailable.append(index)
                return
            item = recipe.record_for(recipe.item(index), error=Reason.LLM_ERROR, error_detail=str(exc))
            failures = 0
        await emit(redis, record, item, failures)
        outcome.emitted += 1

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in todo]
        watcher = group.create_task(_stop_when_finished(redis, record.id, tasks))
        await asyncio.wait(tasks)
        watcher.cancel()
    outcome.skipped += sum(t.cancelled() for t in tasks)
    if outcome.unavailable:
        raise EndpointDown(f"{len(outcome.unavailable)} items of {task.arq_id} could not reach the endpoint")
    return outcome


async def _stop_when_finished(redis: ArqRedis, job_id: str, tasks: list[asyncio.Task[None]]) -> None:
    """A cancelled or completed job stops paying for calls: in-flight items are cancelled within a poll."""
    while True:
        state = await jobstore.get_state(redis, job_id)
        if state is None or state.finished:
            for t in tasks:
                t.cancel()
            return
        await asyncio.sleep(STATE_POLL_S)

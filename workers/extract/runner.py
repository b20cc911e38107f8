"""Extraction jobs on the spine's queue: one time-boxed arq step at a time, each enqueueing the next.

A step is one phase unit (``PhaseTask``) on the job runner (``workers.runner``), registered below for both
extraction recipes: it works until its slice of time is spent (well
inside the worker's job timeout), saving its place in Redis, then enqueues the next step under a
deterministic id with a fair-share score. A killed worker's step is retried like any chunk and resumes from
the saved place, replaying the answers it already got; calls that fail even after the client's retries make
the runner retry the step later, and on the last try their rows are reported unlabelled instead. Its calls
take the runner's metered path: refused once the job is cancelled or paused, counted at send, charged to
the job's budget, refused on a draining worker (the step is handed back).

Dataset phases: label -> merge -> map -> finish. Model-only: topics -> skills -> query types -> finish.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from arq.connections import ArqRedis
from redis.asyncio import Redis

from schemas.extract import EXEMPLAR_CHARS, ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.jobs import JobRecord, JobState, PhaseTask
from schemas.settings import EndpointSettings, Settings
from schemas.skills import Exemplar, Skill, SkillSet, SkillSetCreate
from store import keys, queue, records
from store.datasets import DatasetError, resolve_path
from store.extraction import ExtractStore
from store.skill_sets import save_skill_set
from workers.batch.parker import Parked, WaitingOnBatch
from workers.extract.agnostic import Agnostic, ask_query_types
from workers.extract.ask import Asker
from workers.extract.label import Labeller
from workers.extract.mapping import Mapper, exemplar_fields
from workers.extract.merge import Merger
from workers.extract.phase import MAX_PARALLEL_CALLS, ExtractFailed, Phase
from workers.extract.reader import DatasetReader
from workers.llm.client import ChatClient
from workers.llm.errors import JobStopped, LLMFatal
from workers.llm.replay import item_scope
from workers.meter import job_llm, replay_cache
from workers.unit import Resources, UnitFailed, register_units

SLICE_MAX_S = 60.0  # a step hands over after this long (or a quarter of the job timeout, if shorter)
HARD_LIMIT_FRACTION = 0.8  # of the job timeout: past it the step is cut and its window redone next step
BATCH_WINDOW_CALLS = 1000  # batch mode: calls a window parks at once (a round trip to the provider each)
REPLAY_SCOPE = "extract"  # the job's kept answers (``keys.replay``): dropped whenever a step ends cleanly


async def enqueue_step(redis: ArqRedis, job_id: str, step: int) -> None:
    await queue.enqueue_steps(redis, job_id, [PhaseTask(job_id=job_id, step=step)])


async def run_unit(ctx: dict[str, Any], task: PhaseTask, final_try: bool) -> dict[str, Any]:
    """One step of an extraction job (the runner records it as started and maps what it raises); enqueues the
    next unless finished."""
    res: Resources = ctx["resources"]
    redis: ArqRedis = ctx["redis"]
    record = await records.load_record(redis, task.job_id)
    state = await records.get_state(redis, task.job_id)
    if record is None or state is None or state.finished or state is JobState.PAUSED:
        return {"step": task.step, "skipped": True}  # (resuming a paused job enqueues its next step)
    await records.set_state(redis, record.id, JobState.RUNNING, only_from=JobState.QUEUED)
    try:
        finished = await advance(res, redis, record, final_try, unit=task.arq_id)
    except Parked as exc:  # batch mode: the step waits in the queue for its batch's answers, then replays
        raise WaitingOnBatch(f"{task.arq_id} waits on batch answers") from exc
    except JobStopped:  # a call was refused: the job was cancelled or paused at its budget
        finished = False
    except (ExtractFailed, DatasetError) as exc:
        raise UnitFailed(str(exc)) from exc
    except LLMFatal as exc:
        raise UnitFailed(f"endpoint {record.endpoint}: {exc}") from exc
    # anything else is the runner's to retry like any step's (and the watchdog's to fail after its redrives)
    if not finished and await records.get_state(redis, record.id) in (JobState.QUEUED, JobState.RUNNING):
        await enqueue_step(redis, record.id, task.step + 1)
    return {"step": task.step, "finished": finished}


async def advance(
    res: Resources,
    redis: Redis,
    record: JobRecord,
    final_try: bool,
    slice_s: float = SLICE_MAX_S,
    unit: str | None = None,
) -> bool:
    """One step's work on the runner's metered path; True once the job has finished.

    Every call is metered (state check before it leaves, counted at send, charged to the budget) and its
    answer kept: a step that is killed, cut or stopped leaves its answers for the next run to replay; a step
    that ends cleanly has stored everything it was answered, so its kept answers go.
    """
    replay = await replay_cache(res, redis, record.id, REPLAY_SCOPE)
    llm = await job_llm(res, record, replay, unit=unit)  # a batch job's step (``unit``) parks its calls
    endpoint = (await res.client(record.endpoint)).endpoint
    timeout = res.settings.chunk_timeout_s
    try:
        async with asyncio.timeout(timeout * HARD_LIMIT_FRACTION):
            deadline = time.monotonic() + min(slice_s, timeout / 4)
            with item_scope(0, REPLAY_SCOPE):
                finished = await run_step(redis, res.settings, record, llm, endpoint, deadline, final_try)
    except TimeoutError:
        return False
    replay.drop()
    return finished


async def run_step(
    redis: Redis,
    settings: Settings,
    record: JobRecord,
    llm: ChatClient,
    endpoint: EndpointSettings,
    deadline: float,
    final_try: bool,
) -> bool:
    """Advance the job as far as the deadline allows; True once the job has finished."""
    spec = record.spec
    assert isinstance(spec, ExtractAgnosticSpec | ExtractDatasetSpec)
    store = ExtractStore(redis, record.id)
    phase = Phase(
        redis=redis,
        record=record,
        store=store,
        asker=Asker(llm, store, spec, json_schema=endpoint.json_schema),
        deadline=deadline,
        final_try=final_try,
        # batch mode: a window's calls all go into one batch file (each window is a round)
        parallel=BATCH_WINDOW_CALLS if spec.mode == "batch" else min(MAX_PARALLEL_CALLS, endpoint.max_concurrency),
    )
    if isinstance(spec, ExtractAgnosticSpec):
        agnostic = Agnostic(phase)
        if not await agnostic.run():
            return False
        return await finish(phase, await agnostic.skill_set())
    return await run_dataset(phase, settings.data_dir)


async def run_dataset(phase: Phase, data_dir: Path) -> bool:
    spec, store = phase.dataset, phase.store
    path = resolve_path(data_dir, spec.source.path)
    phase.reader = DatasetReader(path, spec.source, max(spec.max_row_chars, EXEMPLAR_CHARS))
    current = (await store.state()).get("phase", "label")
    # Each phase makes progress before it checks the clock, so every step moves the job on.
    if current == "label":
        if not await Labeller(phase).run():
            return False
        current = "merge"
        await store.set_state(phase=current)
    if current == "merge":
        if not await Merger(phase).run():
            return False
        current = "map"
        await store.set_state(phase=current)
        if await phase.should_pause():
            return await _cancelled(phase)
    coarse: list[dict[str, str]] = orjson.loads(await store.coarse() or b"[]")
    if current == "map":
        if not await Mapper(phase, coarse).run():
            return False
        await store.set_state(phase="finish")
    return await finish(phase, await dataset_skill_set(phase, coarse))


async def _cancelled(phase: Phase) -> bool:
    state = await records.get_state(phase.redis, phase.record.id)
    return state is None or state.finished


async def dataset_skill_set(phase: Phase, coarse: list[dict[str, str]]) -> SkillSetCreate:
    """Coarse skills that got rows, most frequent first, with their first rows as exemplars."""
    spec, store = phase.dataset, phase.store
    freq = await store.frequencies()
    described = {c["name"]: c.get("description", "") for c in coarse}
    names = sorted((n for n in freq if freq[n] > 0), key=lambda n: (-freq[n], n))
    if not names:
        raise ExtractFailed("no row was mapped to a coarse skill; see the unlabelled rows for why")
    skills = [
        _skill(n, described.get(n, ""), await store.exemplars(n), freq[n], spec.source.row_format == "math")
        for n in names
    ]
    unused = len(described) - len(names)
    if unused > 0:
        await phase.note(f"{unused} coarse skills got no rows and were left out")
    samples = [ex for depth in range(2) for s in skills for ex in s.examples[depth : depth + 1]]
    query_types = await ask_query_types(phase, spec.description or "the requests in this dataset", samples[:24])
    counters = await records.read_counters(phase.redis, phase.record)
    description = spec.description or (
        f"Extracted from {spec.source.path} ({spec.rows} rows, {counters.accepted} mapped, "
        f"{counters.rejected} unlabelled) by {phase.record.model}."
    )
    return SkillSetCreate(name=spec.skill_set_name, description=description, skills=skills, query_types=query_types)


def _skill(name: str, description: str, stored: list[str], frequency: int, math: bool) -> Skill:
    """A MATH dataset's skill keeps each exemplar's problem and solution (its examples are the problems)."""
    fields = [f for f in map(exemplar_fields, stored) if f is not None] if math else []
    if not fields:
        return Skill(name=name, description=description, examples=stored, frequency=frequency)
    exemplars = [Exemplar.model_validate(f) for f in fields if f["problem"].strip()]
    examples = [e.problem for e in exemplars]
    return Skill(name=name, description=description, examples=examples, exemplars=exemplars, frequency=frequency)


async def finish(phase: Phase, create: SkillSetCreate) -> bool:
    """Save the new version, record it as the job's result, complete the job (once)."""
    meta = keys.meta(phase.record.id)
    if await phase.redis.hget(meta, "result") is None:
        saved: SkillSet = await save_skill_set(phase.redis, phase.record.team, create)
        await phase.redis.hset(meta, "result", saved.ref)
        ref = saved.ref
    else:
        ref = (await phase.redis.hget(meta, "result")).decode()
    counters = await records.read_counters(phase.redis, phase.record)
    message = f"skill set {ref}: {len(create.skills)} skills, {len(create.query_types)} query types"
    if isinstance(phase.spec, ExtractDatasetSpec):
        message += f"; {counters.accepted} rows mapped, {counters.rejected} unlabelled"
    notes = await phase.store.notes()
    if notes:
        message += "; " + "; ".join(notes)
    await records.set_state(phase.redis, phase.record.id, JobState.COMPLETED, message)
    return True


for _spec in (ExtractAgnosticSpec, ExtractDatasetSpec):  # the runner finds the extraction's steps here
    register_units(_spec.model_fields["recipe"].default, phase=run_unit)

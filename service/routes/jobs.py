"""Jobs: submit, inspect, stream examples, cancel, export."""

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from schemas.base import MAX_INT
from schemas.jobs import MAX_COUNT, GenerationSpec, JobPatch, JobRecord, JobsPublic, JobStatus
from schemas.recipes import has_review_queue
from schemas.sampling import Coverage, coverage
from service.auth import CallerDep, OwnedJob, WriterDep
from service.deps import RedisDep, SettingsDep
from service.errors import CONFLICT, NOT_FOUND, OVER_QUOTA, conflict
from service.export import (
    FILE_SUFFIXES,
    MEDIA_TYPES,
    REVIEW_STATES,
    ExportFormat,
    ReviewFilter,
    Split,
    heldout_positions,
    iter_file,
    parquet_export,
    render,
    split_examples,
)
from service.idempotency import RESPONSES as IDEMPOTENT
from service.idempotency import IdempotencyKey, create_job, digest
from service.profiles import resolve_profile
from service.recipes import SUBMITTERS, RouteContext
from store import audit, endpoints, jobs, records
from store import review as review_store
from store.examples import count as count_examples
from store.examples import iter_examples, iter_raw

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MAX_OFFSET = 10**12  # Redis ranges are 64-bit; far past any real job count


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobStatus, responses={**OVER_QUOTA, **IDEMPOTENT})
async def submit_job(
    request: Request,
    spec: Annotated[GenerationSpec, Body()],
    redis: RedisDep,
    settings: SettingsDep,
    caller: WriterDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Any recipe registered as submit-able here; what it needs resolved at submit, its spec resolves. The job
    belongs to the key's team."""
    job_id = uuid.uuid4().hex

    async def create() -> JobStatus:
        own = SUBMITTERS.get(type(spec))
        if own is not None:  # e.g. a dataset surveyed first: the same path as its own route
            return await own(spec, job_id, redis, settings, caller.team)
        return await jobs.submit(redis, await _record(spec, job_id, redis, settings, caller.team))

    body_digest = digest(await request.body())
    return await create_job(request, redis, settings, caller, idempotency_key, body_digest, job_id, create)


async def _record(spec: GenerationSpec, job_id: str, redis: RedisDep, settings: SettingsDep, team: str) -> JobRecord:
    """The job as stored: its endpoints resolved (a 422 naming the field at submit, not in the worker; a batch
    job's, each one serving batches); a ``quality.profile`` replaced by the team's saved judge settings."""
    spec = await resolve_profile(redis, team, spec)
    endpoint_name = spec.endpoint or settings.default_endpoint
    # UnknownEndpoint / NoBatch: a 422 naming the field
    endpoint = await endpoints.resolve(redis, settings, endpoint_name, mode=spec.mode)
    for field, name in spec.extra_endpoints().items():  # a judge, a step checker: fail at submit, not in the worker
        await endpoints.resolve(redis, settings, name, field, spec.mode)
    prepared = await spec.prepare_submit(RouteContext(redis, settings, team, spec.mode))
    spec = prepared.spec
    return JobRecord(
        id=job_id,
        spec=spec,
        team=team,
        skill_set=prepared.skill_set,
        endpoint=endpoint_name,
        model=endpoint.model,
        chunk_size=spec.chunk_size or settings.chunk_size,
        usd_per_mtok_prompt=endpoint.usd_per_mtok_prompt,
        usd_per_mtok_completion=endpoint.usd_per_mtok_completion,
        created_at=datetime.now(UTC),
    )


async def _status(redis: RedisDep, record: JobRecord) -> JobStatus:
    """The job's status, from the record ownership already loaded (a record never changes: not read again)."""
    found = await records.get_status(redis, record.id, record)
    assert found is not None  # (None only when there is no record)
    return found


@router.get("", response_model=JobsPublic)
async def list_jobs(
    redis: RedisDep,
    caller: CallerDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsPublic:
    """The caller's team's jobs, newest first (an admin key: every team's)."""
    ids, total = await records.list_job_ids(redis, offset, limit, None if caller.is_admin else caller.team)
    found = [await records.get_status(redis, i) for i in ids]
    return JobsPublic(data=[s for s in found if s is not None], count=total)


@router.get("/{job_id}", responses=NOT_FOUND, response_model=JobStatus)
async def get_job(job_id: str, record: OwnedJob, redis: RedisDep) -> JobStatus:
    return await _status(redis, record)


@router.post("/{job_id}/cancel", responses=NOT_FOUND, response_model=JobStatus)
async def cancel_job(job_id: str, record: OwnedJob, redis: RedisDep, caller: WriterDep) -> JobStatus:
    state = await records.get_state(redis, job_id)
    if state is not None and not state.finished and await jobs.cancel(redis, job_id):
        await audit.record(redis, caller, "job.cancelled", job_id, team=record.team)
    return await _status(redis, record)


@router.patch("/{job_id}", responses={**NOT_FOUND, **CONFLICT}, response_model=JobStatus)
async def patch_job(job_id: str, record: OwnedJob, patch: JobPatch, redis: RedisDep, caller: WriterDep) -> JobStatus:
    """Change a job's spending budget while it runs: the limits given replace the job's (``null`` removes
    one), the others stay. Raising the budget of a job paused at it resumes it; lowering it below what was
    already spent pauses it now."""
    state = await records.get_state(redis, job_id)
    if state is None or state.finished:
        conflict(f"job {job_id} is {state.value if state else 'gone'}; a finished job's budget cannot change")
    await jobs.patch_budget(redis, record, patch.budget, state)
    await audit.record(redis, caller, "job.budget", job_id, patch.budget.model_dump_json(), team=record.team)
    return await _status(redis, record)


@router.post("/{job_id}/resume", responses={**NOT_FOUND, **CONFLICT}, response_model=JobStatus)
async def resume_job(job_id: str, record: OwnedJob, redis: RedisDep, caller: WriterDep) -> JobStatus:
    """Carry on with a job paused at its budget (once the budget has room again): every planned chunk with
    items still to generate is enqueued again."""
    await jobs.resume(redis, record)  # NotPaused, BudgetExhausted: 409s that say why
    await audit.record(redis, caller, "job.resumed", job_id, team=record.team)
    return await _status(redis, record)


@router.get("/{job_id}/examples", responses=NOT_FOUND, response_class=StreamingResponse)
async def stream_examples(
    job_id: str, record: OwnedJob, redis: RedisDep, status: Literal["accepted", "rejected"] = "accepted"
) -> StreamingResponse:
    """NDJSON, one stored example per line, streamed bucket by bucket."""

    async def lines() -> AsyncIterator[bytes]:
        async for raw in iter_raw(redis, job_id, status):
            yield raw + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/{job_id}/export", responses=NOT_FOUND, response_class=StreamingResponse)
async def export_job(
    job_id: str,
    record: OwnedJob,
    redis: RedisDep,
    format: ExportFormat = ExportFormat.JSONL,
    split: Split | None = None,
    heldout: Annotated[int, Query(ge=1, le=MAX_COUNT)] = 100,
    heldout_seed: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    state: Annotated[
        ReviewFilter | None, Query(description="math jobs: by review state (default accepted); others: ignored")
    ] = None,
) -> StreamingResponse:
    """The accepted examples as alpaca / sharegpt (JSON arrays), jsonl (full records) or parquet (full records,
    typed columns). Parquet is written to a temporary file one storage bucket at a time, then streamed back.

    ``split=heldout`` serves ``heldout`` examples drawn by ``heldout_seed`` (for checkpoint selection),
    ``split=train`` all the others: disjoint, together every example, the same on every call.

    Math jobs export by review state (``state``, default ``accepted``: only questions a reviewer accepted),
    with the reviewers' edits applied."""
    name = job_id if split is None else f"{job_id}.{split.value}"
    headers = {"content-disposition": f'attachment; filename="{name}.{FILE_SUFFIXES[format]}"'}
    examples = iter_examples(redis, job_id, "accepted")
    review_states = REVIEW_STATES[state or ReviewFilter.ACCEPTED]
    reviewed = has_review_queue(record.spec.recipe)
    if reviewed:
        examples = review_store.iter_reviewed(redis, job_id, review_states)
    if split is not None:
        total = await count_examples(redis, job_id, "accepted")
        if reviewed:
            total = await review_store.count_reviewed(redis, job_id, review_states)
        examples = split_examples(examples, heldout_positions(total, heldout, heldout_seed), split)
    if format is not ExportFormat.PARQUET:
        return StreamingResponse(render(examples, format), media_type=MEDIA_TYPES[format], headers=headers)
    path, size = await parquet_export(examples, prefix=f"skillmix-export-{job_id}-")
    headers["content-length"] = str(size)
    cleanup = BackgroundTask(path.unlink, missing_ok=True)  # iter_file deletes it too, once read to the end
    return StreamingResponse(iter_file(path), media_type=MEDIA_TYPES[format], headers=headers, background=cleanup)


@router.get("/{job_id}/coverage", responses=NOT_FOUND, response_model=Coverage)
async def job_coverage(job_id: str, record: OwnedJob, redis: RedisDep) -> Coverage:
    """Skill and skill-pair coverage of the accepted examples."""
    all_skills = [s.name for s in record.skill_set.skills] if record.skill_set else []
    draws = [(e.skills, e.query_type) async for e in iter_examples(redis, job_id, "accepted")]
    return coverage(draws, all_skills)

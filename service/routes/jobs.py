"""Jobs: submit, inspect, stream examples, cancel, export."""

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from schemas.jobs import GenerationSpec, InstructJobSpec, JobRecord, JobsPublic, JobState, JobStatus
from schemas.skills import SkillSet, parse_skill_set_ref
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, not_found, unprocessable
from service.export import FILE_SUFFIXES, MEDIA_TYPES, ExportFormat, iter_file, parquet_export, render
from workers import endpoints, jobstore
from workers.curate.store import iter_examples, iter_raw
from workers.sampler import Coverage, coverage
from workers.skillsets import get_skill_set, save_skill_set, versions

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MAX_OFFSET = 10**12  # Redis ranges are 64-bit; far past any real job count


async def _resolve_skill_set(redis: RedisDep, spec: InstructJobSpec) -> SkillSet:
    if not isinstance(spec.skill_set, str):
        return await save_skill_set(redis, spec.skill_set)
    name, version = parse_skill_set_ref(spec.skill_set)
    found = await get_skill_set(redis, name, version)
    if found is None:
        have = await versions(redis, name)
        hint = f"versions of {name!r}: {have}" if have else "create it with POST /v1/skill-sets"
        unprocessable("skill_set", f"unknown skill set {spec.skill_set!r}; {hint}")
    if len(found.skills) < spec.k:
        unprocessable("k", f"k={spec.k} but skill set {found.ref} has only {len(found.skills)} skills")
    return found


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobStatus)
async def submit_job(spec: GenerationSpec, redis: RedisDep, settings: SettingsDep) -> JobStatus:
    endpoint_name = spec.endpoint or settings.default_endpoint
    try:
        endpoint = await endpoints.resolve(redis, settings, endpoint_name)
    except endpoints.UnknownEndpoint as exc:
        unprocessable("endpoint", str(exc))
    skill_set = await _resolve_skill_set(redis, spec) if isinstance(spec, InstructJobSpec) else None
    record = JobRecord(
        id=uuid.uuid4().hex,
        spec=spec,
        skill_set=skill_set,
        endpoint=endpoint_name,
        model=endpoint.model,
        chunk_size=spec.chunk_size or settings.chunk_size,
        usd_per_mtok_prompt=endpoint.usd_per_mtok_prompt,
        usd_per_mtok_completion=endpoint.usd_per_mtok_completion,
        created_at=datetime.now(UTC),
    )
    first = min(spec.count, spec.budget)
    await jobstore.create_job(redis, record, planned=first)
    await jobstore.enqueue_planned(redis, record, 0, first)
    return await _status(redis, record.id)


async def _status(redis: RedisDep, job_id: str) -> JobStatus:
    found = await jobstore.get_status(redis, job_id)
    if found is None:
        not_found("job", job_id)
    return found


@router.get("", response_model=JobsPublic)
async def list_jobs(
    redis: RedisDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsPublic:
    ids, total = await jobstore.list_job_ids(redis, offset, limit)
    found = [await jobstore.get_status(redis, i) for i in ids]
    return JobsPublic(data=[s for s in found if s is not None], count=total)


@router.get("/{job_id}", responses=NOT_FOUND, response_model=JobStatus)
async def get_job(job_id: str, redis: RedisDep) -> JobStatus:
    return await _status(redis, job_id)


@router.post("/{job_id}/cancel", responses=NOT_FOUND, response_model=JobStatus)
async def cancel_job(job_id: str, redis: RedisDep) -> JobStatus:
    current = await _status(redis, job_id)
    if not current.state.finished:
        await jobstore.set_state(redis, job_id, JobState.CANCELLED, "cancelled by request")
    return await _status(redis, job_id)


@router.get("/{job_id}/examples", responses=NOT_FOUND, response_class=StreamingResponse)
async def stream_examples(
    job_id: str, redis: RedisDep, status: Literal["accepted", "rejected"] = "accepted"
) -> StreamingResponse:
    """NDJSON, one stored example per line, streamed bucket by bucket."""
    await _status(redis, job_id)

    async def lines() -> AsyncIterator[bytes]:
        async for raw in iter_raw(redis, job_id, status):
            yield raw + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/{job_id}/export", responses=NOT_FOUND, response_class=StreamingResponse)
async def export_job(job_id: str, redis: RedisDep, format: ExportFormat = ExportFormat.JSONL) -> StreamingResponse:
    """The accepted examples as alpaca / sharegpt (JSON arrays), jsonl (full records) or parquet (full records,
    typed columns). Parquet is written to a temporary file one storage bucket at a time, then streamed back."""
    await _status(redis, job_id)
    headers = {"content-disposition": f'attachment; filename="{job_id}.{FILE_SUFFIXES[format]}"'}
    examples = iter_examples(redis, job_id, "accepted")
    if format is not ExportFormat.PARQUET:
        return StreamingResponse(render(examples, format), media_type=MEDIA_TYPES[format], headers=headers)
    path, size = await parquet_export(examples, prefix=f"skillmix-export-{job_id}-")
    headers["content-length"] = str(size)
    cleanup = BackgroundTask(path.unlink, missing_ok=True)  # iter_file deletes it too, once read to the end
    return StreamingResponse(iter_file(path), media_type=MEDIA_TYPES[format], headers=headers, background=cleanup)


@router.get("/{job_id}/coverage", responses=NOT_FOUND, response_model=Coverage)
async def job_coverage(job_id: str, redis: RedisDep) -> Coverage:
    """Skill and skill-pair coverage of the accepted examples."""
    record = await jobstore.load_record(redis, job_id)
    if record is None:
        not_found("job", job_id)
    all_skills = [s.name for s in record.skill_set.skills] if record.skill_set else []
    draws = [(e.skills, e.query_type) async for e in iter_examples(redis, job_id, "accepted")]
    return coverage(draws, all_skills)

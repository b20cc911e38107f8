"""Skill extraction: submit a model-only or dataset extraction job; its unlabelled rows.

``POST /v1/skill-sets/extract`` takes a JSON spec (dataset by ``source.path`` under the data dir) or a
multipart form with the seed file (``file``) and the spec as JSON text (``spec``, without
``source.path``). The dataset is checked completely before the job is queued, so every problem with it
is a 422 naming the field. Progress is the ordinary ``GET /v1/jobs/{id}``; the produced set is the job's
``result`` and lives under ``GET /v1/skill-sets/{name}/{version}``.

An upload is received by ``service.uploads`` (streamed to disk, capped, private to its job); on any
refusal or error before the job is created, or a replayed ``Idempotency-Key``, the job's upload directory is
deleted.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import Field, TypeAdapter, ValidationError

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.jobs import JobRecord, JobStatus
from schemas.settings import Settings
from service.auth import OwnedJob, WriterDep
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, OVER_QUOTA, UNPROCESSABLE, not_found
from service.idempotency import RESPONSES as IDEMPOTENT
from service.idempotency import IdempotencyKey, create_job, digest
from service.uploads import (
    TOO_LARGE,
    JobUpload,
    UploadRules,
    inlined,
    invalid,
    is_multipart,
    receive_upload,
    refuse_uploads_path,
)
from store import endpoints, jobs
from store.datasets import resolve_path
from store.extraction import ExtractStore
from store.survey import inspect

router = APIRouter(prefix="/v1/skill-sets/extract", tags=["skill-sets"])

ExtractSpec = Annotated[ExtractAgnosticSpec | ExtractDatasetSpec, Field(discriminator="recipe")]
SPEC: TypeAdapter[ExtractAgnosticSpec | ExtractDatasetSpec] = TypeAdapter(ExtractSpec)
UPLOAD = UploadRules(
    recipe="extract-from-dataset",
    recipe_message="an uploaded dataset needs recipe 'extract-from-dataset'",
    dataset="the seed dataset",
    suffixes={"jsonl": ".jsonl", "parquet": ".parquet"},
    file_description="JSONL or Parquet",
    spec_description="extract-from-dataset spec JSON, no path",
)


def _inlined_schema() -> dict[str, Any]:
    """The spec's JSON schema, valid inside the OpenAPI document."""
    schema = SPEC.json_schema()
    schema.pop("discriminator", None)  # its mapping points into $defs; oneOf + the recipe const suffice
    return inlined(schema)


async def _read_spec(
    request: Request, job_id: str, settings: Settings
) -> tuple[ExtractAgnosticSpec | ExtractDatasetSpec, str]:
    """The spec and the body's fingerprint (``service.idempotency``)."""
    if not is_multipart(request):
        raw = await request.body()
        try:
            spec = SPEC.validate_json(raw)
        except ValidationError as exc:
            raise invalid(exc) from exc
        if isinstance(spec, ExtractDatasetSpec):
            await refuse_uploads_path(settings.data_dir, spec.source.path)
        return spec, digest(raw)
    upload = await receive_upload(request, job_id, settings, UPLOAD)
    try:
        spec = SPEC.validate_python(upload.body)
    except ValidationError as exc:
        raise invalid(exc) from exc
    await upload.keep(settings.data_dir)
    return spec, upload.digest


async def _check_dataset(spec: ExtractDatasetSpec, data_dir: Path) -> ExtractDatasetSpec:
    """Read the whole dataset once (in a thread): format, columns, rows; fill in what was detected."""
    path = resolve_path(data_dir, spec.source.path)  # DatasetError: a 422 naming the field to fix
    info = await asyncio.to_thread(inspect, path, spec.source, spec.rows, spec.max_rows)
    source = spec.source.model_copy(update={"row_format": info.row_format})
    return spec.model_copy(update={"source": source, "rows": info.rows})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobStatus,
    responses={**TOO_LARGE, **OVER_QUOTA, **IDEMPOTENT, **UNPROCESSABLE},
    openapi_extra=UPLOAD.openapi(_inlined_schema()),
)
async def extract(
    request: Request, redis: RedisDep, settings: SettingsDep, caller: WriterDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Queue an extraction job; follow it at ``GET /v1/jobs/{id}``."""
    job_id = uuid.uuid4().hex
    with JobUpload(settings.data_dir, job_id) as upload:  # gone unless the job is created (not on a replay)
        spec, body_digest = await _read_spec(request, job_id, settings)

        async def create() -> JobStatus:
            created = await jobs.submit(redis, await _record(spec, job_id, redis, settings, caller.team))
            upload.kept = True
            return created

        return await create_job(request, redis, settings, caller, idempotency_key, body_digest, job_id, create)


async def _record(
    spec: ExtractAgnosticSpec | ExtractDatasetSpec, job_id: str, redis: RedisDep, settings: Settings, team: str
) -> JobRecord:
    """The job as stored: its endpoint resolved, its dataset (if any) checked whole."""
    endpoint_name = spec.endpoint or settings.default_endpoint
    endpoint = await endpoints.resolve(redis, settings, endpoint_name, mode=spec.mode)
    for field, name in spec.extra_endpoints().items():
        await endpoints.resolve(redis, settings, name, field, spec.mode)
    if isinstance(spec, ExtractDatasetSpec):
        spec = await _check_dataset(spec, settings.data_dir)
    return JobRecord(
        id=job_id,
        spec=spec,
        team=team,
        endpoint=endpoint_name,
        model=endpoint.model,
        chunk_size=settings.chunk_size,
        usd_per_mtok_prompt=endpoint.usd_per_mtok_prompt,
        usd_per_mtok_completion=endpoint.usd_per_mtok_completion,
        created_at=datetime.now(UTC),
    )


@router.get("/{job_id}/unlabelled", responses=NOT_FOUND, response_class=StreamingResponse)
async def unlabelled_rows(job_id: str, record: OwnedJob, redis: RedisDep) -> StreamingResponse:
    """NDJSON, one ``UnlabelledRow`` per line: every seed row that ended without a coarse skill, and why (a
    model-only extraction has no seed rows: always empty)."""
    if not isinstance(record.spec, ExtractDatasetSpec | ExtractAgnosticSpec):
        not_found("extraction job", job_id)
    store = ExtractStore(redis, job_id)
    seeded = isinstance(record.spec, ExtractDatasetSpec)

    async def lines() -> AsyncIterator[bytes]:
        if seeded:
            async for raw in store.iter_unlabelled():
                yield raw + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")

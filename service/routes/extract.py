"""Skill extraction: submit a model-only or dataset extraction job; its unlabelled rows.

``POST /v1/skill-sets/extract`` takes a JSON spec (dataset by ``source.path`` under the data dir) or a
multipart form with the seed file (``file``) and the spec as JSON text (``spec``, without
``source.path``). The dataset is checked completely before the job is queued, so every problem with it
is a 422 naming the field. Progress is the ordinary ``GET /v1/jobs/{id}``; the produced set is the job's
``result`` and lives under ``GET /v1/skill-sets/{name}/{version}``.

An upload is received by ``service.uploads`` (streamed to disk, capped, private to its job); on any
refusal or error before the job is created, the job's upload directory is deleted.
"""

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, status
from fastapi.responses import StreamingResponse
from pydantic import Field, TypeAdapter, ValidationError

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.jobs import JobRecord, JobStatus
from schemas.settings import Settings
from service.auth import OwnedJob, WriterDep
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, UNPROCESSABLE, not_found
from service.uploads import (
    TOO_LARGE,
    UploadRules,
    inlined,
    invalid,
    is_multipart,
    receive_upload,
    refuse_uploads_path,
    upload_dir,
)
from store import endpoints, jobs, records
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


async def _read_spec(request: Request, job_id: str, settings: Settings) -> ExtractAgnosticSpec | ExtractDatasetSpec:
    if not is_multipart(request):
        try:
            spec = SPEC.validate_json(await request.body())
        except ValidationError as exc:
            raise invalid(exc) from exc
        if isinstance(spec, ExtractDatasetSpec):
            await refuse_uploads_path(settings.data_dir, spec.source.path)
        return spec
    upload = await receive_upload(request, job_id, settings, UPLOAD)
    try:
        spec = SPEC.validate_python(upload.body)
    except ValidationError as exc:
        raise invalid(exc) from exc
    await upload.keep(settings.data_dir)
    return spec


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
    responses={**TOO_LARGE, **UNPROCESSABLE},
    openapi_extra=UPLOAD.openapi(_inlined_schema()),
)
async def extract(request: Request, redis: RedisDep, settings: SettingsDep, caller: WriterDep) -> JobStatus:
    """Queue an extraction job; follow it at ``GET /v1/jobs/{id}``."""
    job_id = uuid.uuid4().hex
    try:
        spec = await _read_spec(request, job_id, settings)
        endpoint_name = spec.endpoint or settings.default_endpoint
        endpoint = await endpoints.resolve(redis, settings, endpoint_name)
        if isinstance(spec, ExtractDatasetSpec):
            spec = await _check_dataset(spec, settings.data_dir)
        record = JobRecord(
            id=job_id,
            spec=spec,
            team=caller.team,
            endpoint=endpoint_name,
            model=endpoint.model,
            chunk_size=settings.chunk_size,
            usd_per_mtok_prompt=endpoint.usd_per_mtok_prompt,
            usd_per_mtok_completion=endpoint.usd_per_mtok_completion,
            created_at=datetime.now(UTC),
        )
        await jobs.submit(redis, record)
    except BaseException:  # refused, failed or cancelled (client gone): the upload, if any, goes too
        shutil.rmtree(upload_dir(settings.data_dir, job_id), ignore_errors=True)  # one file: quick, and sure
        raise
    found = await records.get_status(redis, job_id)
    assert found is not None
    return found


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

"""Skill extraction: submit a model-only or dataset extraction job; its unlabelled rows.

``POST /v1/skill-sets/extract`` takes a JSON spec (dataset by ``source.path`` under the data dir) or a
multipart form with the seed file (``file``) and the spec as JSON text (``spec``, without
``source.path``). The dataset is checked completely before the job is queued, so every problem with it
is a 422 naming the field. Progress is the ordinary ``GET /v1/jobs/{id}``; the produced set is the job's
``result`` and lives under ``GET /v1/skill-sets/{name}/{version}``.
"""

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.jobs import JobRecord, JobStatus
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, not_found, unprocessable
from workers import endpoints, jobstore
from workers.extract import runner
from workers.extract.reader import DatasetError, inspect, resolve_path
from workers.extract.store import ExtractStore

router = APIRouter(prefix="/v1/skill-sets/extract", tags=["skill-sets"])

ExtractSpec = Annotated[ExtractAgnosticSpec | ExtractDatasetSpec, Field(discriminator="recipe")]
SPEC: TypeAdapter[ExtractAgnosticSpec | ExtractDatasetSpec] = TypeAdapter(ExtractSpec)
UPLOAD_DIR = "uploads"
UPLOAD_SUFFIXES = {"jsonl": ".jsonl", "parquet": ".parquet"}


def _inlined_schema() -> dict[str, Any]:
    """The spec's JSON schema with its ``$defs`` inlined, so it is valid inside the OpenAPI document."""
    schema = SPEC.json_schema()
    defs = schema.pop("$defs", {})
    schema.pop("discriminator", None)  # its mapping points into $defs; oneOf + the recipe const suffice

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def _invalid(exc: ValidationError) -> RequestValidationError:
    """Pydantic's errors in FastAPI's 422 shape, located under ``body`` like any request body error."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)  # input may be raw bytes
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def _save_upload(upload: UploadFile, target: Path) -> None:
    """Blocking copy of the spooled upload into the data dir (run in a thread)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, out, length=1 << 20)


async def _read_spec(request: Request, job_id: str, data_dir: Path) -> ExtractAgnosticSpec | ExtractDatasetSpec:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            return SPEC.validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from exc
    form = await request.form()
    upload, raw = form.get("file"), form.get("spec")
    if not isinstance(upload, UploadFile):
        unprocessable("file", "a multipart request needs the seed dataset as the 'file' part")
    if not isinstance(raw, str):
        unprocessable("spec", "a multipart request needs the job spec as JSON text in the 'spec' part")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        unprocessable("spec", f"not valid JSON: {exc}")
    if not isinstance(body, dict) or body.get("recipe") != "extract-from-dataset":
        unprocessable("spec.recipe", "an uploaded dataset needs recipe 'extract-from-dataset'")
    source = body.setdefault("source", {})
    if not isinstance(source, dict) or "path" in source:
        unprocessable("source.path", "give either an uploaded file or source.path, not both")
    suffix = PurePosixPath(upload.filename or "").suffix.lower()
    suffix = UPLOAD_SUFFIXES.get(str(source.get("format")), suffix)
    source["path"] = f"{UPLOAD_DIR}/{job_id}{suffix}"
    try:
        spec = SPEC.validate_python(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    await asyncio.to_thread(_save_upload, upload, data_dir / source["path"])
    return spec


async def _check_dataset(spec: ExtractDatasetSpec, data_dir: Path) -> ExtractDatasetSpec:
    """Read the whole dataset once (in a thread): format, columns, rows; fill in what was detected."""
    try:
        path = resolve_path(data_dir, spec.source.path)
        info = await asyncio.to_thread(inspect, path, spec.source, spec.rows, spec.max_rows)
    except DatasetError as exc:
        unprocessable(exc.field, exc.message)
    source = spec.source.model_copy(update={"row_format": info.row_format})
    return spec.model_copy(update={"source": source, "rows": info.rows})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobStatus,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inlined_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "spec"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "JSONL or Parquet"},
                            "spec": {"type": "string", "description": "extract-from-dataset spec JSON, no path"},
                        },
                    }
                },
            },
        }
    },
)
async def extract(request: Request, redis: RedisDep, settings: SettingsDep) -> JobStatus:
    """Queue an extraction job; follow it at ``GET /v1/jobs/{id}``."""
    job_id = uuid.uuid4().hex
    spec = await _read_spec(request, job_id, settings.data_dir)
    endpoint_name = spec.endpoint or settings.default_endpoint
    try:
        endpoint = await endpoints.resolve(redis, settings, endpoint_name)
    except endpoints.UnknownEndpoint as exc:
        unprocessable("endpoint", str(exc))
    if isinstance(spec, ExtractDatasetSpec):
        spec = await _check_dataset(spec, settings.data_dir)
    record = JobRecord(
        id=job_id,
        spec=spec,
        endpoint=endpoint_name,
        model=endpoint.model,
        chunk_size=settings.chunk_size,
        usd_per_mtok_prompt=endpoint.usd_per_mtok_prompt,
        usd_per_mtok_completion=endpoint.usd_per_mtok_completion,
        created_at=datetime.now(UTC),
    )
    await runner.submit(redis, record)
    found = await jobstore.get_status(redis, job_id)
    assert found is not None
    return found


@router.get("/{job_id}/unlabelled", responses=NOT_FOUND, response_class=StreamingResponse)
async def unlabelled_rows(job_id: str, redis: RedisDep) -> StreamingResponse:
    """NDJSON, one ``UnlabelledRow`` per line: every seed row that ended without a coarse skill, and why."""
    record = await jobstore.load_record(redis, job_id)
    if record is None or not isinstance(record.spec, ExtractDatasetSpec):
        not_found("dataset extraction job", job_id)
    store = ExtractStore(redis, job_id)

    async def lines() -> AsyncIterator[bytes]:
        async for raw in store.iter_unlabelled():
            yield raw + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")

"""Skill extraction: submit a model-only or dataset extraction job; its unlabelled rows.

``POST /v1/skill-sets/extract`` takes a JSON spec (dataset by ``source.path`` under the data dir) or a
multipart form with the seed file (``file``) and the spec as JSON text (``spec``, without
``source.path``). The dataset is checked completely before the job is queued, so every problem with it
is a 422 naming the field. Progress is the ordinary ``GET /v1/jobs/{id}``; the produced set is the job's
``result`` and lives under ``GET /v1/skill-sets/{name}/{version}``.

An upload is streamed straight to ``uploads/{job_id}/`` under the data dir, never whole into memory, and
refused (413) as soon as it passes ``max_upload_mb``. It is private to the job that received it: a spec's
``source.path`` may not point into ``uploads/``. On any refusal or error before the job is created, the
job's upload directory is deleted.
"""

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NoReturn

import orjson
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import Field, TypeAdapter, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.jobs import JobRecord, JobStatus
from schemas.settings import Settings
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, not_found, unprocessable
from store import endpoints, jobs, records
from store.extraction import ExtractStore
from workers.extract.reader import DatasetError, inspect, resolve_path

router = APIRouter(prefix="/v1/skill-sets/extract", tags=["skill-sets"])

ExtractSpec = Annotated[ExtractAgnosticSpec | ExtractDatasetSpec, Field(discriminator="recipe")]
SPEC: TypeAdapter[ExtractAgnosticSpec | ExtractDatasetSpec] = TypeAdapter(ExtractSpec)
UPLOAD_DIR = "uploads"  # under the data dir; one directory per job, readable by that job only
UPLOAD_SUFFIXES = {"jsonl": ".jsonl", "parquet": ".parquet"}
UPLOAD_STEM = "seed"
FIELDS_LIMIT = 1 << 20  # bytes of the non-file parts together (the spec is a few hundred)


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


class _Form:
    """A multipart upload parsed as it streams in: the ``file`` part goes straight to disk, with a size cap.

    The parser's callbacks only collect; ``receive`` does the file I/O in a thread after each chunk.
    """

    def __init__(self, part_path: Path, cap: int) -> None:
        self.part_path, self.cap = part_path, cap
        self.filename: str | None = None
        self.spec: bytes | None = None
        self.file_bytes = 0
        self._fields_bytes = 0
        self._name = ""
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._text = bytearray()
        self._pending: list[bytes] = []

    def on_part_begin(self) -> None:
        self._name, self._disposition, self._text = "", b"", bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.filename is not None:
                unprocessable("file", "send one dataset file, not several")
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.file_bytes += end - start
            if self.file_bytes > self.cap:
                too_large(self.cap)
            self._pending.append(data[start:end])
            return
        self._fields_bytes += end - start
        if self._fields_bytes > FIELDS_LIMIT:
            unprocessable("spec", f"the form's text parts are over {FIELDS_LIMIT >> 10} KiB; the spec is small JSON")
        if self._name == "spec":
            self._text += data[start:end]

    def on_part_end(self) -> None:
        if self._name == "spec":
            self.spec = bytes(self._text)

    async def receive(self, request: Request) -> None:
        _, params = parse_options_header(request.headers.get("content-type"))
        boundary = params.get(b"boundary")
        if not boundary:
            unprocessable("file", "a multipart request needs a boundary in its content-type")
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self.on_part_begin,
                "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end,
                "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished,
            },
        )
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        with self.part_path.open("wb") as out:
            try:
                async for chunk in request.stream():
                    parser.write(chunk)
                    if self._pending:
                        data, self._pending = b"".join(self._pending), []
                        await asyncio.to_thread(out.write, data)
                parser.finalize()
            except FormParserError as exc:
                unprocessable("file", f"the multipart body is malformed ({exc})")


def too_large(cap: int) -> NoReturn:
    mb = cap / (1 << 20)
    raise HTTPException(
        status_code=413,
        detail=[
            {
                "loc": ["body", "file"],
                "msg": f"the upload is larger than the server's cap of {mb:g} MB (SKILLMIX_MAX_UPLOAD_MB); "
                "put the file in the server's data dir and give source.path instead, or use fewer rows",
                "type": "too_large",
            }
        ],
    )


def upload_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / UPLOAD_DIR / job_id


def _in_uploads(data_dir: Path, relative: str) -> bool:
    """Whether a spec's path leads into the uploads area, by name or through a symlink (or letter case)."""
    parts = PurePosixPath(relative).parts
    if parts and parts[0].lower() == UPLOAD_DIR:
        return True
    uploads = data_dir / UPLOAD_DIR
    if not uploads.exists():
        return False
    root = data_dir.resolve()
    path = (root / relative).resolve()
    if path.is_relative_to(uploads.resolve()):
        return True
    for parent in (path, *path.parents):  # a case-insensitive file system: "Uploads/x" is "uploads/x"
        if not parent.is_relative_to(root) or parent == root:
            break
        try:
            if os.path.samefile(parent, uploads):
                return True
        except OSError:
            continue
    return False


async def _read_spec(request: Request, job_id: str, settings: Settings) -> ExtractAgnosticSpec | ExtractDatasetSpec:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            spec = SPEC.validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from exc
        if isinstance(spec, ExtractDatasetSpec) and await asyncio.to_thread(
            _in_uploads, settings.data_dir, spec.source.path
        ):
            unprocessable(
                "source.path",
                f"{spec.source.path!r} is in the uploads area: an uploaded dataset belongs to the job that "
                "received it; upload the file again, or put it elsewhere in the data dir",
            )
        return spec
    cap = int(settings.max_upload_mb * (1 << 20))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap + FIELDS_LIMIT:
        too_large(cap)  # refused before a byte of it is read
    folder = upload_dir(settings.data_dir, job_id)
    form = _Form(folder / f"{UPLOAD_STEM}.part", cap)
    await form.receive(request)
    if form.filename is None:
        unprocessable("file", "a multipart request needs the seed dataset as the 'file' part")
    if form.spec is None:
        unprocessable("spec", "a multipart request needs the job spec as JSON text in the 'spec' part")
    try:
        body: Any = orjson.loads(form.spec)
    except orjson.JSONDecodeError as exc:
        unprocessable("spec", f"not valid JSON: {exc}")
    if not isinstance(body, dict) or body.get("recipe") != "extract-from-dataset":
        unprocessable("spec.recipe", "an uploaded dataset needs recipe 'extract-from-dataset'")
    source = body.setdefault("source", {})
    if not isinstance(source, dict) or "path" in source:
        unprocessable("source.path", "give either an uploaded file or source.path, not both")
    suffix = PurePosixPath(form.filename).suffix.lower()
    suffix = UPLOAD_SUFFIXES.get(str(source.get("format")), suffix)
    source["path"] = f"{UPLOAD_DIR}/{job_id}/{UPLOAD_STEM}{suffix}"
    try:
        spec = SPEC.validate_python(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    await asyncio.to_thread(form.part_path.rename, settings.data_dir / source["path"])
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
    responses={413: {"description": "the uploaded file is over the server's SKILLMIX_MAX_UPLOAD_MB"}},
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
    try:
        spec = await _read_spec(request, job_id, settings)
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
        await jobs.submit(redis, record)
    except BaseException:  # refused, failed or cancelled (client gone): the upload, if any, goes too
        shutil.rmtree(upload_dir(settings.data_dir, job_id), ignore_errors=True)  # one file: quick, and sure
        raise
    found = await records.get_status(redis, job_id)
    assert found is not None
    return found


@router.get("/{job_id}/unlabelled", responses=NOT_FOUND, response_class=StreamingResponse)
async def unlabelled_rows(job_id: str, redis: RedisDep) -> StreamingResponse:
    """NDJSON, one ``UnlabelledRow`` per line: every seed row that ended without a coarse skill, and why."""
    record = await records.load_record(redis, job_id)
    if record is None or not isinstance(record.spec, ExtractDatasetSpec):
        not_found("dataset extraction job", job_id)
    store = ExtractStore(redis, job_id)

    async def lines() -> AsyncIterator[bytes]:
        async for raw in store.iter_unlabelled():
            yield raw + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")

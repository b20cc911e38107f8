"""Curate a dataset a team brings: ``POST /v1/curate`` and its records in input order.

``POST /v1/curate`` takes a JSON ``curate`` spec (dataset by ``source.path`` under the data dir) or a
multipart form with the dataset (``file``: Alpaca JSON array, JSONL of Alpaca or chat rows, or Parquet) and
the spec as JSON text (``spec``, without ``source.path``). The upload is streamed to ``uploads/{job_id}/``
exactly as extraction's is (same helpers, same cap, same cleanup), then the whole file is surveyed once in a
thread: every row's shape, the row count (the job's ``count`` and ``max_items``) and where each chunk's rows
start. The job runs on the ordinary queue and workers as recipe ``curate``; progress is ``GET /v1/jobs/{id}``.

``GET /v1/curate/{id}/records?status=accepted|rejected`` streams the original rows (rejected ones with
``reasons``) as NDJSON in input order: the job's decisions are read 1,000 indexes at a time, then those
examples from their storage buckets, so no more than one batch is held.
"""

import asyncio
import shutil
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, status
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from schemas.jobs import CurateJobSpec, JobRecord, JobStatus, needs_endpoint
from schemas.settings import Settings
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, not_found, unprocessable
from service.routes.extract import (
    FIELDS_LIMIT,
    UPLOAD_DIR,
    UPLOAD_STEM,
    _Form,
    _in_uploads,
    _invalid,
    too_large,
    upload_dir,
)
from store import endpoints, jobs, keys
from store.records import load_record
from workers.curate.source import survey
from workers.extract.reader import DatasetError, resolve_path

router = APIRouter(prefix="/v1/curate", tags=["curate"])
SUFFIXES = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet"}
BATCH = 1000  # decisions read per HMGET (= one storage bucket's worth)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` inlined, so it is valid inside the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    inlined: dict[str, Any] = walk(schema)
    return inlined


async def _read_spec(request: Request, job_id: str, settings: Settings) -> CurateJobSpec:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            return CurateJobSpec.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from exc
    cap = int(settings.max_upload_mb * (1 << 20))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap + FIELDS_LIMIT:
        too_large(cap)  # refused before a byte of it is read
    form = _Form(upload_dir(settings.data_dir, job_id) / f"{UPLOAD_STEM}.part", cap)
    await form.receive(request)
    if form.filename is None:
        unprocessable("file", "a multipart request needs the dataset as the 'file' part")
    try:
        body: Any = orjson.loads(form.spec or b"{}")
    except orjson.JSONDecodeError as exc:
        unprocessable("spec", f"not valid JSON: {exc}")
    if not isinstance(body, dict) or body.setdefault("recipe", "curate") != "curate":
        unprocessable("spec.recipe", "POST /v1/curate takes recipe 'curate'")
    source = body.setdefault("source", {})
    if not isinstance(source, dict) or "path" in source:
        unprocessable("source.path", "give either an uploaded file or source.path, not both")
    suffix = SUFFIXES.get(str(source.get("format")), PurePosixPath(form.filename).suffix.lower())
    source["path"] = f"{UPLOAD_DIR}/{job_id}/{UPLOAD_STEM}{suffix}"
    try:
        spec = CurateJobSpec.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    await asyncio.to_thread(form.part_path.rename, settings.data_dir / source["path"])
    return spec


async def _surveyed(spec: CurateJobSpec, data_dir: Path, block: int) -> CurateJobSpec:
    """Read the whole file once (in a thread): rows, their shape, chunk offsets; fill in what was found."""
    try:
        path = resolve_path(data_dir, spec.source.path)
        found = await asyncio.to_thread(survey, path, spec.source, block)
    except DatasetError as exc:
        unprocessable(exc.field, exc.message)
    source = spec.source.model_copy(update={"row_format": found.row_format, "messages_column": found.messages_column})
    update = {"source": source, "count": found.rows, "max_items": found.rows, "offsets": found.offsets}
    return spec.model_copy(update=update)


async def submit_curate(
    spec: CurateJobSpec, job_id: str, redis: RedisDep, settings: Settings, uploaded: bool = False
) -> JobStatus:
    """Survey the dataset, store the job and enqueue all its rows (also used by ``POST /v1/jobs``)."""
    if not uploaded and await asyncio.to_thread(_in_uploads, settings.data_dir, spec.source.path):
        unprocessable(
            "source.path",
            f"{spec.source.path!r} is in the uploads area: an uploaded dataset belongs to the job that "
            "received it; upload the file again, or put it elsewhere in the data dir",
        )
    judge = spec.quality.judge if spec.quality.enabled else None
    endpoint_name = spec.endpoint or (judge.endpoint if judge else None) or settings.default_endpoint
    model = ""
    chunk_size = spec.chunk_size or settings.chunk_size
    spec = await _surveyed(spec, settings.data_dir, chunk_size)
    usd_prompt = usd_completion = 0.0
    record = JobRecord(
        id=job_id,
        spec=spec,
        endpoint=endpoint_name,
        model=model,
        chunk_size=chunk_size,
        created_at=datetime.now(UTC),
    )
    if needs_endpoint(record):  # only the judge calls an LLM
        for name in {endpoint_name, *([judge.endpoint] if judge and judge.endpoint else [])}:
            try:
                endpoint = await endpoints.resolve(redis, settings, name)
            except endpoints.UnknownEndpoint as exc:
                unprocessable("quality.judge.endpoint", str(exc))
            if name == endpoint_name:
                model, usd_prompt, usd_completion = (
                    endpoint.model,
                    endpoint.usd_per_mtok_prompt,
                    endpoint.usd_per_mtok_completion,
                )
        record = record.model_copy(
            update={"model": model, "usd_per_mtok_prompt": usd_prompt, "usd_per_mtok_completion": usd_completion}
        )
    return await jobs.submit(redis, record)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobStatus,
    responses={413: {"description": "the uploaded file is over the server's SKILLMIX_MAX_UPLOAD_MB"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inlined(CurateJobSpec.model_json_schema())},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "Alpaca JSON array, JSONL (Alpaca or chat rows) or Parquet",
                            },
                            "spec": {"type": "string", "description": "curate spec JSON without source.path"},
                        },
                    }
                },
            },
        }
    },
)
async def curate(request: Request, redis: RedisDep, settings: SettingsDep) -> JobStatus:
    """Queue a curate job on a dataset; follow it at ``GET /v1/jobs/{id}``, read it at ``.../records``."""
    job_id = uuid.uuid4().hex
    try:
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        spec = await _read_spec(request, job_id, settings)
        return await submit_curate(spec, job_id, redis, settings, uploaded=multipart)
    except BaseException:  # refused, failed or cancelled (client gone): the upload, if any, goes too
        shutil.rmtree(upload_dir(settings.data_dir, job_id), ignore_errors=True)
        raise


async def iter_records(redis: RedisDep, job_id: str, rows: int, kind: str) -> AsyncIterator[bytes]:
    """The original rows decided ``kind``, in input order, as NDJSON lines; rejected ones carry ``reasons``."""
    wanted = "a" if kind == "accepted" else "r"
    for start in range(0, rows, BATCH):
        indexes = list(range(start, min(start + BATCH, rows)))
        decisions = await redis.hmget(keys.decisions(job_id), [str(i) for i in indexes])
        seqs: list[int] = []
        for raw in decisions:
            if raw is not None and raw[:1].decode() == wanted:
                seqs.append(int(raw.split(b":")[1]))
        by_bucket: dict[str, list[int]] = defaultdict(list)
        for seq in seqs:
            by_bucket[keys.bucket(job_id, kind, seq)].append(seq)
        found: dict[int, bytes] = {}
        async with redis.pipeline(transaction=False) as pipe:
            for bucket, members in by_bucket.items():
                pipe.hmget(bucket, [str(s) for s in members])
            replies = await pipe.execute()
        for members, values in zip(by_bucket.values(), replies, strict=True):
            found.update((s, v) for s, v in zip(members, values, strict=True) if v is not None)
        lines = []
        for seq in seqs:  # decisions were read in index order, so the seqs are in input order
            raw = found.get(seq)
            if raw is None:
                continue
            example = orjson.loads(raw)
            row = example.get("source_row")
            if row is None:
                continue
            if kind == "rejected":
                row["reasons"] = example["verdict"]["reasons"]
            lines.append(orjson.dumps(row))
        if lines:
            yield b"\n".join(lines) + b"\n"


@router.get("/{job_id}/records", responses=NOT_FOUND, response_class=StreamingResponse)
async def records(
    job_id: str, redis: RedisDep, status: Literal["accepted", "rejected"] = "accepted"
) -> StreamingResponse:
    """NDJSON of the job's rows as they were given, in input order: accepted ones, or rejected ones with
    ``reasons`` (the first is the one counted in ``rejected_by_reason``)."""
    record = await load_record(redis, job_id)
    if record is None or not isinstance(record.spec, CurateJobSpec):
        not_found("curate job", job_id)
    return StreamingResponse(iter_records(redis, job_id, record.spec.count, status), media_type="application/x-ndjson")

"""Curate a dataset a team brings: ``POST /v1/curate`` and its records in input order.

``POST /v1/curate`` takes a JSON ``curate`` spec (dataset by ``source.path`` under the data dir) or a
multipart form with the dataset (``file``: Alpaca JSON array, JSONL of Alpaca or chat rows, or Parquet) and
the spec as JSON text (``spec``, without ``source.path``). The upload is streamed to ``uploads/{job_id}/``
exactly as extraction's is (``service.uploads``: same cap, same cleanup), then the whole file is surveyed once in a
thread: every row's shape, the row count (the job's ``count`` and ``max_items``) and where each chunk's rows
start. The job runs on the ordinary queue and workers as recipe ``curate``; progress is ``GET /v1/jobs/{id}``.

``GET /v1/curate/{id}/records?status=accepted|rejected`` streams the original rows (rejected ones with
``reasons``) as NDJSON in input order: the job's decisions are read 1,000 indexes at a time, then those
examples from their storage buckets, so no more than one batch is held.
"""

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from redis.asyncio import Redis

from schemas.jobs import CurateJobSpec, JobRecord, JobStatus
from schemas.recipes import RecipeSpec
from schemas.settings import Settings
from service.auth import OwnedJob, WriterDep
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, OVER_QUOTA, UNPROCESSABLE, not_found
from service.idempotency import RESPONSES as IDEMPOTENT
from service.idempotency import IdempotencyKey, create_job, digest
from service.profiles import resolve_profile
from service.recipes import own_submit
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
from store import endpoints, jobs, keys
from store.datasets import resolve_path
from store.survey import survey

router = APIRouter(prefix="/v1/curate", tags=["curate"])
UPLOAD = UploadRules(
    recipe="curate",
    recipe_message="POST /v1/curate takes recipe 'curate'",
    dataset="the dataset",
    suffixes={"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet"},
    file_description="Alpaca JSON array, JSONL (Alpaca or chat rows) or Parquet",
    spec_description="curate spec JSON without source.path",
    spec_optional=True,
)
BATCH = 1000  # decisions read per HMGET (= one storage bucket's worth)


async def _read_spec(request: Request, job_id: str, settings: Settings) -> tuple[CurateJobSpec, str]:
    """The spec and the body's fingerprint (``service.idempotency``)."""
    if not is_multipart(request):
        raw = await request.body()
        try:
            return CurateJobSpec.model_validate_json(raw), digest(raw)
        except ValidationError as exc:
            raise invalid(exc) from exc
    upload = await receive_upload(request, job_id, settings, UPLOAD)
    try:
        spec = CurateJobSpec.model_validate(upload.body)
    except ValidationError as exc:
        raise invalid(exc) from exc
    await upload.keep(settings.data_dir)
    return spec, upload.digest


async def _surveyed(spec: CurateJobSpec, data_dir: Path, block: int) -> CurateJobSpec:
    """Read the whole file once (in a thread): rows, their shape, chunk offsets; fill in what was found."""
    path = resolve_path(data_dir, spec.source.path)  # DatasetError: a 422 naming the field to fix
    found = await asyncio.to_thread(survey, path, spec.source, block)
    source = spec.source.model_copy(update={"row_format": found.row_format, "messages_column": found.messages_column})
    update = {"source": source, "count": found.rows, "max_items": found.rows, "offsets": found.offsets}
    return spec.model_copy(update=update)


async def submit_curate(
    spec: CurateJobSpec, job_id: str, redis: RedisDep, settings: Settings, team: str, uploaded: bool = False
) -> JobStatus:
    """Survey the dataset, store the job and enqueue all its rows (also used by ``POST /v1/jobs``)."""
    if not uploaded:
        await refuse_uploads_path(settings.data_dir, spec.source.path)
    spec = await resolve_profile(redis, team, spec)
    judge = spec.quality.judge if spec.quality.enabled else None
    judges = judge.endpoint_names() if judge else []
    endpoint_name = spec.endpoint or (judges[0] if judges else None) or settings.default_endpoint
    model = ""
    chunk_size = spec.chunk_size or settings.chunk_size
    spec = await _surveyed(spec, settings.data_dir, chunk_size)
    usd_prompt = usd_completion = 0.0
    record = JobRecord(
        id=job_id,
        spec=spec,
        team=team,
        endpoint=endpoint_name,
        model=model,
        chunk_size=chunk_size,
        created_at=datetime.now(UTC),
    )
    if record.spec.needs_endpoint():  # only the judge calls an LLM
        for name in dict.fromkeys([endpoint_name, *judges]):
            field = "quality.judge.endpoints" if judge and judge.endpoints else "quality.judge.endpoint"
            endpoint = await endpoints.resolve(redis, settings, name, field, spec.mode)
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


@own_submit(CurateJobSpec)
async def _submit_via_jobs(spec: RecipeSpec, job_id: str, redis: Redis, settings: Settings, team: str) -> JobStatus:
    """``POST /v1/jobs`` with ``recipe: curate``: the dataset is surveyed first, as here."""
    assert isinstance(spec, CurateJobSpec)
    return await submit_curate(spec, job_id, redis, settings, team)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobStatus,
    responses={**TOO_LARGE, **OVER_QUOTA, **IDEMPOTENT, **UNPROCESSABLE},
    openapi_extra=UPLOAD.openapi(inlined(CurateJobSpec.model_json_schema())),
)
async def curate(
    request: Request, redis: RedisDep, settings: SettingsDep, caller: WriterDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Queue a curate job on a dataset; follow it at ``GET /v1/jobs/{id}``, read it at ``.../records``."""
    job_id = uuid.uuid4().hex
    with JobUpload(settings.data_dir, job_id) as upload:  # gone unless the job is created (not on a replay)
        multipart = is_multipart(request)
        spec, body_digest = await _read_spec(request, job_id, settings)

        async def create() -> JobStatus:
            created = await submit_curate(spec, job_id, redis, settings, caller.team, uploaded=multipart)
            upload.kept = True
            return created

        return await create_job(request, redis, settings, caller, idempotency_key, body_digest, job_id, create)


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
    job_id: str, record: OwnedJob, redis: RedisDep, status: Literal["accepted", "rejected"] = "accepted"
) -> StreamingResponse:
    """NDJSON of the job's rows as they were given, in input order: accepted ones, or rejected ones with
    ``reasons`` (the first is the one counted in ``rejected_by_reason``)."""
    if not isinstance(record.spec, CurateJobSpec):
        not_found("curate job", job_id)
    return StreamingResponse(iter_records(redis, job_id, record.spec.count, status), media_type="application/x-ndjson")

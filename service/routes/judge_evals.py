"""Calibrate a judge: ``POST /v1/judge-evals`` (a ``judge-eval`` job on the ordinary queue) and its report.

The job runs the default heuristic checks and the judge on every labelled example (``workers.recipes.judge_eval``);
``GET /v1/judge-evals/{id}/report`` computes the report from its records (``service.judge_report``): catch and
false-reject rates per kind, for the checks, the judge at every ``min_score`` and both, the threshold within the
team's false-reject bound, the score distributions, the bias checks, cost and calls.

The bundled 135M model (``skillmix local-llm``'s default) is refused as a judge at submit: it cannot follow a
six-criterion JSON rubric, let alone grade against it, so a run would only spend CPU time to report an AUC of 0.5.
"""

import uuid
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request, Response, status
from redis.asyncio import Redis

from schemas.examples import Example
from schemas.jobs import JobRecord, JobStatus, JudgeEvalJobSpec
from schemas.judge_eval import JudgeEvalReport
from schemas.recipes import RecipeSpec
from schemas.settings import Settings
from service.auth import OwnedJob, WriterDep
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, OVER_QUOTA, not_found, unprocessable
from service.idempotency import RESPONSES as IDEMPOTENT
from service.idempotency import IdempotencyKey, create_job, digest
from service.judge_report import report
from service.local_llm import BUNDLED_MODEL_FILE
from service.recipes import own_submit
from store import endpoints, jobs, records
from store.examples import iter_examples

router = APIRouter(prefix="/v1/judge-evals", tags=["judge-evals"])
BUNDLED_MODEL = Path(BUNDLED_MODEL_FILE).stem.split(".")[0].lower()  # "smollm2-135m-instruct"


def is_bundled_model(model: str) -> bool:
    return model.lower().startswith(BUNDLED_MODEL)


async def submit_judge_eval(
    spec: JudgeEvalJobSpec, job_id: str, redis: Redis, settings: Settings, team: str
) -> JobStatus:
    """Resolve the judge (a 422 naming ``judge``), refuse the bundled model, store and enqueue the job."""
    endpoint = await endpoints.resolve(redis, settings, spec.judge, "judge", spec.mode)
    if is_bundled_model(endpoint.model):
        unprocessable(
            "judge",
            f"endpoint {spec.judge!r} serves the bundled {endpoint.model} (135M parameters): it cannot judge. A model "
            "this small does not follow a multi-criterion grading rubric, so its scores would not separate good "
            "from bad (AUC near 0.5) and the run would only cost time. Calibrate a capable model instead: any "
            "OpenAI-compatible endpoint (SKILLMIX_ENDPOINTS__NAME__BASE_URL and __MODEL).",
        )
    record = JobRecord(
        id=job_id,
        spec=spec,
        team=team,
        endpoint=spec.judge,
        model=endpoint.model,
        chunk_size=spec.chunk_size or settings.chunk_size,
        usd_per_mtok_prompt=endpoint.usd_per_mtok_prompt,
        usd_per_mtok_completion=endpoint.usd_per_mtok_completion,
        created_at=datetime.now(UTC),
    )
    return await jobs.submit(redis, record)


@own_submit(JudgeEvalJobSpec)
async def _submit_via_jobs(spec: RecipeSpec, job_id: str, redis: Redis, settings: Settings, team: str) -> JobStatus:
    """``POST /v1/jobs`` with ``recipe: judge-eval``: the same checks as here."""
    assert isinstance(spec, JudgeEvalJobSpec)
    return await submit_judge_eval(spec, job_id, redis, settings, team)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobStatus,
    responses={**OVER_QUOTA, **IDEMPOTENT},
)
async def create_judge_eval(
    request: Request,
    spec: JudgeEvalJobSpec,
    redis: RedisDep,
    settings: SettingsDep,
    caller: WriterDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a judge-eval: labelled examples (``label`` good/bad, optional ``kind``) and the judge's endpoint.
    Follow it at ``GET /v1/jobs/{id}``, read the report at ``GET /v1/judge-evals/{id}/report``."""
    job_id = uuid.uuid4().hex
    body_digest = digest(await request.body())

    async def create() -> JobStatus:
        return await submit_judge_eval(spec, job_id, redis, settings, caller.team)

    return await create_job(request, redis, settings, caller, idempotency_key, body_digest, job_id, create)


async def examples_of(redis: Redis, job_id: str) -> dict[int, Example]:
    found: dict[int, Example] = {}
    for kind in ("rejected", "accepted"):  # (curation is off: every record is accepted unless its call failed)
        async for example in iter_examples(redis, job_id, kind):
            found[example.index] = example
    return found


async def report_of(redis: Redis, record: JobRecord) -> JudgeEvalReport:
    if not isinstance(record.spec, JudgeEvalJobSpec):
        not_found("judge-eval", record.id)
    found = await records.get_status(redis, record.id, record)
    assert found is not None
    return report(record, found, await examples_of(redis, record.id))


@router.get("/{job_id}/report", responses=NOT_FOUND, response_model=JudgeEvalReport)
async def get_report(job_id: str, record: OwnedJob, redis: RedisDep) -> JudgeEvalReport:
    """The report, from the records so far (``settled``: the job is finished and every record is in)."""
    return await report_of(redis, record)

"""A team's quality profiles: named judge settings that job specs reference as ``quality.profile``.

``POST /v1/quality-profiles`` saves one (a name taken again is replaced) either from a finished judge-eval
(its chosen threshold: the judge's endpoint and the ``min_score`` catching most bad examples within the run's
false-reject bound; refused when no threshold met it) or from judge settings given by hand.
"""

from datetime import UTC, datetime

from fastapi import APIRouter, Response, status

from schemas.judge_eval import QualityProfile, QualityProfileCreate, QualityProfiles
from service.auth import CallerDep, WriterDep
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, not_found, unprocessable
from service.routes.judge_evals import report_of
from store import audit, endpoints, quality_profiles, records

router = APIRouter(prefix="/v1/quality-profiles", tags=["quality-profiles"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=QualityProfile)
async def save_profile(
    body: QualityProfileCreate, redis: RedisDep, settings: SettingsDep, caller: WriterDep
) -> QualityProfile:
    """Save (or replace) the caller's team's profile ``name``."""
    now = datetime.now(UTC)
    if body.judge is not None:
        assert body.judge.endpoint is not None
        await endpoints.resolve(redis, settings, body.judge.endpoint, "judge.endpoint")
        profile = QualityProfile(name=body.name, team=caller.team, judge=body.judge, created_at=now)
    else:
        assert body.judge_eval is not None
        record = await records.load_record(redis, body.judge_eval)
        if record is None or not caller.sees(record.team) or record.spec.recipe != "judge-eval":
            unprocessable("judge_eval", f"unknown judge-eval job {body.judge_eval!r}")
        found = await report_of(redis, record)
        if not found.settled:
            unprocessable("judge_eval", f"judge-eval {record.id} is {found.state}; wait until it has finished")
        if found.chosen is None:
            unprocessable("judge_eval", f"judge-eval {record.id} chose no threshold: {found.chosen_note}")
        spec = record.spec
        max_tokens = getattr(spec, "judge_max_tokens", None)
        judge = {"endpoint": record.endpoint, "min_score": found.chosen.min_score}
        if max_tokens is not None:
            judge["max_tokens"] = max_tokens
        profile = QualityProfile.model_validate(
            {
                "name": body.name,
                "team": caller.team,
                "judge": judge,
                "judge_eval": record.id,
                "max_false_reject": found.max_false_reject,
                "catch_rate": found.chosen.judge.catch_rate,
                "false_reject_rate": found.chosen.judge.false_reject_rate,
                "auc": found.bias.auc,
                "created_at": now,
            }
        )
    await quality_profiles.save(redis, profile)
    await audit.record(
        redis, caller, "quality_profile.saved", profile.name, profile.judge.model_dump_json(), team=caller.team
    )
    return profile


@router.get("", response_model=QualityProfiles)
async def list_profiles(redis: RedisDep, caller: CallerDep) -> QualityProfiles:
    return QualityProfiles(data=await quality_profiles.list_all(redis, caller.team))


@router.get("/{name}", responses=NOT_FOUND, response_model=QualityProfile)
async def get_profile(name: str, redis: RedisDep, caller: CallerDep) -> QualityProfile:
    found = await quality_profiles.get(redis, caller.team, name)
    if found is None:
        not_found("quality profile", name)
    return found


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_profile(name: str, redis: RedisDep, caller: WriterDep) -> Response:
    if not await quality_profiles.delete(redis, caller.team, name):
        not_found("quality profile", name)
    await audit.record(redis, caller, "quality_profile.deleted", name, team=caller.team)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

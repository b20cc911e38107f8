"""Skill sets: versioned and immutable; POSTing an existing name makes the next version."""

from typing import Annotated

from fastapi import APIRouter, Path, status

from schemas.base import MAX_INT
from schemas.errors import Forbidden
from schemas.skills import SkillSet, SkillSetCreate, SkillSetsPublic
from service.auth import CallerDep, WriterDep
from service.deps import RedisDep
from service.errors import NOT_FOUND, not_found
from store import audit
from store.skill_sets import get_skill_set, list_skill_sets, save_skill_set

router = APIRouter(prefix="/v1/skill-sets", tags=["skill-sets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SkillSet)
async def create_skill_set(body: SkillSetCreate, redis: RedisDep, caller: WriterDep) -> SkillSet:
    """A new version of one of the team's sets (``published: true``, admins only: of a set every team sees)."""
    if body.published and not caller.is_admin:
        raise Forbidden("only an admin key may publish a skill set to every team; leave out `published`")
    saved = await save_skill_set(redis, caller.team, body)
    await audit.record(redis, caller, "skill_set.created", saved.ref, "published" if body.published else "")
    return saved


@router.get("", response_model=SkillSetsPublic)
async def all_skill_sets(redis: RedisDep, caller: CallerDep) -> SkillSetsPublic:
    """The team's own sets and the published ones."""
    found = await list_skill_sets(redis, caller.team)
    return SkillSetsPublic(data=found, count=len(found))


@router.get("/{name}", responses=NOT_FOUND, response_model=SkillSet)
async def latest_skill_set(name: str, redis: RedisDep, caller: CallerDep) -> SkillSet:
    found = await get_skill_set(redis, caller.team, name)
    if found is None:
        not_found("skill set", name)
    return found


@router.get("/{name}/{version}", responses=NOT_FOUND, response_model=SkillSet)
async def skill_set_version(
    name: str, version: Annotated[int, Path(ge=1, le=MAX_INT)], redis: RedisDep, caller: CallerDep
) -> SkillSet:
    found = await get_skill_set(redis, caller.team, name, version)
    if found is None:
        not_found("skill set", f"{name}@{version}")
    return found

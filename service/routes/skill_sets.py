"""Skill sets: versioned and immutable; POSTing an existing name makes the next version."""

from fastapi import APIRouter, status

from schemas.skills import SkillSet, SkillSetCreate, SkillSetsPublic
from service.deps import RedisDep
from service.errors import NOT_FOUND, not_found
from store.skill_sets import get_skill_set, list_skill_sets, save_skill_set

router = APIRouter(prefix="/v1/skill-sets", tags=["skill-sets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SkillSet)
async def create_skill_set(body: SkillSetCreate, redis: RedisDep) -> SkillSet:
    return await save_skill_set(redis, body)


@router.get("", response_model=SkillSetsPublic)
async def all_skill_sets(redis: RedisDep) -> SkillSetsPublic:
    found = await list_skill_sets(redis)
    return SkillSetsPublic(data=found, count=len(found))


@router.get("/{name}", responses=NOT_FOUND, response_model=SkillSet)
async def latest_skill_set(name: str, redis: RedisDep) -> SkillSet:
    found = await get_skill_set(redis, name)
    if found is None:
        not_found("skill set", name)
    return found


@router.get("/{name}/{version}", responses=NOT_FOUND, response_model=SkillSet)
async def skill_set_version(name: str, version: int, redis: RedisDep) -> SkillSet:
    found = await get_skill_set(redis, name, version)
    if found is None:
        not_found("skill set", f"{name}@{version}")
    return found

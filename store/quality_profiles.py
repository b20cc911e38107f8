"""A team's quality profiles: named judge settings (``quality.profile`` in a job spec), one hash per team.

Saving a name again replaces it: a profile is what the team trusts *now*; each job keeps the concrete
settings it was submitted with (the name is resolved at submit), so replacing a profile changes no job.
"""

from redis.asyncio import Redis

from schemas.judge_eval import QualityProfile
from store import keys


async def save(redis: Redis, profile: QualityProfile) -> None:
    await redis.hset(keys.quality_profiles(profile.team), profile.name, profile.model_dump_json())


async def get(redis: Redis, team: str, name: str) -> QualityProfile | None:
    raw = await redis.hget(keys.quality_profiles(team), name)
    return None if raw is None else QualityProfile.model_validate_json(raw)


async def list_all(redis: Redis, team: str) -> list[QualityProfile]:
    found = await redis.hgetall(keys.quality_profiles(team))
    return sorted((QualityProfile.model_validate_json(v) for v in found.values()), key=lambda p: p.name)


async def delete(redis: Redis, team: str, name: str) -> bool:
    return bool(await redis.hdel(keys.quality_profiles(team), name))

"""``quality.profile`` in a job spec: resolved at submit into the team's saved judge settings.

The stored job then names its judge's endpoint and ``min_score`` itself (and keeps the profile's name as
provenance), so a worker never looks a profile up and replacing a profile later changes no job.
"""

from typing import TypeVar

from redis.asyncio import Redis

from schemas.recipes import RecipeSpec
from service.errors import unprocessable
from store import quality_profiles

S = TypeVar("S", bound=RecipeSpec)


async def resolve_profile(redis: Redis, team: str, spec: S) -> S:
    """The spec with ``quality.judge`` set from the team's profile named in ``quality.profile`` (422s naming
    ``quality.profile`` for an unknown name, or for a spec giving both a profile and ``quality.judge``)."""
    quality = getattr(spec, "quality", None) if "quality" in type(spec).model_fields else None
    if quality is None or quality.profile is None:
        return spec
    if quality.judge is not None:
        unprocessable("quality.profile", "give quality.profile or quality.judge, not both: the profile sets the judge")
    profile = await quality_profiles.get(redis, team, quality.profile)
    if profile is None:
        have = [p.name for p in await quality_profiles.list_all(redis, team)]
        hint = (
            f"this team's profiles: {', '.join(have)}" if have else "save one with `skillmix judge-eval --save-profile`"
        )
        unprocessable("quality.profile", f"unknown quality profile {quality.profile!r}; {hint}")
    resolved = quality.model_copy(update={"judge": profile.judge.model_copy()})
    return spec.model_copy(update={"quality": resolved})

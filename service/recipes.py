"""The API side of the recipe registry: what a spec's ``prepare_submit`` may read (``RouteContext``), and the
recipes that keep their own submit path (a dataset surveyed first), registered by their route module."""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from redis.asyncio import Redis

from schemas.jobs import JobStatus
from schemas.recipes import RecipeSpec, SubmitContext
from schemas.settings import Settings
from schemas.skills import SkillSet, SkillSetCreate, parse_skill_set_ref
from service.errors import unprocessable
from store import endpoints, records
from store.examples import count as count_examples
from store.skill_sets import get_skill_set, save_skill_set, versions

Submitter = Callable[[RecipeSpec, str, Redis, Settings, str], Awaitable[JobStatus]]
SUBMITTERS: dict[type[RecipeSpec], Submitter] = {}
"""Specs that ``POST /v1/jobs`` hands to their recipe's own submit path (the same as its own route's)."""


def own_submit(spec: type[RecipeSpec]) -> Callable[[Submitter], Submitter]:
    """Register ``submit(spec, job_id, redis, settings, team)`` as the way jobs of ``spec`` are submitted."""

    def register(submit: Submitter) -> Submitter:
        SUBMITTERS[spec] = submit
        return submit

    return register


class RouteContext(SubmitContext):
    """``SubmitContext`` over the request's Redis and settings, seen as ``team`` (the caller's): its skill sets
    and published ones, its own jobs only; ``mode`` is the spec's (a batch job's endpoints must serve batches)."""

    def __init__(
        self, redis: Redis, settings: Settings, team: str, mode: Literal["online", "batch"] = "online"
    ) -> None:
        self.redis, self.settings, self.team, self.mode = redis, settings, team, mode
        self.data_dir: Path = settings.data_dir

    async def skill_set(self, ref: str | SkillSetCreate, k: int) -> SkillSet:
        if not isinstance(ref, str):
            return await save_skill_set(self.redis, self.team, ref.model_copy(update={"published": False}))
        name, version = parse_skill_set_ref(ref)
        found = await get_skill_set(self.redis, self.team, name, version)
        if found is None:
            have = await versions(self.redis, self.team, name)
            hint = f"versions of {name!r}: {have}" if have else "create it with POST /v1/skill-sets"
            unprocessable("skill_set", f"unknown skill set {ref!r}; {hint}")
        if len(found.skills) < k:
            unprocessable("k", f"k={k} but skill set {found.ref} has only {len(found.skills)} skills")
        return found

    async def finished_source(self, field: str, job_id: str, verb: str) -> int:
        source = await records.get_status(self.redis, job_id)
        if source is None or source.team != self.team:  # another team's job reads as an unknown one
            unprocessable(field, f"unknown job {job_id!r}")
        record = await records.load_record(self.redis, job_id)
        if record is not None and not record.spec.has_examples:
            unprocessable(field, f"job {job_id} is a skill extraction; it has no examples to {verb}")
        if not source.state.finished:
            unprocessable(field, f"job {job_id} is {source.state.value}; wait until it finishes")
        accepted = await count_examples(self.redis, job_id, "accepted")
        if accepted < 1:
            unprocessable(field, f"job {job_id} has no accepted examples")
        return accepted

    async def endpoint(self, name: str, field: str) -> None:
        await endpoints.resolve(self.redis, self.settings, name, field, self.mode)

"""Versioned, immutable skill sets: saving a name again makes a new version, never an overwrite.

Each team has its own names (two teams' ``coding`` are two sets); a published set (``published: true``, admin
keys only, e.g. the bundled starter set) lives in the ``_public`` namespace, which every team reads. A name is
looked up in the team's own sets first, then in the published ones.
"""

import orjson
from redis.asyncio import Redis

from schemas.skills import SkillSet, SkillSetCreate
from store import keys

PUBLIC = "_public"  # not a valid team name, so no team can own it

# Next version = HLEN + 1, taken and written in one step so concurrent saves get distinct versions.
_SAVE = """
local version = redis.call('HLEN', KEYS[1]) + 1
local body = string.gsub(ARGV[1], '"version":0', '"version":' .. version, 1)
redis.call('HSET', KEYS[1], version, body)
redis.call('SADD', KEYS[2], ARGV[2])
return version
"""


async def save_skill_set(redis: Redis, team: str, create: SkillSetCreate) -> SkillSet:
    """Save the next version of ``create.name`` in ``team``'s sets, or in the published ones."""
    namespace = PUBLIC if create.published else team
    body = orjson.dumps({**create.model_dump(mode="json"), "version": 0}).decode()
    script_keys = (keys.skill_set(namespace, create.name), keys.skill_sets_index(namespace))
    version = int(await redis.eval(_SAVE, 2, *script_keys, body, create.name))
    return SkillSet(**create.model_dump(), version=version)


async def _get(redis: Redis, namespace: str, name: str, version: int | None) -> SkillSet | None:
    key = keys.skill_set(namespace, name)
    if version is None:
        version = await redis.hlen(key)
        if not version:
            return None
    raw = await redis.hget(key, str(version))
    return None if raw is None else SkillSet.model_validate_json(raw)


async def get_skill_set(redis: Redis, team: str, name: str, version: int | None = None) -> SkillSet | None:
    """The team's own set of that name, else the published one; None if neither."""
    if await redis.exists(keys.skill_set(team, name)):
        return await _get(redis, team, name, version)
    return await _get(redis, PUBLIC, name, version)


async def list_skill_sets(redis: Redis, team: str) -> list[SkillSet]:
    """The latest version of every set the team sees (its own, then published ones it does not shadow), by name."""
    own = {n.decode() for n in await redis.smembers(keys.skill_sets_index(team))}
    public = {n.decode() for n in await redis.smembers(keys.skill_sets_index(PUBLIC))} - own
    found = [await _get(redis, team if name in own else PUBLIC, name, None) for name in sorted(own | public)]
    return [s for s in found if s is not None]


async def versions(redis: Redis, team: str, name: str) -> list[int]:
    namespace = team if await redis.exists(keys.skill_set(team, name)) else PUBLIC
    return sorted(int(v) for v in await redis.hkeys(keys.skill_set(namespace, name)))


async def publish_once(redis: Redis, create: SkillSetCreate) -> None:
    """Publish ``create`` as version 1 unless it was published before (every API process calls this at start
    for the bundled starter set; the first one saves it)."""
    if await redis.set(keys.skill_set(PUBLIC, create.name) + ":seeded", 1, nx=True):
        await save_skill_set(redis, "", create.model_copy(update={"published": True}))

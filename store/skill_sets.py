"""Versioned, immutable skill sets: saving a name again makes a new version, never an overwrite."""

import orjson
from redis.asyncio import Redis

from schemas.skills import SkillSet, SkillSetCreate
from store import keys

# Next version = HLEN + 1, taken and written in one step so concurrent saves get distinct versions.
_SAVE = """
local version = redis.call('HLEN', KEYS[1]) + 1
local body = string.gsub(ARGV[1], '"version":0', '"version":' .. version, 1)
redis.call('HSET', KEYS[1], version, body)
redis.call('SADD', KEYS[2], ARGV[2])
return version
"""


async def save_skill_set(redis: Redis, create: SkillSetCreate) -> SkillSet:
    body = orjson.dumps({**create.model_dump(mode="json"), "version": 0}).decode()
    version = int(await redis.eval(_SAVE, 2, keys.skill_set(create.name), keys.SKILL_SETS_INDEX, body, create.name))
    return SkillSet(**create.model_dump(), version=version)


async def get_skill_set(redis: Redis, name: str, version: int | None = None) -> SkillSet | None:
    key = keys.skill_set(name)
    if version is None:
        version = await redis.hlen(key)
        if not version:
            return None
    raw = await redis.hget(key, str(version))
    return None if raw is None else SkillSet.model_validate_json(raw)


async def list_skill_sets(redis: Redis) -> list[SkillSet]:
    """The latest version of every skill set, by name."""
    names = sorted(n.decode() for n in await redis.smembers(keys.SKILL_SETS_INDEX))
    found = [await get_skill_set(redis, name) for name in names]
    return [s for s in found if s is not None]


async def versions(redis: Redis, name: str) -> list[int]:
    return sorted(int(v) for v in await redis.hkeys(keys.skill_set(name)))

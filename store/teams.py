"""Teams and their API keys in Redis; a team's usage against its quotas (``store.quotas`` enforces them).

A key is ``smx_`` + 43 URL-safe characters (256 random bits). Only its SHA-256 is kept: a fast hash is enough
for a secret with 256 bits of entropy (nothing to brute-force), and it makes the lookup one GET of
``apikey:sha:{sha256}``, which holds the ``Caller`` the key stands for. Revoking deletes that entry, so the
next request on any API process is refused: no process caches a key.
"""

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from arq.connections import ArqRedis
from redis.asyncio import Redis

from schemas.base import StrictModel
from schemas.errors import BadInput, Conflict, NotFound
from schemas.teams import (
    KEY_PREFIX,
    ApiKey,
    Caller,
    KeyCreated,
    Role,
    Team,
    TeamCreate,
    TeamSpend,
    TeamUpdate,
    TeamUsage,
)
from store import keys, lifecycle, quotas, records
from store.budget import BudgetExhausted, NotPaused, TeamBudgetExhausted

QUOTA_FIELDS = ("max_running_jobs", "max_usd_per_day", "max_tokens_per_day")
VISIBLE = 8  # characters of the key after its prefix that listings show


def digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _team(raw: dict[bytes, bytes]) -> Team:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return Team.model_validate(fields)


def team_fields(team: Team) -> dict[str, str]:
    """The ``team:{t}`` hash of a team (absent quota fields: no limit)."""
    return {k: str(v) for k, v in team.model_dump(mode="json").items() if v is not None}


async def create_team(redis: Redis, create: TeamCreate) -> Team:
    """A new team; a name taken is a 409."""
    team = Team(**create.model_dump(), created_at=datetime.now(UTC))
    if not await redis.sadd(keys.TEAMS, team.name):
        raise Conflict(f"team {team.name!r} exists; change its limits with `skillmix teams update {team.name}`")
    await redis.hset(keys.team(team.name), mapping=team_fields(team))
    return team


async def get_team(redis: Redis, name: str) -> Team | None:
    raw = await redis.hgetall(keys.team(name))
    return _team(raw) if raw else None


async def list_teams(redis: Redis) -> list[Team]:
    names = sorted(n.decode() for n in await redis.smembers(keys.TEAMS))
    found = [await get_team(redis, name) for name in names]
    return [t for t in found if t is not None]


async def update_team(redis: Redis, name: str, update: TeamUpdate) -> Team:
    """Replace the limits given (``null`` removes one), atomically; a missing team is a ``NotFound``. A day cap
    raised or removed resumes the team's jobs its budget paused (``resume_team``)."""
    if not await redis.sismember(keys.TEAMS, name):
        raise NotFound(f"team {name!r} not found")
    async with redis.pipeline(transaction=True) as pipe:
        for field in update.model_fields_set & set(QUOTA_FIELDS):
            value = getattr(update, field)
            if value is None:
                pipe.hdel(keys.team(name), field)
            else:
                pipe.hset(keys.team(name), field, str(value))
        await pipe.execute()
    if update.model_fields_set & {"max_usd_per_day", "max_tokens_per_day"}:
        await resume_team(redis, name)
    found = await get_team(redis, name)
    assert found is not None
    return found


async def usage(redis: Redis, name: str) -> TeamUsage:
    """The team's unfinished jobs and what its jobs were charged this UTC day (for ``GET /v1/teams/...``)."""
    if not await redis.sismember(keys.TEAMS, name):
        raise NotFound(f"team {name!r} not found")
    day = await quotas.utc_day(redis)
    micro_usd, tokens = await quotas.spent(redis, name, day)
    return TeamUsage(
        team=name,
        day=quotas.day_date(day),
        running_jobs=await quotas.running_jobs(redis, name),
        spent_today=TeamSpend(usd=micro_usd / 1e6, tokens=tokens),
        at_day_cap=await quotas.over_cap(redis, name),
    )


async def resume_team(redis: Redis, name: str) -> int:
    """Resume every job of the team that its day budget paused, if the team has room now (a raised cap, a new
    UTC day) and the job's own budget has room; returns how many. A job whose own budget is spent stays paused,
    now by its own budget. Called by ``update_team`` and by the worker's watchdog."""
    arq = redis if isinstance(redis, ArqRedis) else ArqRedis(pool_or_conn=redis.connection_pool)
    resumed = 0
    for raw_id in await redis.zrange(keys.team_running(name), 0, -1):
        job_id = raw_id.decode()
        if await redis.hget(keys.meta(job_id), "paused_by") != b"team":
            continue
        record = await records.load_record(redis, job_id)
        if record is None:
            continue
        try:
            await lifecycle.resume(arq, record, team_only=True)
        except TeamBudgetExhausted:
            break  # the team is still at its cap: so is every other job of it
        except (BudgetExhausted, NotPaused):
            continue
        resumed += 1
    return resumed


async def create_key(redis: Redis, team: str, role: Role, name: str, created_by: str) -> KeyCreated:
    """Mint a key for ``team``; the returned ``key`` is the only copy there will ever be."""
    if not await redis.sismember(keys.TEAMS, team):
        raise BadInput(f"unknown team {team!r}; create it first with `skillmix teams create {team}`", "team")
    created = new_key(KEY_PREFIX + secrets.token_urlsafe(32), team, role, name, created_by)
    async with redis.pipeline(transaction=True) as pipe:
        for key, value in key_entries(created).items():
            if isinstance(value, dict):
                pipe.hset(key, mapping=value)
            else:
                pipe.set(key, value)
        pipe.zadd(keys.API_KEYS, {created.id: created.created_at.timestamp()})
        await pipe.execute()
    return created


def new_key(raw_key: str, team: str, role: Role, name: str, created_by: str) -> KeyCreated:
    return KeyCreated(
        id="key_" + secrets.token_hex(8),
        prefix=raw_key[: len(KEY_PREFIX) + VISIBLE],
        team=team,
        role=role,
        name=name,
        created_at=datetime.now(UTC),
        created_by=created_by,
        key=raw_key,
    )


def key_entries(created: KeyCreated) -> dict[str, dict[str, str] | str]:
    """What a key is stored as (besides its ``apikeys`` index entry): its listing with the key's SHA-256, and the
    lookup entry from that SHA-256 to the caller. The raw key itself is in neither."""
    listed = created.model_dump(mode="json", exclude={"key", "revoked_at"})
    caller = Caller(key_id=created.id, team=created.team, role=created.role, name=created.name)
    sha = digest(created.key)
    return {
        keys.api_key(created.id): {**{k: str(v) for k, v in listed.items()}, "sha": sha},
        keys.api_key_by_hash(sha): KeyLookup(sha=sha, caller=caller).model_dump_json(),
    }


class KeyLookup(StrictModel):
    """The lookup entry of a live key: the caller, and the SHA-256 it is filed under (compared in constant time,
    in the same read)."""

    sha: str
    caller: Caller


async def lookup(redis: Redis, raw_key: str) -> Caller | None:
    """The caller a presented key stands for; None for an unknown or revoked key."""
    sha = digest(raw_key)
    raw = await redis.get(keys.api_key_by_hash(sha))
    if raw is None:
        return None
    found = KeyLookup.model_validate_json(raw)
    return found.caller if hmac.compare_digest(found.sha, sha) else None


def _key(raw: dict[bytes, bytes]) -> ApiKey:
    fields = {k.decode(): v.decode() for k, v in raw.items() if k != b"sha"}
    return ApiKey.model_validate(fields)


async def get_key(redis: Redis, key_id: str) -> ApiKey | None:
    raw = await redis.hgetall(keys.api_key(key_id))
    return _key(raw) if raw else None


async def list_keys(redis: Redis, team: str | None = None) -> list[ApiKey]:
    """Every key (revoked ones too, marked), oldest first; only ``team``'s when given."""
    ids = [i.decode() for i in await redis.zrange(keys.API_KEYS, 0, -1)]
    found = [await get_key(redis, i) for i in ids]
    return [k for k in found if k is not None and (team is None or k.team == team)]


async def revoke_key(redis: Redis, key_id: str) -> ApiKey:
    """Refuse the key from now on, on every API process (its lookup entry is deleted). Revoking twice is a no-op."""
    sha = await redis.hget(keys.api_key(key_id), "sha")
    if sha is None:
        raise NotFound(f"key {key_id!r} not found")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.api_key_by_hash(sha.decode()))
        pipe.hsetnx(keys.api_key(key_id), "revoked_at", datetime.now(UTC).isoformat())
        await pipe.execute()
    found = await get_key(redis, key_id)
    assert found is not None
    return found

"""Teams and API keys over HTTP: what ``skillmix teams`` / ``skillmix keys`` do on Redis, for keys.

Who may do what:

- teams: admins create, change and see every team; a member's or viewer's key sees only its own team (the
  listing holds just that one, and another team answers 404 exactly as a missing one does). Writes by a
  non-admin are 403.
- keys: a key never creates a key with more rights than its own. Viewers create and revoke nothing (403);
  members create member or viewer keys of their own team and revoke their team's non-admin keys; admins do
  anything. A non-admin naming another team in ``POST /v1/keys`` gets 403 whether that team exists or not (no
  existence leak); another team's key id answers 404 exactly as a missing one does.

Every write is in the audit trail (``key.created``, ``key.revoked``, ``team.created``, ``team.changed``) under
the caller's key id and the team changed; no key material goes into it.
"""

from typing import Any

from fastapi import APIRouter, Response, status

from schemas.errors import Forbidden, NotFound
from schemas.teams import (
    ApiKey,
    Caller,
    KeyCreate,
    KeyCreated,
    KeysPublic,
    Team,
    TeamCreate,
    TeamsPublic,
    TeamUpdate,
    TeamUsage,
)
from service.auth import AdminDep, CallerDep, WriterDep
from service.deps import RedisDep
from service.errors import NOT_FOUND, Detail
from store import audit, teams

router = APIRouter(prefix="/v1", tags=["teams"])

FORBIDDEN: dict[int | str, dict[str, Any]] = {403: {"model": Detail, "description": "the key's role may not do this"}}
TAKEN: dict[int | str, dict[str, Any]] = {409: {"model": Detail, "description": "a team of that name exists"}}


def _team_not_found(name: str) -> NotFound:
    """The one answer for a team the caller may not see, whether it exists or not."""
    return NotFound(f"team {name!r} not found")


def _key_not_found(key_id: str) -> NotFound:
    return NotFound(f"key {key_id!r} not found")


def _limits(team: Team, fields: set[str] | None = None) -> str:
    """The audit detail of a team's limits (``none``: no limit)."""
    chosen = [f for f in teams.QUOTA_FIELDS if fields is None or f in fields]
    return ", ".join(f"{f}={'none' if getattr(team, f) is None else getattr(team, f)}" for f in chosen)


@router.get("/teams", response_model=TeamsPublic)
async def list_teams(redis: RedisDep, caller: CallerDep) -> TeamsPublic:
    """Every team (admins); the caller's own team (members and viewers)."""
    found = [t for t in await teams.list_teams(redis) if caller.sees(t.name)]
    return TeamsPublic(data=found, count=len(found))


@router.post("/teams", status_code=status.HTTP_201_CREATED, response_model=Team, responses={**FORBIDDEN, **TAKEN})
async def create_team(body: TeamCreate, redis: RedisDep, caller: AdminDep) -> Team:
    """A new team (admins); a name taken is a 409. Give it keys with ``POST /v1/keys``."""
    team = await teams.create_team(redis, body)
    await audit.record(redis, caller, "team.created", team.name, _limits(team), team=team.name)
    return team


@router.get("/teams/{name}", response_model=Team, responses=NOT_FOUND)
async def get_team(name: str, redis: RedisDep, caller: CallerDep) -> Team:
    found = await teams.get_team(redis, name) if caller.sees(name) else None
    if found is None:
        raise _team_not_found(name)
    return found


@router.get("/teams/{name}/usage", response_model=TeamUsage, responses=NOT_FOUND)
async def team_usage(name: str, redis: RedisDep, caller: CallerDep) -> TeamUsage:
    """What the team uses now against its limits: unfinished jobs, spend and tokens this UTC day, and why its
    jobs are paused if it is at a day cap (seen by whoever may see the team)."""
    if not caller.sees(name):
        raise _team_not_found(name)
    return await teams.usage(redis, name)  # a missing team: the same NotFound


@router.patch("/teams/{name}", response_model=Team, responses={**NOT_FOUND, **FORBIDDEN})
async def update_team(name: str, body: TeamUpdate, redis: RedisDep, caller: AdminDep) -> Team:
    """Replace the limits given (``null`` removes one); the others stay (admins)."""
    if await teams.get_team(redis, name) is None:
        raise _team_not_found(name)
    team = await teams.update_team(redis, name, body)
    changed = _limits(team, body.model_fields_set)
    await audit.record(redis, caller, "team.changed", name, changed, team=name)
    return team


@router.get("/keys", response_model=KeysPublic, responses=NOT_FOUND)
async def list_keys(redis: RedisDep, caller: CallerDep, team: str | None = None) -> KeysPublic:
    """Keys as listed (id, visible prefix, team, role, name, created, revoked; never the key): every team's for
    admins (``team`` narrows it), the caller's team's for others (another ``team`` is a 404, as a missing one)."""
    if team is not None and (not caller.sees(team) or await teams.get_team(redis, team) is None):
        raise _team_not_found(team)
    found = await teams.list_keys(redis, team if caller.is_admin else caller.team)
    return KeysPublic(data=found, count=len(found))


def _may_create(caller: Caller, body: KeyCreate) -> str:
    """The team the new key is for, if the caller may create it; else a 403 saying what it may do."""
    team = body.team or caller.team
    if team != caller.team and not caller.is_admin:
        raise Forbidden(f"a {caller.role.value} key creates keys for its own team only; leave out `team`")
    if not caller.role.covers(body.role):
        raise Forbidden(f"a {caller.role.value} key may not create a key with more rights ({body.role.value})")
    return team


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, responses=FORBIDDEN)
async def create_key(body: KeyCreate, response: Response, redis: RedisDep, caller: WriterDep) -> KeyCreated:
    """A new key, returned this once in ``key`` (stored only as a hash). Never more rights than the caller's:
    members create member and viewer keys of their own team; admins any key of any team."""
    team = _may_create(caller, body)
    created = await teams.create_key(redis, team, body.role, body.name, caller.key_id)
    await audit.record(redis, caller, "key.created", created.id, f"role {created.role.value}", team=team)
    response.headers["Cache-Control"] = "no-store"  # the body holds a secret: no proxy or browser keeps it
    return created


@router.delete("/keys/{key_id}", response_model=ApiKey, responses={**NOT_FOUND, **FORBIDDEN})
async def revoke_key(key_id: str, redis: RedisDep, caller: WriterDep) -> ApiKey:
    """Refuse the key from now on on every API process. Members revoke their team's member and viewer keys;
    another team's key answers 404, as a missing one. Revoking twice changes nothing."""
    found = await teams.get_key(redis, key_id)
    if found is None or not caller.sees(found.team):
        raise _key_not_found(key_id)
    if not caller.role.covers(found.role):
        raise Forbidden(f"a {caller.role.value} key may not revoke a key with more rights ({found.role.value})")
    revoked = await teams.revoke_key(redis, key_id)
    if found.revoked_at is None:
        await audit.record(redis, caller, "key.revoked", key_id, f"role {found.role.value}", team=found.team)
    return revoked

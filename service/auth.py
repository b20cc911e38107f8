"""Who is asking: every ``/v1`` route and ``/metrics`` take ``Authorization: Bearer <key>``.

``authenticate`` turns the header into a ``Caller`` (one Redis GET, no cache: a revoked key is refused on the
next request by every API process). Failed attempts are counted per client address in Redis, so a burst of
guesses from one place is a 429 on every API process. Roles are checked by ``writer`` (member or admin) and
``admin``; ownership by ``owned_job``: another team's job answers exactly as a missing one does.
"""

import math
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from schemas.errors import Forbidden, NotFound, OverQuota, Unauthorized
from schemas.jobs import JobRecord
from schemas.teams import Caller
from service.deps import RedisDep, SettingsDep
from store import keys, records, teams


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _refuse(request: Request, redis: RedisDep, window_s: int, why: str) -> Unauthorized:
    """Count the failure against the client's address; the error to raise."""
    key = keys.auth_failures(_client(request))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window_s, nx=True)  # the window starts at the first failure
        pipe.incr(key)
        await pipe.execute()
    return Unauthorized(why)


async def _throttle(request: Request, redis: RedisDep, settings: SettingsDep) -> None:
    """429 while the client's address is over its failed authentications for the window.

    Every request from there is refused meanwhile, a good key's too: were a right key let through, a guesser
    would still learn which guess was right (200 against 429), and the throttle would not slow guessing at
    all. The price: a client behind the same address (a NAT, a proxy) as a guesser waits out the window. For
    the same reason a success never resets the count (one's own viewer key would reset it between guesses).
    The count is of failures already answered, so requests in flight at once from one address may overshoot
    the burst by as many."""
    key = keys.auth_failures(_client(request))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, ttl_ms = await pipe.execute()
    failures = int(raw or 0)
    if failures < settings.auth_fail_burst:
        return
    if ttl_ms == -1:  # no expiry (cannot happen through ``_refuse``; never lock an address out for good)
        await redis.expire(key, settings.auth_fail_window_s)
        ttl_ms = settings.auth_fail_window_s * 1000
    retry = max(1, math.ceil(ttl_ms / 1000))  # rounded up: a client that waits this long is let in
    raise OverQuota(
        f"too many failed authentications from this address; retry in {retry} s",
        quota="auth_failures",
        limit=settings.auth_fail_burst,
        used=failures,
        retry_after_s=retry,
    )


BEARER = HTTPBearer(
    auto_error=False, scheme_name="ApiKey", description="an API key (`smx_...`): `Authorization: Bearer <key>`"
)
"""Only documents the scheme (OpenAPI ``securitySchemes``, the docs' Authorize button): ``authenticate`` reads
the header itself, to say exactly what is wrong with it and to count the failure."""


async def authenticate(
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> Caller:
    cached: Caller | None = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    await _throttle(request, redis, settings)
    header = request.headers.get("authorization")
    window = settings.auth_fail_window_s
    if header is None:
        raise await _refuse(request, redis, window, "no API key: send the header `Authorization: Bearer <key>`")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise await _refuse(request, redis, window, "malformed Authorization header: use `Bearer <key>`")
    caller = await teams.lookup(redis, token)
    if caller is None:
        raise await _refuse(request, redis, window, "unknown or revoked API key")
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


async def writer(caller: CallerDep) -> Caller:
    """A member's or an admin's key: a viewer's is read-only."""
    if caller.role.rank < 1:
        raise Forbidden(f"key {caller.key_id} is a viewer's: it may read its team's resources, not change them")
    return caller


async def admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise Forbidden(f"key {caller.key_id} is a {caller.role.value}'s; this needs an admin key")
    return caller


WriterDep = Annotated[Caller, Depends(writer)]
AdminDep = Annotated[Caller, Depends(admin)]


def job_not_found(job_id: str) -> NotFound:
    """The one answer for a job the caller may not see, whether it exists or not (no existence leak)."""
    return NotFound(f"job {job_id!r} not found")


async def owned_job(job_id: str, caller: CallerDep, redis: RedisDep) -> JobRecord:
    """The job, if it is the caller's team's (or the caller is an admin); else exactly a missing job's 404."""
    record = await records.load_record(redis, job_id)
    if record is None or not caller.sees(record.team):
        raise job_not_found(job_id)
    return record


OwnedJob = Annotated[JobRecord, Depends(owned_job)]

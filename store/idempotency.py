"""Idempotency keys: a team's creating request answered once, its response kept 24 h for the same key.

One string per (team, key), holding an ``IdempotentRecord`` as JSON:

- *pending* (``owner`` set, no ``status``): a request claimed the key (``SET NX``) and is creating the job. Its
  lease (``LEASE_S``) is renewed while it works (``held``), so a crashed API process frees the key within a
  lease, and a slow one keeps it.
- *done* (``status`` and ``body``): the first response, kept ``KEEP_S`` for a repeat to be answered with.

Only the owner (the exact pending value, compared in a script) may renew, complete or release a claim, so a
request whose lease ran out can never overwrite another's record. Keys are passed as KEYS.

A claim also notes, for ``KEEP_S``, which job it is about to create (``{key}:job`` = "fingerprint job_id"). An
API process killed after creating the job but before keeping the response leaves that note behind: the next
claim of the key gets it (``Claim.previous``), so the retry answers with that job instead of creating a
second one (``service.idempotency``).
"""

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.base import StrictModel
from store import keys
from store.connection import REDIS_ERRORS

KEEP_S = 24 * 3600  # a completed key answers repeats this long
LEASE_S = 30  # a pending claim lives this long without renewal (a crashed API process frees it)
RENEW_S = LEASE_S / 3

# KEYS[1] the record; ARGV[1] the owner's pending value
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0
"""
# KEYS: the record, its job note. ARGV: pending value, lease ms, "fingerprint job_id", keep ms.
# {1, previous note or ''} when claimed; {0, current record or ''} when held by another request (or done).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local previous = redis.call('GET', KEYS[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return {1, previous or ''}
end
return {0, redis.call('GET', KEYS[1]) or ''}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class IdempotentRecord(StrictModel):
    """What a key holds: the request's fingerprint and, once done, the response to repeat."""

    fingerprint: str
    owner: str = ""  # pending: the claiming request's random id
    status: int | None = None  # done: the HTTP status of the first response
    body: str = ""  # done: its JSON body


@dataclass(frozen=True)
class Claim:
    """A key this request holds (pending) until it completes or releases it."""

    key: str
    pending: str  # the exact value written, which identifies the owner
    previous: tuple[str, str] | None = None  # (fingerprint, job id) an earlier claim was creating, if noted


async def claim(
    redis: Redis, team: str, idempotency_key: str, fingerprint: str, job_id: str = ""
) -> Claim | IdempotentRecord:
    """Claim the key for this request (noting ``job_id``, the job it will create), or return what another
    request left there (pending or done)."""
    key = keys.idempotency(team, hashlib.sha256(idempotency_key.encode()).hexdigest())
    pending = IdempotentRecord(fingerprint=fingerprint, owner=uuid.uuid4().hex).model_dump_json()
    note = f"{fingerprint} {job_id}"
    while True:
        won, raw = await redis.eval(_CLAIM, 2, key, key + ":job", pending, LEASE_S * 1000, note, KEEP_S * 1000)
        if won:
            fp, _, previous_job = raw.decode().partition(" ")
            return Claim(key, pending, (fp, previous_job) if previous_job else None)
        if raw:  # (empty: released or expired since the SET: try again)
            return IdempotentRecord.model_validate_json(raw)


async def finish(redis: Redis, held: Claim, status: int, body: str) -> bool:
    """Keep the response for repeats; False if the claim was lost meanwhile (its lease ran out)."""
    update = {"owner": "", "status": status, "body": body}
    done = IdempotentRecord.model_validate_json(held.pending).model_copy(update=update)
    return bool(await redis.eval(_FINISH, 1, held.key, held.pending, done.model_dump_json(), KEEP_S * 1000))


async def release(redis: Redis, held: Claim) -> None:
    """Free the key: the request created nothing, so a retry may try again."""
    await redis.eval(_RELEASE, 1, held.key, held.pending)


@asynccontextmanager
async def held(redis: Redis, claimed: Claim) -> AsyncIterator[None]:
    """Renew the claim's lease while the block runs (the first request may take longer than a lease)."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            with suppress(*REDIS_ERRORS):  # a blip: the next renewal (or the lease's slack) covers it
                if not await redis.eval(_RENEW, 1, claimed.key, claimed.pending, LEASE_S * 1000):
                    return

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

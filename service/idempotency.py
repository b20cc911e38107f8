"""Creating a job over HTTP, once: ``Idempotency-Key`` on every route that creates one, and its audit entry.

``POST /v1/jobs``, ``POST /v1/curate`` and ``POST /v1/skill-sets/extract`` hand their creation to
``create_job``. Without the header it just creates. With it, scoped to the caller's team:

- a new key is claimed before the job is created (``store.idempotency``); the 201 is kept 24 h;
- the same key and the same request again answers that 201 (same body, same job id) with
  ``Idempotent-Replayed: true``, creating and enqueueing nothing;
- the same key while the first is still running *waits* for it (up to ``idempotency_wait_s``, polling Redis)
  and then answers as above; past that, a 409 with ``Retry-After`` asks the client to retry (a client's retry
  of a slow upload survey should not hold a connection open for minutes);
- the same key with another request (another body or route) is a 422 naming the header;
- a first request that fails (any 4xx/5xx: nothing was created) releases the key, so a retry runs afresh.

The fingerprint is the SHA-256 of the route and the body: the raw bytes of a JSON body; for a multipart upload
the digest of its parts' names and contents taken while it streams (``service.uploads``), since the
multipart boundary is random per send and the same upload sent twice differs in its raw bytes.
"""

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Request, Response, status
from redis.asyncio import Redis

from schemas.errors import BadInput, Conflict
from schemas.jobs import JobStatus
from schemas.settings import Settings
from schemas.teams import Caller
from service.errors import Detail
from store import audit, idempotency, records
from store.connection import REDIS_ERRORS

log = logging.getLogger(__name__)
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
POLL_S = 0.05  # a waiting repeat reads the key this often
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",  # (HTTP drops spaces at either end)
        description="chosen by the client (e.g. a UUID): 1-255 printable ASCII characters, no space at either end; "
        "the same key and body from the same team within 24 h answer the first response again (no second job)",
    ),
]
RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "the job, created (or, with `Idempotent-Replayed: true`, the first response to this key)",
        "headers": {
            REPLAYED: {
                "description": "`true` on a repeat answered from the first response",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    },
    409: {"model": Detail, "description": "a request with this Idempotency-Key is still being processed; retry"},
}


class StillProcessing(Conflict):
    """A repeat that waited its time for the first request with its key; it may retry."""

    retry_after_s = 1

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


def digest(raw: bytes) -> str:
    """A request body's fingerprint part: SHA-256 of its bytes."""
    return hashlib.sha256(raw).hexdigest()


def _json(body: str, replayed: bool = False) -> Response:
    headers = {REPLAYED: "true"} if replayed else None
    return Response(body, status.HTTP_201_CREATED, headers=headers, media_type="application/json")


async def create_job(
    request: Request,
    redis: Redis,
    settings: Settings,
    caller: Caller,
    key: str | None,
    body_digest: str,
    job_id: str,
    create: Callable[[], Awaitable[JobStatus]],
) -> Response:
    """Create the job (``create`` stores it as ``job_id``) once per (team, key): ``create`` runs only for a new
    key (or one a failure released). Every job created is audited (``job.created``); a repeat is not."""
    if key is None:
        job = await create()
    else:
        fingerprint = digest(f"{request.method} {request.url.path}\n{body_digest}".encode())
        found = await _claim_or_answer(redis, settings, caller.team, key, fingerprint, job_id)
        if isinstance(found, Response):
            return found
        orphan = await _created_before(redis, found, caller.team)
        if orphan is not None:  # an API process created it, then died before keeping the response
            if found.previous is None or found.previous[0] != fingerprint:
                await idempotency.release(redis, found)
                raise _reused()
            await idempotency.finish(redis, found, status.HTTP_201_CREATED, orphan.model_dump_json())
            return _json(orphan.model_dump_json(), replayed=True)
        async with idempotency.held(redis, found):
            try:
                job = await create()
            except BaseException:  # refused, failed or cancelled: nothing created, a retry may run afresh
                with contextlib.suppress(*REDIS_ERRORS):  # (else the lease frees it within LEASE_S)
                    await idempotency.release(redis, found)
                raise
            if not await idempotency.finish(redis, found, status.HTTP_201_CREATED, job.model_dump_json()):
                log.warning(
                    "Idempotency-Key lease of job %s ran out before it was created; a repeat may not see it", job.id
                )
    await audit.record(redis, caller, "job.created", job.id, job.recipe, team=job.team)
    return _json(job.model_dump_json())


def _reused() -> BadInput:
    return BadInput(
        f"this {HEADER} was used with another request (body or route) in the last 24 h; "
        "use a new key for a new request",
        HEADER,
        where="header",
    )


async def _created_before(redis: Redis, claimed: idempotency.Claim, team: str) -> JobStatus | None:
    """The job an earlier claim of this key noted and did create, if any (its response was never kept)."""
    if claimed.previous is None:
        return None
    found = await records.get_status(redis, claimed.previous[1])
    return found if found is not None and found.team == team else None


async def _claim_or_answer(
    redis: Redis, settings: Settings, team: str, key: str, fingerprint: str, job_id: str
) -> idempotency.Claim | Response:
    """The key claimed for this request, or the answer to a repeat (the first's response, waited for)."""
    deadline = time.monotonic() + settings.idempotency_wait_s
    while True:
        found = await idempotency.claim(redis, team, key, fingerprint, job_id)
        if isinstance(found, idempotency.Claim):
            return found
        if found.fingerprint != fingerprint:
            raise _reused()
        if found.status is not None:
            return _json(found.body, replayed=True)
        if time.monotonic() >= deadline:
            raise StillProcessing(
                f"a request with this {HEADER} is still being processed; retry in a few seconds to get its answer"
            )
        await asyncio.sleep(POLL_S)

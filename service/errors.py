"""Errors to JSON in one handler: routes raise (or let through) ``SkillmixError``s, never ``HTTPException``s.

Each branch of ``schemas.errors`` carries its status and body; ``skillmix_error`` only writes them out. The
one foreign error a route can meet, Redis away, is translated here too (into a ``Transient``).
"""

import logging
from typing import Any, NoReturn

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from schemas.errors import BadInput, Conflict, NotFound, SkillmixError, Transient

log = logging.getLogger(__name__)


def unprocessable(field: str, message: str) -> NoReturn:
    """A 422 naming the field, in the same shape FastAPI uses for validation errors."""
    raise BadInput(message, field)


class Detail(BaseModel):
    detail: str
    code: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Detail, "description": "no such id or name"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Detail, "description": "Redis is not answering; retry after `Retry-After` seconds"}
}


def not_found(what: str, ident: str) -> NoReturn:
    raise NotFound(f"{what} {ident!r} not found")


CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Detail, "description": "not possible in the job's current state (the detail says why)"}
}


class QuotaDetail(Detail):
    quota: str
    limit: float
    used: float


OVER_QUOTA: dict[int | str, dict[str, Any]] = {
    429: {
        "model": QuotaDetail,
        "description": "over a team quota (e.g. max_running_jobs): nothing was stored; retry after `Retry-After`",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    }
}


def conflict(message: str) -> NoReturn:
    raise Conflict(message)


async def skillmix_error(request: Request, exc: Exception) -> JSONResponse:
    """The one place a domain error becomes a response: its branch's status, its own body."""
    assert isinstance(exc, SkillmixError)
    headers = exc.headers()
    if exc.status >= 500 and not isinstance(exc, Transient):  # a bug on our side: keep the traceback
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return JSONResponse(status_code=exc.status, content=exc.json_body(), headers=headers)


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis restarting or away: a clear 503 the client may retry, not a 500 with a traceback in the log."""
    unavailable = Transient(f"the job store (Redis) is not answering: {exc}; retry shortly")
    return await skillmix_error(request, unavailable)

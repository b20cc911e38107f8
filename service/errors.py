"""Errors to JSON in one handler: routes raise (or let through) ``SkillmixError``s, never ``HTTPException``s.

Each branch of ``schemas.errors`` carries its status and body; ``skillmix_error`` only writes them out. The
one foreign error a route can meet, Redis away, is translated here too (into a ``Transient``).
"""

import logging
from typing import Any, NoReturn

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class QuotaDetail(Detail):
    """A 429: which quota (or the failed-authentication throttle), its limit and the current use."""

    quota: str
    limit: float
    used: float


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "integer"}}}
KEYED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Detail,
        "description": "no key, a malformed `Authorization` header, or an unknown or revoked key",
        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    },
    429: {
        "model": QuotaDetail,
        "description": "over a team quota, or too many failed authentications from this address",
        "headers": _RETRY_AFTER,
    },
}
"""What every keyed route may answer (``service.auth.authenticate``); documented once, by ``service.app``."""
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": Detail, "description": "the key's role may not do this (a viewer's write, a non-admin's admin call)"}
}
BODY_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "the request body is over the server's cap (SKILLMIX_MAX_BODY_KB)"}
}
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "the request cannot be used as given; `loc` names the field",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
    }
}
"""For routes that read their body themselves (uploads): FastAPI documents 422 only for the bodies it parses."""


def not_found(what: str, ident: str) -> NoReturn:
    raise NotFound(f"{what} {ident!r} not found")


CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Detail, "description": "not possible in the job's current state (the detail says why)"}
}


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


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own errors (routing, body parsing), made to say what the OpenAPI document says:

    - 405: ``Allow`` lists every method of the path (Starlette names only the first route it matched, and
      FastAPI keeps one route per method);
    - 400, FastAPI's "error parsing the body" (bytes that are not UTF-8 JSON): the 422 ``json_invalid`` that
      other malformed JSON gets, so a client meets one answer for a body it cannot send.
    """
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        return JSONResponse({"detail": exc.detail}, status_code=405, headers={"Allow": ", ".join(allowed)})
    if exc.status_code == 400:
        error = {"type": "json_invalid", "loc": ["body"], "msg": "the body is not JSON (or not UTF-8)"}
        return JSONResponse({"detail": [error]}, status_code=422)
    return await http_exception_handler(request, exc)


def allowed_methods(request: Request) -> list[str]:
    """The methods of the path the request matched: the first route whose pattern matches it names the path
    (as Starlette routes), every route of that same path adds its methods."""
    routes = [r for r in iter_route_contexts(request.app.routes) if getattr(r, "path_regex", None) is not None]
    matched = next((r.path_format for r in routes if r.path_regex.match(request.url.path)), None)
    return sorted({m for r in routes if r.path_format == matched for m in r.methods or ()})


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis restarting or away: a clear 503 the client may retry, not a 500 with a traceback in the log."""
    unavailable = Transient(f"the job store (Redis) is not answering: {exc}; retry shortly")
    return await skillmix_error(request, unavailable)

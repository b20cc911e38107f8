"""Domain errors raised by routes, turned into JSON in one handler; 422s use FastAPI's own shape."""

from typing import Any, NoReturn

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel


def unprocessable(field: str, message: str) -> NoReturn:
    """A 422 naming the field, in the same shape FastAPI uses for validation errors."""
    raise HTTPException(status_code=422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


class Detail(BaseModel):
    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Detail, "description": "no such id or name"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Detail, "description": "Redis is not answering; retry after `Retry-After` seconds"}
}


def not_found(what: str, ident: str) -> NoReturn:
    raise HTTPException(status_code=404, detail=f"{what} {ident!r} not found")


CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Detail, "description": "not possible in the job's current state (the detail says why)"}
}


def conflict(message: str) -> NoReturn:
    raise HTTPException(status_code=409, detail=message)


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis restarting or away: a clear 503 the client may retry, not a 500 with a traceback in the log."""
    return JSONResponse(
        status_code=503,
        content={"detail": f"the job store (Redis) is not answering: {exc}; retry shortly"},
        headers={"Retry-After": "2"},
    )

"""Domain errors raised by routes, turned into JSON in one handler; 422s use FastAPI's own shape."""

from typing import NoReturn

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse


def unprocessable(field: str, message: str) -> NoReturn:
    """A 422 naming the field, in the same shape FastAPI uses for validation errors."""
    raise HTTPException(status_code=422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


def not_found(what: str, ident: str) -> NoReturn:
    raise HTTPException(status_code=404, detail=f"{what} {ident!r} not found")


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis restarting or away: a clear 503 the client may retry, not a 500 with a traceback in the log."""
    return JSONResponse(
        status_code=503,
        content={"detail": f"the job store (Redis) is not answering: {exc}; retry shortly"},
        headers={"Retry-After": "2"},
    )

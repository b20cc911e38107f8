"""Reading a finished batch's output and error files into one ``LineOutcome`` per line.

OpenAI's line format: ``{id, custom_id, response: {status_code, request_id, body}, error}``; an HTTP error is a
``response`` with its status and an error body, a line that never ran (``batch_expired``,
``batch_cancelled``) has ``response: null`` and ``error: {code, message}``. Lines are joined on
``custom_id`` (the provider does not keep their order).
"""

from typing import Any

import orjson

from schemas.llm import Usage
from store.batches import LineOutcome
from workers.llm.client import FATAL_429_CODES, completion
from workers.llm.errors import LLMMalformedResponse

RETRYABLE_STATUSES = frozenset({408, 409, 429})  # and every 5xx


def read_lines(content: bytes, name: str, model: str, tries: dict[str, int]) -> dict[str, LineOutcome]:
    """Every parseable line of a result file, by custom_id (a line that cannot be read is left out: the batch
    manager retries what no file answered). ``tries``: failed sends before this one, per custom_id."""
    found: dict[str, LineOutcome] = {}
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(cid := data.get("custom_id"), str):
            continue
        found[cid] = _outcome(cid, data, name, model, tries.get(cid, 0))
    return found


def _outcome(cid: str, data: dict[str, Any], name: str, model: str, tries: int) -> LineOutcome:
    response, error = data.get("response"), data.get("error")
    if isinstance(response, dict):
        status, body = response.get("status_code"), response.get("body")
        if status == 200:
            usage = Usage(calls=1, retries=tries)
            try:
                result = completion(body, name, model, usage)
            except LLMMalformedResponse as exc:
                return LineOutcome(cid, "retry", str(exc), Usage(), reached_model=True)
            return LineOutcome(cid, "ok", result.model_dump_json(), usage, reached_model=True)
        message, code = _error_of(body)
        text = f"HTTP {status}: {message}"
        if not isinstance(status, int):
            return LineOutcome(cid, "retry", f"line without a status: {message}", Usage(), reached_model=False)
        if status == 429 and code not in FATAL_429_CODES:
            return LineOutcome(cid, "retry", text, Usage(rate_limited=1), reached_model=True)
        if status >= 500 or status in RETRYABLE_STATUSES:
            return LineOutcome(cid, "retry", text, Usage(), reached_model=True)
        return LineOutcome(cid, "fail", text, Usage(), reached_model=True)
    message, code = _error_of({"error": error})
    # batch_expired / batch_cancelled: the line never ran; it goes into a later batch (counted as a try)
    return LineOutcome(cid, "retry", f"{code or 'error'}: {message}", Usage(), reached_model=False)


def _error_of(body: Any) -> tuple[str, str | None]:
    """(message, code) of an OpenAI-style error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return (str(body)[:300] if body is not None else "no error body"), None
    code = error.get("code")
    return str(error.get("message") or code or "error")[:500], code if isinstance(code, str) else None

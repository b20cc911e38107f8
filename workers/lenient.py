"""The one lenient reader of a model's JSON answer: code fences and prose around the object are fine.

Models asked for JSON often wrap it in a fence or a sentence, and endpoints without JSON-schema output
have nothing stopping them. Every stage that reads a JSON answer (the recipes, the judge, extraction)
reads it here, so "what counts as a readable answer" is decided once.
"""

import re
from typing import Any

import orjson

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")


def strip_fences(text: str) -> str:
    """The text without surrounding whitespace and the Markdown code fence around it (if any)."""
    return _FENCE.sub("", text.strip())


def _braced(text: str) -> Any:
    """The JSON value between the first ``{`` and the last ``}``; ValueError if there is none or it is invalid."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    try:
        return orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"answer is not valid JSON: {exc}") from None


def braced_object(text: str) -> dict[str, object] | None:
    """The JSON object between the first ``{`` and the last ``}`` of a text; None if there is none."""
    try:
        data = _braced(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def json_object(text: str) -> dict[str, object] | None:
    """The JSON object in a model's answer, tolerating code fences and prose around it; None if there is none."""
    return braced_object(strip_fences(text))


def parse_json(text: str) -> Any:
    """The JSON value in an answer (the whole text, else one object inside prose); ValueError if there is none."""
    text = strip_fences(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _braced(text)

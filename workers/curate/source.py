"""A dataset a team brings for ``recipe: curate``, streamed by ``store.datasets``: JSONL line by line, a JSON
array (Alpaca) element by element, Parquet batch by batch; never the whole file in memory.

Rows are kept exactly as read (every field, in order). The API surveys the file once at submit
(``store.survey.survey``: format, every row's shape, the row count, and the byte offset of every
``block``-th row), so a worker reads its chunk's rows by seeking straight to them (``read_block``), never
re-reading the file from the top.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.jobs import CurateSource
from store.survey import CurateRowFormat, iter_rows

USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "bot", "model", "chatgpt"})


@dataclass(frozen=True)
class Pair:
    instruction: str
    input: str
    output: str


def _text(value: Any) -> str:
    """A message's content: a string, or OpenAI's list of parts (their text joined)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(
            str(p.get("text", "")) for p in value if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    return str(value)


def pair(row: dict[str, Any], row_format: CurateRowFormat, messages_column: str | None) -> Pair:
    """What the quality checks and dedup read: instruction, input, output. Chat rows: the first user turn
    and the first assistant turn after it."""
    if row_format == "alpaca":
        return Pair(_text(row.get("instruction")), _text(row.get("input")), _text(row.get("output")))
    instruction, output, asked = "", "", False
    for message in row.get(messages_column or "messages") or []:
        role = str(message.get("role") or message.get("from") or "").lower()
        content = _text(message["content"] if "content" in message else message.get("value"))
        if not asked and role in USER_ROLES:
            instruction, asked = content, True
        elif asked and role in ASSISTANT_ROLES:
            output = content
            break
    return Pair(instruction, "", output)


def read_block(path: Path, source: CurateSource, start: int, stop: int, offset: int) -> dict[int, Any]:
    """Rows ``[start, stop)``, reading from ``offset`` (where row ``start`` begins) and stopping at ``stop``."""
    out: dict[int, Any] = {}
    rows = iter_rows(path, source, start, offset)
    try:
        for index, _, _, row in rows:
            if index >= stop:
                break
            out[index] = row
    finally:
        rows.close()
    return out

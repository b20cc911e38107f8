"""A dataset a team brings for ``recipe: curate``, streamed by ``workers.datasets``: JSONL line by line, a JSON
array (Alpaca) element by element, Parquet batch by batch; never the whole file in memory.

Rows are kept exactly as read (every field, in order). The API surveys the file once at submit (``survey``:
format, every row's shape, the row count, and the byte offset of every ``block``-th row), so a worker reads
its chunk's rows by seeking straight to them (``read_block``), never re-reading the file from the top.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from schemas.jobs import MAX_COUNT, CurateSource
from workers.datasets import DatasetError, Rows, json_rows, jsonl_rows, open_parquet, parquet_rows, refuse_empty

RowFormat = Literal["alpaca", "messages"]
CHAT_COLUMNS = ("messages", "conversations")
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "bot", "model", "chatgpt"})


@dataclass(frozen=True)
class Survey:
    rows: int
    row_format: RowFormat
    messages_column: str | None
    offsets: list[int]  # byte offset of rows 0, block, 2 x block, ... (JSONL and JSON; empty for Parquet)


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


def pair(row: dict[str, Any], row_format: RowFormat, messages_column: str | None) -> Pair:
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


def _check(row: Any, row_format: RowFormat, messages_column: str | None) -> None:
    """Raises ValueError naming what is wrong with the row's shape."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, not {type(row).__name__}")
    if row_format == "alpaca":
        if "instruction" not in row:
            raise ValueError(f"no 'instruction' field (the row has: {', '.join(map(str, row)) or 'nothing'})")
        for key in ("instruction", "input", "output"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ValueError(f"{key!r} must be a string, not {type(row[key]).__name__}")
        return
    assert messages_column is not None
    messages = row.get(messages_column)
    if not isinstance(messages, list):
        raise ValueError(f"{messages_column!r} must be a list of messages (role/content or from/value)")
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError(f"each message of {messages_column!r} must be an object")
        content = message["content"] if "content" in message else message.get("value")
        if not isinstance(content, str | list | None):
            raise ValueError(f"a message's content must be a string, not {type(content).__name__}")


def detect(row: Any, source: CurateSource) -> tuple[RowFormat, str | None]:
    if source.messages_column is not None:
        return "messages", source.messages_column
    if isinstance(row, dict):
        if source.row_format in (None, "alpaca") and "instruction" in row:
            return "alpaca", None
        if source.row_format in (None, "messages"):
            for column in CHAT_COLUMNS:
                if column in row:
                    return "messages", column
        if source.row_format is not None:
            return source.row_format, CHAT_COLUMNS[0] if source.row_format == "messages" else None
    fields = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
    raise DatasetError(
        "source.row_format",
        f"cannot tell the row format: the first row has {fields or 'no fields'}; rows need 'instruction' "
        "(Alpaca), 'messages' (role/content) or 'conversations' (ShareGPT from/value), "
        "or set source.messages_column",
    )


def iter_rows(path: Path, source: CurateSource, start: int = 0, offset: int = 0) -> Rows:
    """(row index, where it starts, where the next starts, row) from row ``start``, which begins at byte
    ``offset`` (JSONL and JSON; 0 reads from the top); for Parquet the offsets are row indexes."""
    if source.format == "parquet":
        return parquet_rows(path, start)
    if source.format == "json":
        return json_rows(path, start, offset)
    return jsonl_rows(path, start, offset)


def survey(path: Path, source: CurateSource, block: int, max_rows: int = MAX_COUNT) -> Survey:
    """Check the whole file once (blocking: call it in a thread); every problem is a DatasetError naming the
    spec field to fix."""
    refuse_empty(path, source.path)
    if source.format == "parquet":
        return _survey_parquet(path, source, max_rows)
    row_format: RowFormat | None = None
    column: str | None = None
    offsets: list[int] = []
    count = 0
    for index, offset, _, row in iter_rows(path, source):
        if index >= max_rows:
            raise DatasetError("source.path", f"the dataset has more than {max_rows} rows")
        if row_format is None:
            row_format, column = detect(row, source)
        try:
            _check(row, row_format, column)
        except ValueError as exc:
            raise DatasetError("source.row_format", f"row {index + 1}: {exc}") from exc
        if index % block == 0:
            offsets.append(offset)
        count = index + 1
    if count == 0 or row_format is None:
        raise DatasetError("source.path", f"{source.path!r} has no rows")
    return Survey(count, row_format, column, offsets)


def _survey_parquet(path: Path, source: CurateSource, max_rows: int) -> Survey:
    import pyarrow as pa

    with open_parquet(path, source.path) as file:
        schema, total = file.schema_arrow, file.metadata.num_rows
        row_format, column = detect(dict.fromkeys(schema.names), source)
        need = "instruction" if row_format == "alpaca" else column
        if need not in schema.names:
            raise DatasetError("source.row_format", f"no column {need!r}; the file has: {', '.join(schema.names)}")
        if row_format == "alpaca":
            for name in ("instruction", "input", "output"):
                if (
                    name in schema.names
                    and not pa.types.is_string(schema.field(name).type)
                    and not pa.types.is_large_string(schema.field(name).type)
                ):
                    raise DatasetError(
                        "source.row_format", f"column {name!r} has type {schema.field(name).type}, not string"
                    )
        else:
            kind = schema.field(need).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
                raise DatasetError("source.row_format", f"column {need!r} has type {kind}, not a list of messages")
    if total == 0:
        raise DatasetError("source.path", f"{source.path!r} has no rows")
    if total > max_rows:
        raise DatasetError("source.path", f"the dataset has more than {max_rows} rows")
    return Survey(total, row_format, column, [])


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

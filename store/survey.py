"""What the API checks of a dataset at submit, reading the whole file once (blocking: call it in a thread), so
workers later read rows they know are well formed; every problem is a ``DatasetError`` naming the spec field
to fix (a precise 422).

- ``survey``: a curate job's rows (Alpaca, or chat rows: messages / ShareGPT conversations): format, every
  row's shape, the row count and the byte offset of every ``block``-th row, so a worker seeks straight to its
  chunk's rows (``workers.curate.source.read_block``).
- ``inspect``: an extraction job's seed rows (Alpaca, messages, a text column, MATH rows): format, columns,
  every row's shape, the row count (``workers.extract.reader`` reads them).

Pure file reading over ``store.datasets``: the data dir's files are the store's, like its Redis keys.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from schemas.extract import DatasetSource
from schemas.jobs import MAX_COUNT, CurateSource
from store.datasets import DatasetError, Rows, json_rows, jsonl_rows, open_parquet, parquet_rows, refuse_empty

CurateRowFormat = Literal["alpaca", "messages"]
SeedRowFormat = Literal["alpaca", "messages", "text", "math"]
CHAT_COLUMNS = ("messages", "conversations")
ALPACA_FIELDS = ("instruction", "input", "output")
MATH_FIELDS = ("problem", "solution", "level", "type")  # the MATH dataset's rows (papers.md §B)


# A curate job's rows.


@dataclass(frozen=True)
class Survey:
    rows: int
    row_format: CurateRowFormat
    messages_column: str | None
    offsets: list[int]  # byte offset of rows 0, block, 2 x block, ... (JSONL and JSON; empty for Parquet)


def _check(row: Any, row_format: CurateRowFormat, messages_column: str | None) -> None:
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


def detect(row: Any, source: CurateSource) -> tuple[CurateRowFormat, str | None]:
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
    row_format: CurateRowFormat | None = None
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


# An extraction job's seed rows.


@dataclass(frozen=True)
class DatasetInfo:
    rows: int
    row_format: SeedRowFormat


def string_field(row: dict[str, Any], key: str) -> str:
    """The row's ``key`` as a string ("" if absent); ValueError naming it if it is not one."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def row_text(row: Any, row_format: SeedRowFormat, text_column: str | None) -> str:
    """The text the LLM sees for a row; raises ValueError naming what is wrong with the row."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, not {type(row).__name__}")
    if row_format == "text":
        assert text_column is not None
        if text_column not in row:
            raise ValueError(f"no column {text_column!r} (the row has: {', '.join(map(str, row)) or 'nothing'})")
        return string_field(row, text_column)
    if row_format == "math":
        problem, solution = string_field(row, "problem"), string_field(row, "solution")
        if "problem" not in row:
            raise ValueError(f"no 'problem' field (the row has: {', '.join(map(str, row)) or 'nothing'})")
        return f"Problem:\n{problem}" + (f"\n\nSolution:\n{solution}" if solution else "") if problem.strip() else ""
    if row_format == "alpaca":
        if "instruction" not in row:
            raise ValueError(f"no 'instruction' field (the row has: {', '.join(map(str, row)) or 'nothing'})")
        instruction, given, output = (string_field(row, k) for k in ALPACA_FIELDS)
        parts = [instruction] + ([f"Input:\n{given}"] if given else []) + ([f"Response:\n{output}"] if output else [])
        return "\n\n".join(parts) if instruction.strip() else ""
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list of {role, content} objects")
    lines = []
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("content"), str | None)):
            raise ValueError("each message needs a string 'content'")
        lines.append(f"{message.get('role') or 'user'}: {message.get('content') or ''}")
    return "\n".join(lines) if any(m.get("content") for m in messages) else ""


def detect_row_format(row: Any) -> SeedRowFormat:
    if isinstance(row, dict) and "messages" in row:
        return "messages"
    if isinstance(row, dict) and "instruction" in row:
        return "alpaca"
    if isinstance(row, dict) and "problem" in row:
        return "math"
    keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
    raise DatasetError(
        "source.text_column",
        f"cannot tell the row format: the first row has {keys or 'no fields'}; rows need 'instruction' (alpaca), "
        "'messages' (chat) or 'problem' and 'solution' (math), or set source.text_column to the column to read",
    )


def inspect(path: Path, source: DatasetSource, rows: int, max_rows: int) -> DatasetInfo:
    """Check a whole dataset before a job is queued: every problem found here is a precise 422.

    ``rows`` > 0 means only the first ``rows`` are used (and must exist); otherwise all rows, at most
    ``max_rows``. Blocking: call it in a thread.
    """
    refuse_empty(path, source.path)
    if source.format == "parquet":
        return _inspect_parquet(path, source, rows, max_rows)
    return _inspect_jsonl(path, source, rows, max_rows)


def _too_many(max_rows: int) -> DatasetError:
    return DatasetError(
        "max_rows",
        f"the dataset has more than max_rows={max_rows} rows; set rows to use only the first N, "
        "or raise max_rows (at most 1,000,000)",
    )


def _too_few(found: int, rows: int) -> DatasetError:
    return DatasetError("rows", f"rows={rows} but the dataset has only {found} rows")


def _inspect_jsonl(path: Path, source: DatasetSource, rows: int, max_rows: int) -> DatasetInfo:
    row_format, count = source.row_format, 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if rows and count >= rows:
                break
            if count >= max_rows:
                raise _too_many(max_rows)
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DatasetError("source.format", f"line {number} is not valid JSON ({exc}); is it JSONL?") from exc
            if row_format is None:
                row_format = detect_row_format(row)
            try:
                row_text(row, row_format, source.text_column)
            except ValueError as exc:
                field = "source.text_column" if row_format == "text" else "source.row_format"
                raise DatasetError(field, f"line {number}: {exc}") from exc
            count += 1
    if count == 0:
        raise DatasetError("source.path", f"{source.path!r} has no rows (only blank lines)")
    if rows and count < rows:
        raise _too_few(count, rows)
    assert row_format is not None
    return DatasetInfo(count, row_format)


def _inspect_parquet(path: Path, source: DatasetSource, rows: int, max_rows: int) -> DatasetInfo:
    import pyarrow as pa

    with open_parquet(path, source.path) as file:
        schema, total = file.schema_arrow, file.metadata.num_rows
        names = schema.names
        row_format = source.row_format or detect_row_format(dict.fromkeys(names))
        need = {"text": source.text_column, "alpaca": "instruction", "messages": "messages", "math": "problem"}[
            row_format
        ]
        if need not in names:
            field = "source.text_column" if row_format == "text" else "source.row_format"
            raise DatasetError(field, f"no column {need!r}; the file has: {', '.join(names)}")
        columns = {"alpaca": ALPACA_FIELDS, "math": ("problem", "solution")}.get(row_format, (need,))
        for name in [c for c in columns if c in names]:
            kind = schema.field(name).type
            if row_format == "messages":
                ok = pa.types.is_list(kind) or pa.types.is_large_list(kind)
            else:
                ok = pa.types.is_string(kind) or pa.types.is_large_string(kind)
            if not ok:
                raise DatasetError("source.row_format", f"column {name!r} has type {kind}, which is not {row_format}")
    if total == 0:
        raise DatasetError("source.path", f"{source.path!r} has no rows")
    if rows and total < rows:
        raise _too_few(total, rows)
    if not rows and total > max_rows:
        raise _too_many(max_rows)
    return DatasetInfo(min(total, rows) if rows else total, row_format)

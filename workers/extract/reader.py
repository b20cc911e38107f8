"""Seed datasets, streamed by ``workers.datasets``: JSONL line by line, Parquet batch by batch; never the whole
file in memory.

The API checks a dataset once at submit (``inspect``: format, columns, every row's shape, row count), so
workers read rows they know are well formed. A ``Position`` is where the next row starts (a byte offset
for JSONL, a row for Parquet), so a resumed step seeks there instead of re-reading from the top.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from schemas.extract import DatasetSource
from workers.datasets import DatasetError as DatasetError
from workers.datasets import Rows, jsonl_rows, open_parquet, parquet_rows, refuse_empty
from workers.datasets import resolve_path as resolve_path

RowFormat = Literal["alpaca", "messages", "text", "math"]
PARQUET_BATCH_ROWS = 512
ALPACA_FIELDS = ("instruction", "input", "output")
MATH_FIELDS = ("problem", "solution", "level", "type")  # the MATH dataset's rows (papers.md §B)
# DatasetError and resolve_path are re-exported (``as``): the extraction runner imports them from here.


@dataclass(frozen=True)
class Position:
    row: int = 0
    offset: int = 0  # JSONL byte offset of ``row``; unused for Parquet


@dataclass(frozen=True)
class SeedRow:
    index: int
    text: str
    after: Position  # where the row after this one starts
    fields: dict[str, str] | None = None  # MATH rows: problem, solution (and level, type when given)


@dataclass(frozen=True)
class DatasetInfo:
    rows: int
    row_format: RowFormat


def _string(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def row_text(row: Any, row_format: RowFormat, text_column: str | None) -> str:
    """The text the LLM sees for a row; raises ValueError naming what is wrong with the row."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, not {type(row).__name__}")
    if row_format == "text":
        assert text_column is not None
        if text_column not in row:
            raise ValueError(f"no column {text_column!r} (the row has: {', '.join(map(str, row)) or 'nothing'})")
        return _string(row, text_column)
    if row_format == "math":
        problem, solution = _string(row, "problem"), _string(row, "solution")
        if "problem" not in row:
            raise ValueError(f"no 'problem' field (the row has: {', '.join(map(str, row)) or 'nothing'})")
        return f"Problem:\n{problem}" + (f"\n\nSolution:\n{solution}" if solution else "") if problem.strip() else ""
    if row_format == "alpaca":
        if "instruction" not in row:
            raise ValueError(f"no 'instruction' field (the row has: {', '.join(map(str, row)) or 'nothing'})")
        instruction, given, output = (_string(row, k) for k in ALPACA_FIELDS)
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


def math_fields(row: dict[str, Any], max_chars: int | None) -> dict[str, str]:
    """A MATH row's problem and solution (each cut to ``max_chars``), and its level and type when given."""
    found = {k: _string(row, k)[:max_chars] for k in ("problem", "solution")}
    found |= {k: str(row[k]) for k in ("level", "type") if row.get(k) is not None}
    return found


def detect_row_format(row: Any) -> RowFormat:
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


class DatasetReader:
    """Reads one dataset; ``source.row_format`` must be resolved (``inspect`` does that at submit)."""

    def __init__(self, path: Path, source: DatasetSource, max_chars: int | None = None) -> None:
        if source.row_format is None:
            raise ValueError("source.row_format must be resolved before reading")
        self.path, self.source, self.row_format = path, source, source.row_format
        self.max_chars = max_chars  # rows are cut as they are read, so a huge row costs no memory later

    def rows(self, start: Position = Position()) -> Iterator[SeedRow]:
        if self.source.format == "parquet":
            return self._seed_rows(parquet_rows(self.path, start.row, self._columns, PARQUET_BATCH_ROWS), True)
        return self._seed_rows(jsonl_rows(self.path, start.row, start.offset), False)

    def _seed_rows(self, found: Rows, parquet: bool) -> Iterator[SeedRow]:
        with closing(found):  # closed with this iterator (``batches`` closes it early), not when collected
            for index, _, after, row in found:
                yield self._row(index, row, Position(after) if parquet else Position(index + 1, after))

    def _text(self, row: Any) -> str:
        text = row_text(row, self.row_format, self.source.text_column)
        return text if self.max_chars is None else text[: self.max_chars]

    def _row(self, index: int, row: Any, after: Position) -> SeedRow:
        fields = math_fields(row, self.max_chars) if self.row_format == "math" else None
        return SeedRow(index, self._text(row), after, fields)

    def _columns(self, file_columns: list[str]) -> list[str]:
        names = set(file_columns)
        if self.row_format == "text":
            assert self.source.text_column is not None
            return [self.source.text_column]
        if self.row_format == "alpaca":
            return [c for c in ALPACA_FIELDS if c in names]
        if self.row_format == "math":
            return [c for c in MATH_FIELDS if c in names]
        return ["messages"]

    async def batches(self, start: Position, size: int, limit: int) -> AsyncIterator[list[SeedRow]]:
        """Rows ``[start.row, limit)`` in lists of ``size``, each read in a thread (file I/O off the loop)."""
        it = self.rows(start)

        def take() -> list[SeedRow]:
            out: list[SeedRow] = []
            for row in it:
                if row.index >= limit:
                    break
                out.append(row)
                if len(out) >= size:
                    break
            return out

        try:
            while batch := await asyncio.to_thread(take):
                yield batch
                if batch[-1].index + 1 >= limit:
                    return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                await asyncio.to_thread(close)


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

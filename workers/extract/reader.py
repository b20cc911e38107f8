"""Seed datasets, streamed by ``store.datasets``: JSONL line by line, Parquet batch by batch; never the whole
file in memory.

The API checks a dataset once at submit (``store.survey.inspect``: format, columns, every row's shape, row
count), so workers read rows they know are well formed. A ``Position`` is where the next row starts (a byte
offset for JSONL, a row for Parquet), so a resumed step seeks there instead of re-reading from the top.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.extract import DatasetSource
from store.datasets import Rows, jsonl_rows, parquet_rows
from store.survey import ALPACA_FIELDS, MATH_FIELDS, row_text, string_field

PARQUET_BATCH_ROWS = 512


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


def math_fields(row: dict[str, Any], max_chars: int | None) -> dict[str, str]:
    """A MATH row's problem and solution (each cut to ``max_chars``), and its level and type when given."""
    found = {k: string_field(row, k)[:max_chars] for k in ("problem", "solution")}
    found |= {k: str(row[k]) for k in ("level", "type") if row.get(k) is not None}
    return found


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

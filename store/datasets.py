"""The one dataset file reader: JSONL line by line, a JSON array element by element, Parquet batch by batch;
never the whole file in memory.

The data dir's files are the store's, like its Redis keys. Extraction's seed rows (``workers.extract.reader``)
and a curate job's rows (``workers.curate.source``) read their files here; each adds only what its rows mean
(seed text and MATH fields; Alpaca and chat pairs), and the API's submit-time checks (``store.survey``:
``inspect``, ``survey``) read them here too. A resumed read seeks to where its first row starts: a
byte offset for JSONL and JSON, a row index for Parquet.
"""

import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from schemas.errors import BadInput

if TYPE_CHECKING:
    import pyarrow.parquet as pq

# (row index, where the row starts, where the row after it starts, row): byte offsets for JSONL and JSON, row
# indexes for Parquet.
Rows = Generator[tuple[int, int, int, Any], None, None]
READ_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 1024
# Inside a JSON value: a whole string (skipped in C), a lone quote (a string cut by the buffer's end) or a bracket.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[{}\[\]]')
_SPACE = b" \t\r\n"


class DatasetError(BadInput, ValueError):
    """The dataset cannot be used as given; ``field`` is the spec field to fix (a 422 names it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def resolve_path(data_dir: Path, relative: str) -> Path:
    """The dataset's real path, refusing anything (symlinks included) that leads out of the data dir."""
    root = data_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise DatasetError("source.path", f"{relative!r} leads outside the data dir")
    if not path.is_file():
        raise DatasetError("source.path", f"no file {relative!r} under the data dir")
    return path


def refuse_empty(path: Path, named: str) -> None:
    """A ``source.path`` DatasetError for a zero-byte file (``named``: as the user wrote its path)."""
    if path.stat().st_size == 0:
        raise DatasetError("source.path", f"{named!r} is empty")


def open_parquet(path: Path, named: str) -> "pq.ParquetFile":
    """Open a Parquet file, or raise the ``source.format`` DatasetError that names it (``named``: as the user
    wrote its path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError("source.format", f"{named!r} is not a Parquet file ({exc})") from exc


def jsonl_rows(path: Path, start: int = 0, offset: int = 0) -> Rows:
    """JSONL rows from row ``start``, which begins at byte ``offset`` (0 reads from the top); blank lines are
    not rows. A line that is not JSON is a ``source.format`` DatasetError naming it."""
    index, from_top = (0 if offset == 0 else start), offset == 0
    with path.open("rb") as fh:
        fh.seek(offset)
        for number, line in enumerate(fh, start=1):
            at = offset
            offset += len(line)
            if not line.strip():
                continue
            if index >= start:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    where = f"line {number}" if from_top else f"row {index + 1}"
                    raise DatasetError("source.format", f"{where} is not valid JSON ({exc}); is it JSONL?") from exc
                yield index, at, offset, row
            index += 1


def json_rows(path: Path, start: int = 0, offset: int = 0) -> Rows:
    """The elements of one top-level JSON array, each parsed on its own from a sliding buffer."""
    with path.open("rb") as fh:
        buf, base, pos, eof = b"", offset, 0, False

        def more() -> None:
            nonlocal buf, base, pos, eof
            if pos > READ_BYTES:  # drop what was read; keep the buffer small
                buf, base, pos = buf[pos:], base + pos, 0
            data = fh.read(max(READ_BYTES, len(buf)))  # doubling for a row larger than the buffer
            eof = not data
            buf += data

        def skip_space() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in _SPACE:
                    pos += 1
                if pos < len(buf) or eof:
                    return
                more()

        index = 0
        fh.seek(offset)
        if offset == 0:
            more()
            if buf.startswith(b"\xef\xbb\xbf"):
                pos = 3
            skip_space()
            if pos >= len(buf) or buf[pos] != ord("["):
                raise DatasetError(
                    "source.format",
                    "a .json dataset must be one JSON array of rows (Alpaca); use .jsonl for one row a line",
                )
            pos += 1
            skip_space()
            if pos < len(buf) and buf[pos] == ord("]"):
                return
        else:
            index = start
        while True:
            skip_space()
            if pos >= len(buf):
                raise DatasetError("source.format", f"the JSON array ends without ']' after row {index}")
            if buf[pos] != ord("{"):
                raise DatasetError("source.format", f"row {index + 1} of the JSON array is not a JSON object")
            end = _value_end(buf, pos)
            while end < 0:
                if eof:
                    raise DatasetError("source.format", f"row {index + 1} of the JSON array is cut off")
                more()
                end = _value_end(buf, pos)
            if index >= start:
                try:
                    row = orjson.loads(buf[pos:end])
                except orjson.JSONDecodeError as exc:
                    raise DatasetError("source.format", f"row {index + 1} is not valid JSON ({exc})") from exc
                yield index, base + pos, base + end, row
            index += 1
            pos = end
            skip_space()
            if pos < len(buf) and buf[pos] == ord(","):
                pos += 1
                continue
            if pos < len(buf) and buf[pos] == ord("]"):
                return
            raise DatasetError("source.format", f"expected ',' or ']' after row {index} of the JSON array")


def _value_end(buf: bytes, pos: int) -> int:
    """End of the object or array starting at ``pos``, or -1 if the buffer holds only part of it."""
    depth = 0
    for match in _TOKENS.finditer(buf, pos):
        token = match.group()
        first = token[0]
        if first == 0x22:  # '"'
            if len(token) == 1:
                return -1  # a string cut by the buffer's end
            continue
        depth += 1 if first in (0x7B, 0x5B) else -1
        if depth == 0:
            return match.end()
    return -1


def parquet_rows(
    path: Path,
    start: int = 0,
    columns: Callable[[list[str]], list[str]] | None = None,
    batch_rows: int = PARQUET_BATCH_ROWS,
) -> Rows:
    """Parquet rows from row ``start``: whole row groups before it are skipped by their metadata, then whole
    batches before it unread. ``columns`` picks the columns to read from the file's column names."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as file:
        groups: list[int] = []
        index = 0
        for g in range(file.metadata.num_row_groups):
            rows = file.metadata.row_group(g).num_rows
            if not groups and index + rows <= start:
                index += rows
                continue
            groups.append(g)
        names = columns(file.schema_arrow.names) if columns is not None else None
        for batch in file.iter_batches(batch_rows, row_groups=groups, columns=names):
            if index + batch.num_rows <= start:
                index += batch.num_rows
                continue
            for row in batch.to_pylist():
                if index >= start:
                    yield index, index, index + 1, row
                index += 1

"""Export formats that SFT trainers read; each turns one stored example into one output record.

alpaca, sharegpt and jsonl are streamed as text. parquet and the Hugging Face ``datasets`` directory (``hf``,
readable with ``datasets.load_from_disk``) are columnar: examples are gathered one storage bucket at a time
(``BATCH_ROWS``, the size of a Redis bucket) into an Arrow record batch and written out before the next
bucket is read, so no more than one batch of rows is ever held in memory.
"""

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from schemas.examples import Example
from schemas.recipes import extras_models
from schemas.sampling import derive_rng
from store import keys


class ExportFormat(StrEnum):
    """What ``GET /v1/jobs/{id}/export`` serves."""

    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    JSONL = "jsonl"
    PARQUET = "parquet"
    MATH = "math"  # MATH-style JSONL: problem, solution, answer, skills (recipe math)


class OutputFormat(StrEnum):
    """What ``skillmix export`` writes: every API format, plus a ``datasets`` directory built locally."""

    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    JSONL = "jsonl"
    PARQUET = "parquet"
    HF = "hf"
    MATH = "math"


MEDIA_TYPES = {
    ExportFormat.ALPACA: "application/json",
    ExportFormat.SHAREGPT: "application/json",
    ExportFormat.JSONL: "application/x-ndjson",
    ExportFormat.PARQUET: "application/vnd.apache.parquet",
    ExportFormat.MATH: "application/x-ndjson",
}
FILE_SUFFIXES = {
    ExportFormat.ALPACA: "alpaca.json",
    ExportFormat.SHAREGPT: "sharegpt.json",
    ExportFormat.JSONL: "jsonl",
    ExportFormat.PARQUET: "parquet",
    ExportFormat.MATH: "math.jsonl",
}
BATCH_ROWS = keys.BUCKET_SIZE  # rows per Arrow record batch / Parquet row group: one storage bucket
FILE_CHUNK = 1 << 20  # bytes per chunk when a written file is streamed back
HF_DATA_FILE = "data-00000-of-00001.arrow"  # the name ``Dataset.save_to_disk`` gives a single shard


def alpaca(example: Example) -> dict[str, Any]:
    return {"instruction": example.instruction, "input": example.input, "output": example.output}


def sharegpt(example: Example) -> dict[str, Any]:
    human = example.instruction + (f"\n\n{example.input}" if example.input else "")
    return {
        "id": example.id,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": example.output}],
    }


def math_record(example: Example) -> dict[str, Any]:
    """MATH-style: the question, its solution, its verified final answer and the skill pair it needs."""
    return {
        "problem": example.instruction,
        "solution": example.output,
        "answer": example.extras.get("answer") or "",
        "skills": example.skills,
    }


def full(example: Example) -> dict[str, Any]:
    return example.model_dump(mode="json")


CONVERTERS: dict[ExportFormat, Callable[[Example], dict[str, Any]]] = {
    ExportFormat.ALPACA: alpaca,
    ExportFormat.SHAREGPT: sharegpt,
    ExportFormat.JSONL: full,
    ExportFormat.MATH: math_record,
}


async def render(examples: AsyncIterator[Example], fmt: ExportFormat) -> AsyncIterator[bytes]:
    """alpaca and sharegpt are JSON arrays (what their trainers load); jsonl is one full record per line."""
    convert = CONVERTERS[fmt]
    if fmt in (ExportFormat.JSONL, ExportFormat.MATH):
        async for example in examples:
            yield orjson.dumps(convert(example)) + b"\n"
        return
    first = True
    yield b"["
    async for example in examples:
        yield (b"\n" if first else b",\n") + orjson.dumps(convert(example))
        first = False
    yield b"\n]\n"


# --- held-out split ---------------------------------------------------------------------------------------


class Split(StrEnum):
    """Which side of a held-out split an export serves (papers.md §A: ~100 examples for checkpoint selection)."""

    TRAIN = "train"
    HELDOUT = "heldout"


def heldout_positions(total: int, size: int, seed: int) -> frozenset[int]:
    """Storage positions (sequence numbers ``0..total-1``) of the held-out examples: exactly
    ``min(size, total)`` of them, a draw fixed by (seed, total), so every export of a finished job agrees."""
    return frozenset(derive_rng("heldout", seed, total).sample(range(total), min(size, total)))


async def split_examples(
    examples: AsyncIterator[Example], heldout: frozenset[int], split: Split
) -> AsyncIterator[Example]:
    """One side of the split of examples streamed in sequence order: train and heldout are disjoint and
    together are all of them."""
    want = split is Split.HELDOUT
    seq = 0
    async for example in examples:
        if (seq in heldout) == want:
            yield example
        seq += 1


# --- columnar: Parquet and the datasets directory ---------------------------------------------------------

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# The full record (what jsonl exports), typed: nested provenance stays nested, not JSON in a string.
BASE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("job_id", pa.string()),
    ("index", pa.int64()),
    ("instruction", pa.string()),
    ("input", pa.string()),
    ("output", pa.string()),
    ("skills", pa.list_(pa.string())),
    ("query_type", pa.string()),
    ("model", pa.string()),
    ("endpoint", pa.string()),
    ("recipe", pa.string()),
    ("template_version", pa.string()),
    (
        "usage",
        pa.struct(
            [(name, pa.int64()) for name in ("prompt_tokens", "completion_tokens", "calls", "retries", "rate_limited")]
        ),
    ),
    ("verdict", pa.struct([("accepted", pa.bool_()), ("reasons", pa.list_(pa.string())), ("detail", pa.string())])),
    ("duplicate_of", pa.string()),
    ("conversation", pa.list_(_MESSAGE)),
    ("judge", pa.string()),  # the LLM judge's verdict (quality.judge), as JSON text
    ("created_at", pa.timestamp("us", tz="UTC")),
]


_SCALARS: dict[object, pa.DataType] = {bool: pa.bool_(), str: pa.string(), int: pa.int64(), float: pa.float64()}


def _column_type(annotation: object) -> pa.DataType | None:
    """A scalar (optional) field keeps its type; anything else is JSON text (None)."""
    found = [_SCALARS[a] for a in get_args(annotation) if a in _SCALARS] if get_args(annotation) else []
    plain = _SCALARS.get(annotation)
    return plain if plain is not None else (found[0] if len(found) == 1 else None)


def extra_columns() -> dict[str, pa.DataType | None]:
    """The registered recipes' record extras, as columns after the shared ones (``None``: JSON text)."""
    columns: dict[str, pa.DataType | None] = {}
    for model in extras_models():
        for name, info in model.model_fields.items():
            columns.setdefault(name, _column_type(info.annotation))
    return columns


def arrow_schema() -> pa.Schema:
    """The full record (what jsonl exports), typed: the shared columns, then every registered recipe's extras
    (so every export has the same columns, whatever the recipe)."""
    extra = [(name, pa.string() if kind is None else kind) for name, kind in extra_columns().items()]
    return pa.schema(BASE_COLUMNS + extra)


def arrow_row(example: Example, extra: dict[str, pa.DataType | None]) -> dict[str, Any]:
    row = example.model_dump(mode="python")
    row["verdict"]["reasons"] = [str(r) for r in example.verdict.reasons]
    if example.judge is not None:
        row["judge"] = orjson.dumps(example.judge.model_dump(mode="json")).decode()
    for name, kind in extra.items():
        value = example.extras.get(name)
        row[name] = orjson.dumps(value).decode() if kind is None and value is not None else value
    return row


async def record_batches(examples: AsyncIterator[Example], rows: int = BATCH_ROWS) -> AsyncIterator[pa.RecordBatch]:
    """The examples as Arrow record batches of at most ``rows`` rows; only the batch being filled is held."""
    pending: list[dict[str, Any]] = []
    schema, extra = arrow_schema(), extra_columns()
    async for example in examples:
        pending.append(arrow_row(example, extra))
        if len(pending) >= rows:
            yield pa.RecordBatch.from_pylist(pending, schema=schema)
            pending = []
    if pending:
        yield pa.RecordBatch.from_pylist(pending, schema=schema)


async def write_parquet(examples: AsyncIterator[Example], path: Path) -> int:
    """Write a Parquet file, one row group per batch; returns the number of rows."""
    written = 0
    writer = pq.ParquetWriter(path, arrow_schema(), compression="zstd")
    try:
        async for batch in record_batches(examples):
            await asyncio.to_thread(writer.write_batch, batch)
            written += batch.num_rows
    finally:
        writer.close()
    return written


async def parquet_export(examples: AsyncIterator[Example], prefix: str) -> tuple[Path, int]:
    """Write the examples to a temporary Parquet file for streaming back; returns its path and size in bytes.
    The caller deletes the file (``iter_file`` does, once it is read)."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix=prefix, suffix=".parquet")
    os.close(fd)
    path = Path(name)
    try:
        await write_parquet(examples, path)
        size = (await asyncio.to_thread(path.stat)).st_size
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return path, size


def iter_file(path: Path, chunk: int = FILE_CHUNK) -> Iterator[bytes]:
    """A written file's bytes, chunk by chunk; the file is deleted once read (or abandoned)."""
    try:
        with path.open("rb") as fh:
            while data := fh.read(chunk):
                yield data
    finally:
        path.unlink(missing_ok=True)


def parquet_batches(path: Path, rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows as record batches, never the whole table."""
    with pq.ParquetFile(path) as pf:
        yield from pf.iter_batches(batch_size=rows)


def write_hf_dataset(batches: Iterator[pa.RecordBatch], directory: Path, description: str = "") -> int:
    """Write what ``datasets.Dataset.save_to_disk`` writes, so ``datasets.load_from_disk(directory)`` reads it:
    the rows as an Arrow IPC *stream* file, ``dataset_info.json`` and ``state.json``. The features are left
    for ``datasets`` to read from the Arrow schema (the same across its versions). Returns the row count."""
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    rows = 0
    digest = hashlib.sha256()
    try:
        schema = arrow_schema()
        with ipc.new_stream(directory / HF_DATA_FILE, schema) as writer:
            for batch in batches:
                batch = batch.cast(schema) if batch.schema != schema else batch
                writer.write_batch(batch)
                rows += batch.num_rows
                digest.update("\n".join(batch.column("id").to_pylist()).encode())
        info = {"description": description, "citation": "", "homepage": "", "license": "", "features": None}
        state: dict[str, Any] = {
            "_data_files": [{"filename": HF_DATA_FILE}],
            "_fingerprint": digest.hexdigest()[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (directory / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (directory / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return rows


# --- math jobs: the review queue decides what is exported -------------------------------------------------


class ReviewFilter(StrEnum):
    """Which math questions an export serves, by review state (``workers.review``); reviewers' edits applied."""

    ACCEPTED = "accepted"
    NEEDS_REVIEW = "needs_review"
    ALL = "all"  # every question that passed the automatic checks, whatever its review state


REVIEW_STATES: dict[ReviewFilter, frozenset[str] | None] = {
    ReviewFilter.ACCEPTED: frozenset({"accepted"}),
    ReviewFilter.NEEDS_REVIEW: frozenset({"needs_review"}),
    ReviewFilter.ALL: None,
}

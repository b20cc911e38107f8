"""Curate a dataset a team brings: item i is row i of the file, read without an LLM call.

The curate stage then treats it like any generated item (quality checks, dedup, the optional judge). The
row itself travels verbatim as ``source_row``, so the accepted and rejected files keep every input field.
``prepare`` reads the chunk's rows in one pass (a thread; a seek to the chunk's first row, then a stream
that stops at its last), so no item re-reads the file.
"""

import asyncio
from pathlib import Path
from typing import Any, ClassVar, Unpack

from redis.asyncio import Redis

from schemas.examples import GeneratedItem, Reason, WorkItem
from schemas.jobs import CurateJobSpec, JobRecord
from schemas.llm import ChatMessage, ChatResult
from schemas.settings import EndpointSettings, get_settings
from store.datasets import resolve_path
from workers.curate.source import pair, read_block
from workers.llm.client import ChatClient, ChatOptions
from workers.llm.errors import LLMFatal
from workers.recipes.base import Recipe

# A job that calls no LLM (curate without a judge) runs with no endpoint configured: these stand in for one.
NO_ENDPOINT = EndpointSettings(base_url="http://127.0.0.1:9/v1", model="none")


class NoLLM:
    """The client of a job that calls no LLM: a call would be a bug, and fails the job saying so."""

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        raise LLMFatal(400, "", "this job has no endpoint: recipe curate calls an LLM only for quality.judge")


class CurateRecipe(Recipe):
    name: ClassVar[str] = "curate"
    template_version: ClassVar[str] = "none"

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, CurateJobSpec)
        self.spec = record.spec
        self.block = record.chunk_size
        self.rows: dict[int, Any] = {}  # filled per chunk by ``prepare``, each row dropped once emitted
        self._path: Path | None = None

    def path(self) -> Path:
        if self._path is None:
            self._path = resolve_path(get_settings().data_dir, self.spec.source.path)
        return self._path

    async def prepare(self, redis: Redis, indexes: list[int]) -> None:
        wanted = sorted(i for i in indexes if i not in self.rows)
        if not wanted:
            return
        first_block, last_block = wanted[0] // self.block, wanted[-1] // self.block
        for b in range(first_block, last_block + 1):  # one block per chunk unless chunks were split
            start, stop = max(b * self.block, wanted[0]), min((b + 1) * self.block, wanted[-1] + 1)
            offsets = self.spec.offsets
            if offsets and b < len(offsets):  # JSONL / JSON: seek to the block's first row, skip to ``start``
                found = await asyncio.to_thread(
                    read_block, self.path(), self.spec.source, b * self.block, stop, offsets[b]
                )
            else:  # Parquet: row groups seek by their metadata
                found = await asyncio.to_thread(read_block, self.path(), self.spec.source, start, stop, 0)
            want = set(wanted)
            self.rows.update((i, row) for i, row in found.items() if i in want and i >= start)

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        return WorkItem(index=index, attempt=attempt)

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        row = self.rows.pop(item.index, None)
        if row is None:  # the file changed under the job (rows are checked at submit)
            return self.record_for(item, error=Reason.UNPARSEABLE, error_detail=f"row {item.index} could not be read")
        source = self.spec.source
        assert source.row_format is not None
        found = pair(row, source.row_format, source.messages_column)
        return self.record_for(
            item, instruction=found.instruction, input=found.input, output=found.output, source_row=row
        )

"""What every extraction phase shares: the job, its store, the asker, the step's deadline, and the rule for
calls that fail.

A step works in bounded windows (never one task per row): each window's calls run concurrently, each
call stores its own outcome as it ends, and the resume position moves only once the whole window is done.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from redis.asyncio import Redis

from schemas.errors import JobFailed
from schemas.extract import EXEMPLAR_CHARS, ExtractAgnosticSpec, ExtractDatasetSpec, UnlabelledRow
from schemas.jobs import JobRecord, JobState
from store import records
from store.extraction import ExtractStore
from workers.batch.parker import Parked
from workers.extract.ask import Asker
from workers.extract.reader import DatasetReader, Position, SeedRow
from workers.llm.errors import LLMBadRequest, LLMError, LLMFatal
from workers.unit import EndpointDown

MAX_PARALLEL_CALLS = 64  # calls per window; the client's limiter bounds what is really in flight
MAX_WINDOW_ROWS = 2000
REPORT_TEXT_CHARS = 500

T = TypeVar("T")


class ExtractFailed(JobFailed):
    """The job cannot produce a skill set; the message says why (it becomes the job's message)."""


@dataclass
class Phase:
    redis: Redis
    record: JobRecord
    store: ExtractStore
    asker: Asker
    deadline: float  # time.monotonic() after which the step hands over to the next one
    final_try: bool  # the last arq try of this step: failed calls are reported instead of retried
    parallel: int
    reader: DatasetReader | None = None

    @property
    def spec(self) -> ExtractAgnosticSpec | ExtractDatasetSpec:
        spec = self.record.spec
        assert isinstance(spec, ExtractAgnosticSpec | ExtractDatasetSpec)
        return spec

    @property
    def dataset(self) -> ExtractDatasetSpec:
        assert isinstance(self.record.spec, ExtractDatasetSpec)
        return self.record.spec

    async def should_pause(self) -> bool:
        """True when the step's time is up or the job was cancelled (then the step just stops)."""
        if time.monotonic() >= self.deadline:
            return True
        state = await records.get_state(self.redis, self.record.id)
        return state is None or state.finished

    async def note(self, remark: str) -> None:
        """A remark for the job's final message (kept in Redis: the step that finishes may be a later one)."""
        await self.store.add_note(remark)

    async def say(self, message: str) -> None:
        await records.set_state(self.redis, self.record.id, JobState.RUNNING, message, only_from=JobState.RUNNING)

    async def run_calls(
        self, work: Sequence[T], call: Callable[[T], Awaitable[None]], give_up: Callable[[T, LLMError], Awaitable[None]]
    ) -> None:
        """Run ``call`` on every unit concurrently; a unit whose endpoint call failed for good goes to
        ``give_up`` (bad request, or the last try), otherwise the step is retried later."""
        results = await asyncio.gather(*(call(unit) for unit in work), return_exceptions=True)
        down: list[LLMError] = []
        parked: list[Parked] = []
        for unit, result in zip(work, results, strict=True):
            if isinstance(result, Parked):  # batch mode: answered in a later round (the window is replayed)
                parked.append(result)
            elif isinstance(result, LLMFatal):
                raise result
            if isinstance(result, LLMBadRequest) or (isinstance(result, LLMError) and self.final_try):
                await give_up(unit, result)
            elif isinstance(result, LLMError):
                down.append(result)
            elif isinstance(result, BaseException):
                raise result
        if parked:
            raise parked[0]
        if down:
            raise EndpointDown(f"{len(down)} calls failed after retries: {down[0]}")

    async def stream_rows(
        self, phase: Literal["label", "map"], window: Callable[[list[SeedRow]], Awaitable[None]]
    ) -> bool:
        """Feed the dataset to ``window`` from this phase's resume position; False if the step must hand over."""
        assert self.reader is not None
        state = await self.store.state()
        start = Position(int(state.get(f"{phase}_row", 0)), int(state.get(f"{phase}_offset", 0)))
        per_window = min(MAX_WINDOW_ROWS, max(self.dataset.rows_per_call, self.dataset.rows_per_call * self.parallel))
        async for rows in self.reader.batches(start, per_window, self.dataset.rows):
            await window(rows)
            after = rows[-1].after
            await self.store.set_state(**{f"{phase}_row": after.row, f"{phase}_offset": after.offset})
            if await self.should_pause():
                return False
        return True


def unlabelled(row: SeedRow, phase: Literal["label", "map"], reason: str, detail: str) -> UnlabelledRow:
    return UnlabelledRow.model_validate(
        {
            "row": row.index,
            "phase": phase,
            "reason": reason,
            "detail": detail[:500],
            "text": row.text[:REPORT_TEXT_CHARS],
        }
    )


def exemplar(text: str) -> str:
    return text if len(text) <= EXEMPLAR_CHARS else text[: EXEMPLAR_CHARS - 1].rstrip() + "…"

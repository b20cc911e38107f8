"""Shirker ablation (papers.md §A): replace a share of a finished job's responses with low-quality ones.

Item i is the source job's accepted example with sequence number i. A seeded permutation of the items picks
exactly ``round(rate x count)`` of them; each of those is re-asked through the job's endpoint with the
shirker prompt of the job's kind (``junk``: an extremely unhelpful, lazy, generic, padded answer;
``brevity``: the instruction with "answer in one paragraph") and labelled ``shirker: true``. Every other
item is copied unchanged, with its original provenance, and no call. Each record names its source.
"""

import math
from typing import ClassVar

from redis.asyncio import Redis

from schemas.examples import Example, GeneratedItem, WorkItem
from schemas.jobs import JobRecord, ShirkExtras, ShirkJobSpec
from schemas.llm import ChatMessage, Usage
from schemas.sampling import derive_rng
from schemas.settings import EndpointSettings
from store import keys
from workers.llm.client import ChatClient
from workers.recipes.base import Conversation, ParseFailure, Recipe


def shirker_indexes(seed: int, count: int, rate: float) -> frozenset[int]:
    """Exactly ``round(rate x count)`` (halves round up) of the indexes ``0..count-1``, fixed by the seed."""
    order = list(range(count))
    derive_rng("shirk", seed, count).shuffle(order)
    return frozenset(order[: math.floor(rate * count + 0.5)])


class ShirkRecipe(Recipe):
    name: ClassVar[str] = "shirk"
    template_version: ClassVar[str] = "v1"
    templates: ClassVar[tuple[str, ...]] = ("workers.recipes", "shirk")

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, ShirkJobSpec)
        self.spec = record.spec
        self.shirkers = shirker_indexes(self.spec.seed, self.spec.count, self.spec.rate)
        self.prompt = self._template(self.spec.kind)
        self.sources: dict[int, Example] = {}  # loaded per chunk by ``prepare``, dropped once generated

    async def prepare(self, redis: Redis, indexes: list[int]) -> None:
        wanted = [i for i in indexes if i not in self.sources]
        if not wanted:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for i in wanted:
                pipe.hget(keys.bucket(self.spec.source_job, "accepted", i), str(i))
            found = await pipe.execute()
        for i, raw in zip(wanted, found, strict=True):
            if raw is not None:
                self.sources[i] = Example.model_validate_json(raw)

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        source = self.sources.get(index)
        if source is None:  # not loaded (an error record for an item whose source is gone)
            return WorkItem(index=index, attempt=attempt)
        prompt = None
        if index in self.shirkers:
            request = source.instruction + (f"\n\n{source.input}" if source.input else "")
            prompt = [ChatMessage(role="user", content=self.prompt.substitute(request=request).strip())]
        return WorkItem(index=index, attempt=attempt, skills=source.skills, query_type=source.query_type, prompt=prompt)

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        source = self.sources.get(item.index)
        if source is None:
            detail = f"source job {self.spec.source_job} has no accepted example with seq {item.index}"
            raise ParseFailure(detail, Usage(), [])
        if item.prompt is None:  # copied unchanged: the source's own provenance, no call
            self.sources.pop(item.index, None)
            return GeneratedItem(
                job_id=self.record.id,
                index=item.index,
                skills=source.skills,
                query_type=source.query_type,
                instruction=source.instruction,
                input=source.input,
                output=source.output,
                model=source.model,
                endpoint=source.endpoint,
                recipe=source.recipe,
                template_version=source.template_version,
                conversation=source.conversation if self.spec.keep_conversation else [],
                extras=ShirkExtras(shirker=False, source_job=self.spec.source_job, source_id=source.id).model_dump(),
            )
        chat = Conversation(llm, self.record, item)
        result = await chat.ask(item.prompt[-1].content)
        self.sources.pop(item.index, None)
        return self.record_for(
            item,
            instruction=source.instruction,
            input=source.input,
            output=result.content.strip(),
            finish_reason=result.finish_reason,
            usage=chat.usage,
            conversation=chat.messages if self.spec.keep_conversation else [],
            shirker=True,
            shirker_kind=self.spec.kind,
            source_job=self.spec.source_job,
            source_id=source.id,
        )

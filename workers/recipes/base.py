"""What every recipe provides: items from indexes, and the LLM calls that turn an item into a record.

A recipe never touches the queue, Redis or curation; adding one means a spec model
(``schemas.recipes.RecipeSpec``, registered) and an implementation registered with
``workers.recipes.register_recipe``: built-ins live here, a plug-in in any module named in ``SKILLMIX_RECIPES``.
"""

from abc import ABC, abstractmethod
from string import Template
from typing import ClassVar

from redis.asyncio import Redis

from schemas.errors import AnswerUnusable
from schemas.examples import GeneratedItem, WorkItem
from schemas.jobs import JobRecord
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.sampling import derive_rng
from schemas.settings import EndpointSettings
from workers.llm.client import ChatClient
from workers.templates import load_template


class ParseFailure(AnswerUnusable):
    """The model answered, but not in a shape we can use: the item is redrawn (and counted)."""

    def __init__(
        self, detail: str, usage: Usage, conversation: list[ChatMessage], fields: dict[str, object] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail, self.usage, self.conversation = detail, usage, conversation
        self.fields = fields or {}  # extra record fields kept if this is the item's last try (e.g. math history)


class Conversation:
    """One multi-turn chat with the generator, accumulating usage across its calls."""

    def __init__(self, llm: ChatClient, record: JobRecord, item: WorkItem, system: str | None = None) -> None:
        self.llm, self.record, self.item = llm, record, item
        self.messages: list[ChatMessage] = [ChatMessage(role="system", content=system)] if system else []
        self.usage = Usage()
        self.turn = 0

    async def ask(
        self, prompt: str, json_schema: dict[str, object] | None = None, max_tokens: int | None = None
    ) -> ChatResult:
        self.messages.append(ChatMessage(role="user", content=prompt))
        params = self.record.spec.params
        seed = derive_rng(self.record.spec.seed, self.item.index, self.item.attempt, self.turn).getrandbits(31)
        result = await self.llm.chat(
            self.messages,
            max_tokens=max_tokens or params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            frequency_penalty=params.frequency_penalty,
            seed=seed,
            json_schema=json_schema,
        )
        self.turn += 1
        self.usage = self.usage.add(result.usage)
        self.messages.append(ChatMessage(role="assistant", content=result.content))
        return result


class Recipe(ABC):
    name: ClassVar[str]
    template_version: ClassVar[str] = ""
    # Where the prompts live: (package, folders...) under its ``templates/``, then the version folder.
    templates: ClassVar[tuple[str, ...]] = ()
    # A recipe that calls a judge itself (eval-math): the judge endpoint's metered client, set per chunk.
    judge_llm: ChatClient | None = None
    judge_json: bool = False  # whether that endpoint takes a JSON schema for its answer

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        self.record, self.endpoint_name, self.endpoint = record, endpoint_name, endpoint

    @classmethod  # noqa: B027 (optional hook)
    def close_process(cls) -> None:
        """At worker shutdown: release what this recipe keeps per process (a pool it started on first use)."""

    async def prepare(self, redis: Redis, indexes: list[int]) -> None:  # noqa: B027 (optional hook)
        """Before a chunk runs its items: load what they need from storage. Most recipes need nothing; one
        that derives a dataset from another job's examples (``shirk``) reads them here, never elsewhere."""

    @abstractmethod
    def item(self, index: int, attempt: int = 0) -> WorkItem:
        """The work item for an index; a pure function of the job so any worker rebuilds it."""

    @abstractmethod
    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        """Run the item's LLM calls; raise ParseFailure when the answer has no usable shape."""

    def _template(self, name: str) -> Template:
        """This recipe's prompt ``name`` at its ``template_version`` (the version is on every record)."""
        return load_template(*self.templates, self.template_version, name)

    def record_for(self, item: WorkItem, **fields: object) -> GeneratedItem:
        """The record of an item; fields that are not ``GeneratedItem``'s are the recipe's extras, checked by
        its ``record_extras`` model (every key of which the record then carries)."""
        extras = {k: fields.pop(k) for k in list(fields) if k not in GeneratedItem.model_fields}
        model = self.record.spec.record_extras
        if model is not None:
            extras = model.model_validate(extras).model_dump(mode="json")
        return GeneratedItem.model_validate(
            {
                "extras": extras,
                "job_id": self.record.id,
                "index": item.index,
                "attempts": item.attempt + 1,
                "skills": item.skills,
                "query_type": item.query_type,
                "model": self.endpoint.model,
                "endpoint": self.endpoint_name,
                "recipe": self.name,
                "template_version": self.template_version,
                **fields,
            }
        )

"""A small recipe that lives only in the tests: registered by importing this module (``SKILLMIX_RECIPES=
tests.recipes.echo``), with no edit to shared code. One item = one LLM call about the job's ``topic``; every
record carries ``echo_len`` (the answer's length), flattened into the stored record and its exports."""

from typing import ClassVar, Literal

from pydantic import Field

from schemas.base import StrictModel
from schemas.examples import GeneratedItem, WorkItem
from schemas.jobs import ItemsJobSpec
from schemas.recipes import register_spec
from workers.llm.client import ChatClient
from workers.recipes import register_recipe
from workers.recipes.base import Conversation, Recipe


class EchoExtras(StrictModel):
    echo_len: int | None = None


@register_spec
class EchoJobSpec(ItemsJobSpec):
    """Ask the endpoint about ``topic`` once per item."""

    recipe: Literal["echo"] = "echo"
    topic: str = Field(min_length=1, max_length=200)
    record_extras: ClassVar[type[StrictModel] | None] = EchoExtras


@register_recipe
class EchoRecipe(Recipe):
    name: ClassVar[str] = "echo"
    template_version: ClassVar[str] = "none"

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        return WorkItem(index=index, attempt=attempt)

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        assert isinstance(self.record.spec, EchoJobSpec)
        chat = Conversation(llm, self.record, item)
        prompt = f"Write a short paragraph about {self.record.spec.topic} (number {item.index})."
        result = await chat.ask(prompt)
        return self.record_for(
            item,
            instruction=prompt,
            output=result.content,
            finish_reason=result.finish_reason,
            usage=chat.usage,
            echo_len=len(result.content),
        )

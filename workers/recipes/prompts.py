"""One completion per given prompt: bulk generation for data that needs no skill mixing."""

from typing import ClassVar

from schemas.examples import GeneratedItem, WorkItem
from schemas.jobs import JobRecord, PromptsJobSpec
from schemas.llm import ChatMessage
from schemas.settings import EndpointSettings
from workers.llm.client import ChatClient
from workers.recipes.base import Conversation, Recipe


class PromptsRecipe(Recipe):
    name: ClassVar[str] = "prompts"
    template_version: ClassVar[str] = "none"

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, PromptsJobSpec)
        self.spec = record.spec

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        prompt = self.spec.prompts[index]
        messages = [ChatMessage(role="user", content=prompt)] if isinstance(prompt, str) else prompt
        return WorkItem(index=index, attempt=attempt, prompt=messages)

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        assert item.prompt is not None
        *history, last = item.prompt
        chat = Conversation(llm, self.record, item)
        chat.messages.extend(history)
        result = await chat.ask(last.content)
        return self.record_for(
            item,
            instruction=last.content,
            output=result.content,
            finish_reason=result.finish_reason,
            usage=chat.usage,
            conversation=chat.messages if self.spec.keep_conversation else [],
        )

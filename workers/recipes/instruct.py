"""Instruct-SkillMix generation (papers.md §A stage 2): write, critique as the asker, refine.

The conversation: write a (request, response) pair needing all k skills; rewrite if cut off; critique as
the person who asked; refine both; rewrite if cut off again. The final pair is parsed from the last turn.
Endpoints that support JSON-schema output are asked for it, so parsing never depends on luck.
"""

from typing import ClassVar

from schemas.examples import GeneratedItem, WorkItem
from schemas.jobs import InstructJobSpec, JobRecord
from schemas.llm import ChatResult
from schemas.settings import EndpointSettings
from workers.llm.client import ChatClient
from workers.recipes.base import Conversation, ParseFailure, Recipe
from workers.recipes.parse import PairNotFound, parse_pair
from workers.sampler import SkillSampler

PAIR_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"instruction": {"type": "string"}, "response": {"type": "string"}},
    "required": ["instruction", "response"],
    "additionalProperties": False,
}


class InstructRecipe(Recipe):
    name: ClassVar[str] = "instruct"
    template_version: ClassVar[str] = "v1"
    templates: ClassVar[tuple[str, ...]] = ("workers.recipes", "instruct")

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, InstructJobSpec) and record.skill_set is not None
        self.spec = record.spec
        self.skills = {s.name: s for s in record.skill_set.skills}
        self.query_types = {q.name: q for q in record.skill_set.query_types}
        self.sampler = SkillSampler(list(self.skills), list(self.query_types), record.spec.k, record.spec.seed)
        self.schema = self._pair_schema(endpoint) if endpoint.json_schema else None
        self.format = self._template("format_json" if endpoint.json_schema else "format_text").template

    def _pair_schema(self, endpoint: EndpointSettings) -> dict[str, object]:
        """Where the server enforces string lengths, steer the answer into the range the quality stage wants
        and inside max_tokens (about 3 characters a token, leaving room for the request and the JSON);
        small local models otherwise stop early or ramble until they are cut off."""
        if not endpoint.schema_string_bounds:
            return PAIR_SCHEMA
        quality, max_tokens = self.spec.quality, self.spec.params.max_tokens
        instruction_max = min(600, max(80, max_tokens))
        response_min = 7 * quality.min_response_words
        response_max = max(response_min + 200, 3 * max_tokens - instruction_max - 60)
        return {
            **PAIR_SCHEMA,
            "properties": {
                "instruction": {
                    "type": "string",
                    "minLength": 6 * quality.min_instruction_words,
                    "maxLength": instruction_max,
                },
                "response": {"type": "string", "minLength": response_min, "maxLength": response_max},
            },
        }

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        return self.sampler.item(index, attempt)

    def _skill_lines(self, item: WorkItem) -> str:
        lines = []
        for name in item.skills:
            skill = self.skills[name]
            text = f"- {name}" + (f": {skill.description}" if skill.description else "")
            if skill.examples:
                text += "\n  e.g. " + "\n  e.g. ".join(ex[:300] for ex in skill.examples[:2])
            lines.append(text)
        return "\n".join(lines)

    async def _ask_until_whole(self, chat: Conversation, prompt: str) -> ChatResult:
        result = await chat.ask(prompt, self.schema)
        if result.finish_reason == "length":
            rewrite = self._template("rewrite_cutoff").substitute(format=self.format)
            result = await chat.ask(rewrite, self.schema)
        return result

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        query = self.query_types[item.query_type or ""]
        chat = Conversation(llm, self.record, item, system=self._template("system").template.strip())
        write = self._template("write").substitute(
            query_type=query.name,
            query_definition=query.definition,
            skills=self._skill_lines(item),
            format=self.format,
        )
        result = await self._ask_until_whole(chat, write)
        if self.spec.refine:
            critique = self._template("critique").substitute(skill_list=", ".join(item.skills))
            await chat.ask(critique, max_tokens=max(64, self.spec.params.max_tokens // 2))  # a list, not an essay
            result = await self._ask_until_whole(chat, self._template("refine").substitute(format=self.format))
        try:
            instruction, response = parse_pair(result.content)
        except PairNotFound as exc:
            raise ParseFailure(str(exc), chat.usage, chat.messages) from exc
        return self.record_for(
            item,
            instruction=instruction,
            output=response,
            finish_reason=result.finish_reason,
            usage=chat.usage,
            conversation=chat.messages if self.spec.keep_conversation else [],
        )

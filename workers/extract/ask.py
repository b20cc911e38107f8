"""One extraction question: render a versioned template, call the LLM, parse the JSON, count the usage.

Endpoints that support JSON-schema output get the schema (named ``extract_<task>``); the others get the
same prompt, which always spells out the JSON shape, and the answer is parsed leniently. Usage goes to
the job's counters as each call ends, so progress shows real spend even if the step is later redone.
"""

from functools import cache
from importlib import resources
from string import Template
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.llm import ChatMessage, Usage
from schemas.sampling import derive_rng
from store.extraction import ExtractStore
from workers.extract.answers import parse_json
from workers.llm.client import LLMClient
from workers.llm.errors import LLMError

TEMPLATE_VERSION = "v1"
CHARS_PER_TOKEN = 4  # same rough rule as the client's limiter
PROMPT_OVERHEAD_TOKENS = 700  # system message plus a template's instructions

A = TypeVar("A", bound=BaseModel)


class Unparseable(Exception):
    """The model answered, but not in the asked shape."""


@cache
def template(name: str) -> Template:
    path = resources.files("workers.extract").joinpath("templates", TEMPLATE_VERSION, f"{name}.txt")
    return Template(path.read_text(encoding="utf-8"))


def tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def render(name: str, payload: dict[str, Any], **values: object) -> str:
    """The template with its input as one JSON line between <input> tags (unambiguous for any model)."""
    body = orjson.dumps(payload).decode()
    return template(name).substitute(values, input=body).strip()


class Asker:
    def __init__(self, llm: LLMClient, store: ExtractStore, spec: ExtractAgnosticSpec | ExtractDatasetSpec) -> None:
        self.llm, self.store, self.spec = llm, store, spec
        self.json_schema = llm.endpoint.json_schema
        self.system = template("system").template.strip()

    async def ask(
        self, task: str, prompt: str, schema: dict[str, Any], shape: type[A], max_tokens: int, *seed_key: object
    ) -> A:
        """One call; raises ``Unparseable`` (counted as a parse failure) or the client's ``LLMError``."""
        params = self.spec.params
        messages = [ChatMessage(role="system", content=self.system), ChatMessage(role="user", content=prompt)]
        try:
            result = await self.llm.chat(
                messages,
                max_tokens=min(max_tokens, params.max_tokens),
                temperature=params.temperature,
                top_p=params.top_p,
                seed=derive_rng(self.spec.seed, task, *seed_key).getrandbits(31),
                json_schema=schema if self.json_schema else None,
                schema_name=f"extract_{task}",
            )
        except LLMError as exc:
            await self._count(exc.usage or Usage())
            raise
        await self._count(result.usage)
        try:
            return shape.model_validate(parse_json(result.content))
        except (ValueError, ValidationError) as exc:
            await self.store.count("parse_failures")
            cut = " (cut off at max_tokens)" if result.finish_reason == "length" else ""
            raise Unparseable(f"{task} answer unusable{cut}: {str(exc)[:300]}") from exc

    async def _count(self, u: Usage) -> None:
        await self.store.count_usage(u.calls, u.retries, u.rate_limited, u.prompt_tokens, u.completion_tokens)

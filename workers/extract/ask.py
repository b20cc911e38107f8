"""One extraction question: render a versioned template, call the LLM, parse the JSON, count the usage.

Endpoints that support JSON-schema output get the schema (named ``extract_<task>``); the others get the
same prompt, which always spells out the JSON shape, and the answer is parsed leniently. Calls, tokens and
cost reach the job's counters through the runner's metered path, as for any job.
"""

from string import Template
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.errors import AnswerUnusable
from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.llm import ChatMessage
from schemas.sampling import derive_rng
from store.extraction import ExtractStore
from workers.lenient import parse_json
from workers.llm.client import ChatClient
from workers.llm.limits import text_tokens
from workers.templates import load_template

TEMPLATE_VERSION = "v1"
PROMPT_OVERHEAD_TOKENS = 700  # system message plus a template's instructions

A = TypeVar("A", bound=BaseModel)


class Unparseable(AnswerUnusable):
    """The model answered, but not in the asked shape."""


def template(name: str) -> Template:
    return load_template("workers.extract", TEMPLATE_VERSION, name)


def tokens(text: str) -> int:
    """The client's estimate, rounded up: a packed piece of text costs at least one token."""
    return text_tokens(text) + 1


def render(name: str, payload: dict[str, Any], **values: object) -> str:
    """The template with its input as one JSON line between <input> tags (unambiguous for any model)."""
    body = orjson.dumps(payload).decode()
    return template(name).substitute(values, input=body).strip()


class Asker:
    """Asks through the job's metered view of its endpoint (``workers.meter``), which counts each call
    at send and charges its tokens; here only parse failures are counted."""

    def __init__(
        self,
        llm: ChatClient,
        store: ExtractStore,
        spec: ExtractAgnosticSpec | ExtractDatasetSpec,
        *,
        json_schema: bool,
    ) -> None:
        self.llm, self.store, self.spec, self.json_schema = llm, store, spec, json_schema
        self.system = template("system").template.strip()

    async def ask(
        self, task: str, prompt: str, schema: dict[str, Any], shape: type[A], max_tokens: int, *seed_key: object
    ) -> A:
        """One call; raises ``Unparseable`` (counted as a parse failure) or the client's ``LLMError``."""
        params = self.spec.params
        messages = [ChatMessage(role="system", content=self.system), ChatMessage(role="user", content=prompt)]
        result = await self.llm.chat(
            messages,
            max_tokens=min(max_tokens, params.max_tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            seed=derive_rng(self.spec.seed, task, *seed_key).getrandbits(31),
            json_schema=schema if self.json_schema else None,
            schema_name=f"extract_{task}",
        )
        try:
            return shape.model_validate(parse_json(result.content))
        except (ValueError, ValidationError) as exc:
            await self.store.count("parse_failures")
            cut = " (cut off at max_tokens)" if result.finish_reason == "length" else ""
            raise Unparseable(f"{task} answer unusable{cut}: {str(exc)[:300]}") from exc

"""One extraction question: render a versioned template, call the LLM, parse the JSON, count the usage.

Endpoints that support JSON-schema output get the schema (named ``extract_<task>``); the others get the
same prompt, which always spells out the JSON shape, and the answer is parsed leniently. Calls, tokens and
cost reach the job's counters through the runner's metered path, as for any job.
"""

from functools import cache
from importlib import resources
from string import Template
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.llm import ChatMessage
from workers.extract.answers import parse_json
from workers.extract.store import ExtractStore
from workers.llm.client import ChatClient
from workers.sampler import derive_rng

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
    """Asks through the job's metered view of its endpoint (``workers.runner.meter``), which counts each call
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

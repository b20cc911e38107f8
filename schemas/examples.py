"""Records that flow from the generator through curation into storage."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    Field,
    GetJsonSchemaHandler,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, to_jsonable_python

from schemas.base import StrictModel
from schemas.llm import ChatMessage, Usage
from schemas.recipes import extra_field_names, extras_models

RawKey = Annotated[str, StringConstraints(strip_whitespace=False)]  # a source row's keys, never stripped


class Reason(StrEnum):
    """Machine-readable reasons an item is not accepted."""

    UNPARSEABLE = "unparseable"
    LLM_ERROR = "llm_error"
    INTERNAL_ERROR = "internal_error"  # the recipe raised on this item (a bug): rejected, the job goes on
    CUT_OFF = "cut_off"
    EMPTY_RESPONSE = "empty_response"
    TOO_SHORT = "too_short"
    REFUSAL = "refusal"
    RESTATES_INSTRUCTION = "restates_instruction"
    REPETITIVE = "repetitive"
    INCOMPLETE = "incomplete"  # ends mid-sentence, on a bare list marker or inside a code fence
    OFF_TOPIC = "off_topic"  # shares too little content with the instruction
    LOW_NOVELTY = "low_novelty"  # too few of the response's content words are new (a paraphrased re-ask)
    VAGUE = "vague"  # filler and hedging with no specifics
    ONE_PARAGRAPH = "one_paragraph"  # a single unstructured paragraph for a substantial request
    TOO_BRIEF = "too_brief"  # far shorter than the job's typical response
    PLACEHOLDER = "placeholder"  # leaked template text: {{answer}}, [Your Name], <insert ...>
    IGNORES_SKILLS = "ignores_skills"  # touches none of the item's skills
    NOT_A_REQUEST = "not_a_request"  # the instruction is meta-talk, an answer or a fragment, not a request
    NO_SKILL_SHOWN = "no_skill_shown"  # neither side of the pair exhibits any of the item's skills
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    SEMANTIC_DUPLICATE = "semantic_duplicate"  # a paraphrase: embedding cosine >= dedup.semantic_threshold
    JUDGE_REJECTED = "judge_rejected"  # the LLM judge (quality.judge) failed it
    INVALID_PAIR = "invalid_pair"  # math: the two skills are not distinct or not combinable in one question
    RUBRIC_FAILED = "rubric_failed"  # math: no strict majority of the rubric validations said yes
    NO_MAJORITY = "no_majority"  # math: the independent solves agree on no answer by strict majority
    ANSWER_MISMATCH = "answer_mismatch"  # math: the solves' majority answer is not the question's own
    SURPLUS = "surplus"


class WorkItem(StrictModel):
    """One unit of generation, fully derived from (seed, index, attempt) so any worker rebuilds it."""

    index: int = Field(ge=0)
    attempt: int = Field(default=0, ge=0)
    skills: list[str] = Field(default_factory=list)
    query_type: str | None = None
    prompt: list[ChatMessage] | None = None


class JudgeOpinion(StrictModel):
    """One judge answer among several combined into a verdict (``quality.judge`` with n > 1 or endpoints)."""

    scores: dict[str, int] = Field(default_factory=dict)
    verdict: bool
    reason: str = ""
    model: str = ""
    endpoint: str = ""
    seed: int | None = None
    usage: Usage = Field(default_factory=Usage)


class JudgeVerdict(StrictModel):
    """The LLM judge's grading of one pair (``workers/curate/judge.py``): 1-5 per rubric criterion, one
    ``skill:<name>`` score per required skill. Several opinions: each kept in ``opinions``; ``scores`` then
    combine them per criterion (the lowest under ``all``, the lower median under ``majority``)."""

    scores: dict[str, int] = Field(default_factory=dict)
    verdict: bool
    reason: str = ""
    model: str = ""
    endpoint: str = ""
    template_version: str = ""
    usage: Usage = Field(default_factory=Usage)
    opinions: list[JudgeOpinion] = Field(default_factory=list)
    combine: str = ""
    reference_used: bool = False


class WithExtras(StrictModel):
    """A record with its recipe's own fields (``RecipeSpec.record_extras``) in ``extras``: keys that are not
    fields go there when the record is read, and come back as top-level keys when it is written, so stored
    JSON, API responses and export files carry them as plain fields. Values are kept as JSON data; read them
    typed with ``extras_of``."""

    extras: dict[str, Any] = Field(default_factory=dict, exclude=True)
    # Written with every registered recipe's extras keys (null when absent), so all records share one shape.
    all_extras: ClassVar[bool] = False

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Documented with every registered recipe's extras as plain properties (computed when the document
        is generated, so a plug-in's are in it); ``extras`` itself is not part of the wire format."""
        found = handler(schema)
        target = handler.resolve_ref_schema(found)
        properties = target.get("properties", {})
        properties.pop("extras", None)
        if cls.all_extras:
            for model in extras_models():
                own = handler.resolve_ref_schema(handler(model.__pydantic_core_schema__))
                for name, prop in own.get("properties", {}).items():
                    properties.setdefault(name, {k: v for k, v in prop.items() if k != "default"})
        return found

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any) -> Any:
        if isinstance(data, dict):
            extra = {k: to_jsonable_python(data[k]) for k in data if k not in cls.model_fields}
            if extra:
                data = {k: v for k, v in data.items() if k not in extra}
                data["extras"] = {**data.get("extras", {}), **extra}
        return data

    @model_serializer(mode="wrap")
    def _flatten(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):  # type: ignore[no-untyped-def]
        # (no return annotation: the JSON schema stays the model's own)
        out: dict[str, Any] = handler(self)
        extras = self.extras
        if self.all_extras:
            extras = {name: None for name in extra_field_names()} | extras
        for key, value in extras.items():
            if (
                (info.include is None or key in info.include)
                and (info.exclude is None or key not in info.exclude)
                and not (value is None and info.exclude_none)
            ):
                out[key] = value
        return out


E = TypeVar("E", bound=StrictModel)


def extras_of(record: WithExtras, model: type[E]) -> E:
    """The record's extras as the recipe's typed model (fields it lacks take their defaults)."""
    return model.model_validate({k: v for k, v in record.extras.items() if k in model.model_fields})


class GeneratedItem(WithExtras):
    """What a recipe hands to the curate stage (one Redis stream entry per item)."""

    job_id: str
    index: int
    attempts: int = 1
    skills: list[str] = Field(default_factory=list)
    query_type: str | None = None
    instruction: str = ""
    input: str = ""
    output: str = ""
    finish_reason: str | None = None
    error: Reason | None = None
    error_detail: str = ""
    model: str = ""
    endpoint: str = ""
    recipe: str = ""
    template_version: str = ""
    usage: Usage = Field(default_factory=Usage)
    conversation: list[ChatMessage] = Field(default_factory=list)
    judge: JudgeVerdict | None = None


class QualityVerdict(StrictModel):
    accepted: bool
    reasons: list[Reason] = Field(default_factory=list)
    detail: str = ""


class Example(WithExtras):
    """A stored record, accepted or rejected, with its full provenance."""

    all_extras: ClassVar[bool] = True

    id: str
    job_id: str
    index: int
    instruction: str
    input: str = ""
    output: str
    skills: list[str] = Field(default_factory=list)
    query_type: str | None = None
    model: str
    endpoint: str
    recipe: str
    template_version: str
    usage: Usage
    verdict: QualityVerdict
    duplicate_of: str | None = None
    conversation: list[ChatMessage] = Field(default_factory=list)
    judge: JudgeVerdict | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

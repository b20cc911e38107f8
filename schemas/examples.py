"""Records that flow from the generator through curation into storage."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from schemas.base import StrictModel
from schemas.evaluation import EvalResult
from schemas.llm import ChatMessage, Usage
from schemas.math import MathHistory

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


class JudgeVerdict(StrictModel):
    """The LLM judge's grading of one pair (``workers/curate/judge.py``): 1-5 per rubric criterion."""

    scores: dict[str, int] = Field(default_factory=dict)
    verdict: bool
    reason: str = ""
    model: str = ""
    endpoint: str = ""
    template_version: str = ""
    usage: Usage = Field(default_factory=Usage)


class GeneratedItem(StrictModel):
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
    # shirker ablation (recipe "shirk"): the label, and where the example came from
    shirker: bool | None = None
    shirker_kind: str | None = None
    source_job: str | None = None
    source_id: str | None = None
    source_row: dict[RawKey, Any] | None = None  # recipe curate: the input row, verbatim
    # recipe math: the verified final answer, and every stage's prompt, answer and verdict
    answer: str | None = None
    math: MathHistory | None = None
    eval: EvalResult | None = None  # recipe eval-math: how the question was graded


class QualityVerdict(StrictModel):
    accepted: bool
    reasons: list[Reason] = Field(default_factory=list)
    detail: str = ""


class Example(StrictModel):
    """A stored record, accepted or rejected, with its full provenance."""

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
    # shirker ablation (recipe "shirk"): the label, and where the example came from
    shirker: bool | None = None
    shirker_kind: str | None = None
    source_job: str | None = None
    source_id: str | None = None
    source_row: dict[RawKey, Any] | None = None  # recipe curate: the input row, verbatim
    # recipe math: the verified final answer, and every stage's prompt, answer and verdict
    answer: str | None = None
    math: MathHistory | None = None
    eval: EvalResult | None = None  # recipe eval-math: how the question was graded

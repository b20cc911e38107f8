"""The built-in recipes' job specs (registered in ``schemas.recipes``, which builds the one ``JobSpec`` type
from the registry), their record extras, job status and the queue payloads."""

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, StrictBool, TypeAdapter, field_validator, model_validator

from schemas.base import MAX_INT, RequestModel, StrictModel
from schemas.batches import BatchProgress
from schemas.curation import DedupSettings, QualitySettings
from schemas.datasets import DataFileSource, format_from_suffix
from schemas.evaluation import EvalQuestion, EvalResult
from schemas.examples import RawKey
from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.judge_eval import JudgeEvalRow, LabelledExample
from schemas.llm import ChatMessage
from schemas.math import MathHistory
from schemas.params import GenerationParams as GenerationParams  # re-exported: specs name them here
from schemas.params import JobBudget as JobBudget
from schemas.recipes import GenerationSpec as GenerationSpec  # re-exported: built from the registry
from schemas.recipes import JobSpec as JobSpec
from schemas.recipes import Prepared, RecipeSpec, SubmitContext, register_spec
from schemas.review import HelpTask
from schemas.skills import SkillSet, SkillSetCreate, parse_skill_set_ref

MAX_COUNT = 1_000_000


class BudgetLeft(StrictModel):
    """What a job may still spend before it pauses (none: that limit is not set)."""

    cost_usd: float | None = None
    tokens: int | None = None


class _JobSpecBase(RecipeSpec):
    count: int = Field(ge=1, le=MAX_COUNT, description="accepted examples wanted")
    seed: int = Field(default=0, ge=0, le=MAX_INT)
    endpoint: str | None = Field(default=None, description="endpoint name; the server default when absent")
    params: GenerationParams = Field(default_factory=GenerationParams)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    max_items: int | None = Field(
        default=None,
        ge=1,
        le=10 * MAX_COUNT,
        description="attempt budget: items generated at most (default 3 x count)",
    )
    item_retries: int = Field(default=2, ge=0, le=10, description="fresh draws after an unparseable answer")
    chunk_size: int | None = Field(default=None, ge=1, le=10_000)
    keep_conversation: StrictBool = Field(default=True, description="store the full conversation as provenance")
    budget: JobBudget | None = Field(
        default=None, description="spending cap; the job pauses at it (change it with PATCH /v1/jobs/{id})"
    )

    @model_validator(mode="after")
    def _budget(self) -> Self:
        if self.max_items is None:
            self.max_items = max(self.count, math.ceil(3 * self.count))
        if self.max_items < self.count:
            raise ValueError(f"max_items ({self.max_items}) must be at least count ({self.count})")
        return self

    @property
    def item_budget(self) -> int:
        """The attempt budget (``max_items``); the spending cap is ``budget``."""
        assert self.max_items is not None
        return self.max_items


ItemsJobSpec = _JobSpecBase
"""The base of a recipe spec whose items are generated in chunks and curated (a plug-in subclasses it)."""


class _SkillsJobSpec(_JobSpecBase):
    """A recipe that draws k skills per item from a skill set: a reference is checked at submit, an inline set
    must hold at least k skills."""

    skill_set: str | SkillSetCreate = Field(description="'name@version' / 'name' (latest) or an inline set")
    k: int = 2

    @field_validator("skill_set")
    @classmethod
    def _ref(cls, value: str | SkillSetCreate) -> str | SkillSetCreate:
        if isinstance(value, str):
            parse_skill_set_ref(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not isinstance(self.skill_set, str) and len(self.skill_set.skills) < self.k:
            raise ValueError(f"skill_set has {len(self.skill_set.skills)} skills, fewer than k={self.k}")
        return self

    async def prepare_submit(self, ctx: SubmitContext) -> Prepared:
        """The skill set is resolved (an inline one saved) now, so workers never look it up."""
        return Prepared(self, await ctx.skill_set(self.skill_set, self.k))


@register_spec
class InstructJobSpec(_SkillsJobSpec):
    """Instruct-SkillMix generation (papers.md §A stage 2)."""

    recipe: Literal["instruct"] = "instruct"
    k: int = Field(default=2, ge=1, le=5, description="skills per example")
    refine: StrictBool = Field(default=True, description="critique-and-refine turns")


Prompt = str | list[ChatMessage]


@register_spec
class PromptsJobSpec(_JobSpecBase):
    """One completion per given prompt: bulk generation without skill mixing."""

    recipe: Literal["prompts"] = "prompts"
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_COUNT)
    count: int = Field(default=0, ge=0, le=MAX_COUNT, description="defaults to the number of prompts")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            prompts = data.get("prompts")
            if isinstance(prompts, list) and prompts:
                data.setdefault("count", len(prompts))
                data.setdefault("max_items", len(prompts))
            quality = data.setdefault("quality", {})
            if isinstance(quality, dict):
                quality.setdefault("min_response_words", 1)
                quality.setdefault("min_instruction_words", 0)
                # the prompts are the user's own: whether each reads as a request is theirs to say
                default_checks = QualitySettings.model_fields["checks"].default
                quality.setdefault("checks", [c for c in default_checks if c != "not_a_request"])
            dedup = data.setdefault("dedup", {})
            if isinstance(dedup, dict):
                dedup.setdefault("near", False)
        return data

    @field_validator("prompts")
    @classmethod
    def _not_empty(cls, prompts: list[Prompt]) -> list[Prompt]:
        """An empty prompt would fail its whole chunk in the worker: refuse it here, naming its index."""
        empty = [
            i
            for i, prompt in enumerate(prompts)
            if (not prompt.strip() if isinstance(prompt, str) else not any(m.content.strip() for m in prompt))
        ]
        if empty:
            shown = ", ".join(f"prompts[{i}]" for i in empty[:10])
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            raise ValueError(
                f"{shown}{more} {'is' if len(empty) == 1 else 'are'} empty: a text prompt needs non-blank text, "
                "a chat prompt at least one message with non-blank content"
            )
        return prompts

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.count < 1 or self.count > len(self.prompts):
            raise ValueError(f"count must be between 1 and the number of prompts ({len(self.prompts)})")
        if self.item_budget > len(self.prompts):
            raise ValueError(f"max_items cannot exceed the number of prompts ({len(self.prompts)})")
        return self


class ShirkExtras(StrictModel):
    """A shirk record's label, and where the example came from."""

    shirker: bool | None = None
    shirker_kind: str | None = None
    source_job: str | None = None
    source_id: str | None = None


@register_spec
class ShirkJobSpec(_JobSpecBase):
    """Shirker ablation (papers.md §A): a copy of a finished job's accepted examples in which a ``rate`` share
    of the responses is regenerated with a shirker prompt (``junk``: lazy, generic, padded; ``brevity``: the
    instruction re-asked "in one paragraph"), every record labelled. ``count`` is the source's accepted count,
    set at submit. Quality checks and dedup are off by default: an ablation dataset keeps what it plants."""

    recipe: Literal["shirk"] = "shirk"
    source_job: str = Field(min_length=1, description="id of the finished job whose accepted examples are used")
    rate: float = Field(default=0.2, ge=0, le=1, description="share of responses replaced by shirkers")
    kind: Literal["junk", "brevity"] = Field(description="which shirker prompt (papers.md §A)")
    count: int = Field(default=0, ge=0, le=MAX_COUNT, description="set at submit: the source's accepted count")
    record_extras: ClassVar[type[StrictModel] | None] = ShirkExtras

    async def prepare_submit(self, ctx: SubmitContext) -> Prepared:
        """A shirk job covers its finished source job's accepted examples: count (and budget) are fixed here."""
        accepted = await ctx.finished_source("source_job", self.source_job, "shirk")
        return Prepared(self.model_copy(update={"count": accepted, "max_items": accepted}))

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            quality = data.setdefault("quality", {})
            if isinstance(quality, dict):
                quality.setdefault("enabled", False)
            dedup = data.setdefault("dedup", {})
            if isinstance(dedup, dict):
                dedup.setdefault("exact", False)
                dedup.setdefault("near", False)
        return data


class CurateSource(DataFileSource):
    """A dataset a team brings, for ``recipe: curate``: a server data-dir path (or an upload, set by the API)."""

    format: Literal["jsonl", "json", "parquet"] | None = Field(
        default=None, description="JSONL, one JSON array (Alpaca), or Parquet; from the file suffix if absent"
    )
    row_format: Literal["alpaca", "messages"] | None = Field(
        default=None,
        description="alpaca (instruction/input/output) or chat (messages with role/content, or ShareGPT "
        "conversations with from/value); detected from the first row if absent",
    )
    messages_column: str | None = Field(
        default=None, min_length=1, max_length=200, description="chat rows: the list's column (messages/conversations)"
    )

    @model_validator(mode="after")
    def _format(self) -> Self:
        if self.format is None:
            self.format = format_from_suffix(self.path, ("jsonl", "json", "parquet"))  # type: ignore[assignment]
        return self


class CurateExtras(StrictModel):
    """A curated record's input row, verbatim."""

    source_row: dict[RawKey, Any] | None = None


@register_spec
class CurateJobSpec(_JobSpecBase):
    """The curate stage (quality checks, dedup, optional judge) on a dataset a team brings: one item per row,
    read from the file without an LLM call. ``count`` and ``max_items`` are the rows, set at submit, so every
    row that passes is accepted; ``offsets`` (also set at submit) lets a worker seek to its chunk's rows."""

    recipe: Literal["curate"] = "curate"
    source: CurateSource
    count: int = Field(default=0, ge=0, le=MAX_COUNT, description="set at submit: the number of rows")
    chunk_size: int | None = Field(default=500, ge=1, le=10_000)
    keep_conversation: StrictBool = False
    offsets: list[Annotated[int, Field(ge=0, le=MAX_INT)]] = Field(
        default_factory=list, description="set at submit: where rows 0, chunk_size, 2 x chunk_size, ... start"
    )
    counts_shortfall: ClassVar[bool] = False  # a brought dataset: every row is decided, nothing "falls short"
    batched_curation: ClassVar[bool] = True
    record_extras: ClassVar[type[StrictModel] | None] = CurateExtras

    def needs_endpoint(self) -> bool:
        """Rows are read, not generated: only a judge calls an LLM."""
        return self.quality.judge is not None and self.quality.enabled


class MathExtras(StrictModel):
    """A math record's verified final answer, and every stage's prompt, answer and verdict."""

    answer: str | None = None
    math: MathHistory | None = None


@register_spec
class MathJobSpec(_SkillsJobSpec):
    """MATH^2 (papers.md §B): hard two-skill math questions, each with one verified answer. Stages: pair
    validation, question (with brief solution and exact answer) iterated until solvable, a sceptical attempt,
    a rubric validated by majority of ``n_validations``, and ``n_solves`` independent solves whose strict
    majority answer must equal the question's own. Only the basic quality checks run (the instruct ones do
    not fit a question with a brief solution); exact and near dedup of the question text stay on."""

    recipe: Literal["math"] = "math"
    k: Literal[2] = Field(default=2, description="skills per question (a pair)")
    n_validations: int = Field(default=3, ge=1, le=15, description="rubric validations; a strict majority passes")
    n_solves: int = Field(default=5, ge=1, le=25, description="independent solves voted on")
    max_question_turns: int = Field(
        default=2, ge=0, le=6, description="review-and-revise turns after the question is written"
    )
    has_review_queue: ClassVar[bool] = True
    record_extras: ClassVar[type[StrictModel] | None] = MathExtras

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            quality = data.setdefault("quality", {})
            if isinstance(quality, dict):
                quality.setdefault("checks", ["empty_response", "refusal", "placeholder"])
                quality.setdefault("min_response_words", 1)
                quality.setdefault("min_instruction_words", 3)
        return data


class EvalExtras(StrictModel):
    """The answer an eval-math response gave, and how the question was graded."""

    answer: str | None = None
    eval: EvalResult | None = None


@register_spec
class EvalMathJobSpec(_JobSpecBase):
    """Evaluate an endpoint on math questions (``skillmix eval-math``): one item per question, solved by the
    job's endpoint, its final answer compared with the reference by math-verify and, with ``judge_endpoint``,
    its steps checked by an LLM judge. Every question yields one stored record (quality checks and dedup off,
    ``count`` = the questions, set here), carrying the grading in ``eval``."""

    recipe: Literal["eval-math"] = "eval-math"
    questions: list[EvalQuestion] = Field(min_length=1, max_length=MAX_COUNT)
    judge_endpoint: str | None = Field(
        default=None, min_length=1, description="endpoint that checks the steps; none: the final answer alone"
    )
    count: int = Field(default=0, ge=0, le=MAX_COUNT, description="set from the questions")
    keep_conversation: StrictBool = False
    record_extras: ClassVar[type[StrictModel] | None] = EvalExtras

    def extra_endpoints(self) -> dict[str, str]:
        """Its step checker is checked at submit too."""
        found = super().extra_endpoints()
        return found | {"judge_endpoint": self.judge_endpoint} if self.judge_endpoint else found

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            questions = data.get("questions")
            if isinstance(questions, list) and questions:
                data["count"] = len(questions)
                data["max_items"] = len(questions)
            params = data.setdefault("params", {})
            if isinstance(params, dict):
                params.setdefault("temperature", 0.0)
            quality = data.setdefault("quality", {})
            if isinstance(quality, dict):
                quality.setdefault("enabled", False)
            dedup = data.setdefault("dedup", {})
            if isinstance(dedup, dict):
                dedup.setdefault("exact", False)
                dedup.setdefault("near", False)
        return data


class JudgeEvalExtras(StrictModel):
    """A judge-eval record's label and what the heuristic checks said (the judge's verdict is ``judge``)."""

    judge_eval: JudgeEvalRow | None = None


@register_spec
class JudgeEvalJobSpec(_JobSpecBase):
    """Calibrate a judge (``skillmix judge-eval``, ``POST /v1/judge-evals``): one item per labelled example, on
    which the default heuristic checks and the judge (``judge``: its endpoint, the job's endpoint) both run.
    Every example yields one stored record (curation off, ``count`` = the examples, set here); the report
    (``GET /v1/judge-evals/{id}/report``) is computed from them."""

    recipe: Literal["judge-eval"] = "judge-eval"
    examples: list[LabelledExample] = Field(min_length=1, max_length=MAX_COUNT)
    judge: str = Field(min_length=1, max_length=200, description="endpoint name of the judge under test")
    judge_max_tokens: int = Field(default=512, ge=64, le=8192, description="of the judge's answer")
    max_false_reject: float = Field(
        default=0.03, ge=0, le=1, description="the chosen threshold rejects at most this share of the good examples"
    )
    count: int = Field(default=0, ge=0, le=MAX_COUNT, description="set from the examples")
    keep_conversation: StrictBool = False
    counts_shortfall: ClassVar[bool] = False
    record_extras: ClassVar[type[StrictModel] | None] = JudgeEvalExtras

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            examples = data.get("examples")
            if isinstance(examples, list) and examples:
                data["count"] = len(examples)
                data["max_items"] = len(examples)
            if isinstance(data.get("judge"), str):
                data["endpoint"] = data["judge"]  # the judge is the one endpoint the job calls
            data.setdefault("item_retries", 0)
            quality = data.setdefault("quality", {})
            if isinstance(quality, dict):
                quality.setdefault("enabled", False)  # the recipe runs the default checks itself, on every example
            dedup = data.setdefault("dedup", {})
            if isinstance(dedup, dict):
                dedup.setdefault("exact", False)
                dedup.setdefault("near", False)
        return data

    @model_validator(mode="after")
    def _one_endpoint(self) -> Self:
        if self.endpoint != self.judge:
            raise ValueError("endpoint: a judge-eval calls only its judge; leave endpoint out or equal to judge")
        if self.quality.enabled or self.quality.judge is not None or self.quality.profile is not None:
            raise ValueError("quality: a judge-eval runs the default checks and its judge itself; leave quality out")
        return self


register_spec(ExtractAgnosticSpec)  # submitted at POST /v1/skill-sets/extract, listed after the generation specs
register_spec(ExtractDatasetSpec)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # at its spending budget; not finished: raising the budget or resuming carries on

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


class JobCounters(StrictModel):
    planned: int = 0
    generated: int = 0
    processed: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    parse_failures: int = 0
    llm_calls: int = 0
    retries: int = 0
    replayed: int = Field(default=0, description="answers a rerun took from the replay cache: not calls, not paid")
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = Field(default=0, description="exact spend: each call priced at its endpoint, in 1e-6 USD")
    cost_usd: float = 0.0


class JobRecord(StrictModel):
    """What the API stores at submit time: the spec plus everything resolved then (so workers never guess)."""

    id: str
    spec: JobSpec
    team: str = Field(default="", description="the team that owns it ('' for a job from before teams: admins only)")
    skill_set: SkillSet | None = None
    endpoint: str
    model: str
    chunk_size: int
    usd_per_mtok_prompt: float = 0.0
    usd_per_mtok_completion: float = 0.0
    created_at: datetime


class JobStatus(StrictModel):
    id: str
    recipe: str
    team: str = ""
    state: JobState
    settled: bool = Field(
        default=False,
        description="finished and nothing of it left in flight or to curate: its counters and examples are final",
    )
    count: int
    endpoint: str
    skill_set: str | None = None
    created_at: datetime
    updated_at: datetime | None = None
    message: str = ""
    counters: JobCounters
    result: str | None = Field(default=None, description="what the job produced, e.g. an extracted skill set ref")
    budget: JobBudget | None = Field(default=None, description="the spending cap in force (it may have been changed)")
    budget_left: BudgetLeft | None = Field(default=None, description="what the cap still allows; none without one")
    mode: Literal["online", "batch"] = Field(default="online", description="the spec's: calls sent at once, or batched")
    batch: BatchProgress | None = Field(
        default=None, description="a batch job's provider batches: open files, lines waiting, rounds; none online"
    )


class JobPatch(RequestModel):
    """``PATCH /v1/jobs/{id}``: the fields given replace the job's (``null`` removes a limit); others stay."""

    budget: JobBudget


class JobsPublic(StrictModel):
    data: list[JobStatus]
    count: int


class ChunkTask(StrictModel):
    """Step unit of a generation job: items [start, stop)."""

    kind: Literal["chunk"] = "chunk"
    job_id: str
    start: int = Field(ge=0)
    stop: int = Field(ge=1)

    @property
    def arq_id(self) -> str:
        return f"skillmix:chunk:{self.job_id}:{self.start}-{self.stop}"


class PhaseTask(StrictModel):
    """Step unit of a stepped job (``RecipeSpec.stepped``): one time-boxed phase step, run by the job's recipe
    (``workers.unit.register_units``); each step enqueues the next."""

    kind: Literal["phase"] = "phase"
    job_id: str
    step: int = Field(ge=0)

    @property
    def arq_id(self) -> str:
        return f"skillmix:phase:{self.job_id}:{self.step}"


Step = Annotated[ChunkTask | PhaseTask | HelpTask, Field(discriminator="kind")]
"""The one queue payload (``workers.runner``): one unit of a job, whatever its recipe. Its ``arq_id`` is
deterministic and under the ``skillmix:`` prefix, so enqueueing the same unit twice runs it once."""
STEP: TypeAdapter[ChunkTask | PhaseTask | HelpTask] = TypeAdapter(Step)

"""Skill-extraction job specs (papers.md §A stage 1, §B): from the model alone, or from a seed dataset.

Both specs are registered recipes (``schemas.recipes``), so an extraction job is an ordinary job record with
the usual state, counters and progress. This module imports nothing from ``schemas.jobs`` (which imports
it), so there is no import cycle.
"""

from typing import ClassVar, Literal, Self

from pydantic import Field, StrictBool, model_validator

from schemas.base import MAX_INT, StrictModel
from schemas.curation import DedupSettings, QualitySettings
from schemas.datasets import DataFileSource, format_from_suffix
from schemas.params import ExtractParams as ExtractParams  # re-exported
from schemas.recipes import RecipeSpec
from schemas.skills import SkillSetName

MAX_ROWS = 1_000_000
DEFAULT_MAX_ROWS = 100_000
MAX_EXEMPLARS = 5
EXEMPLAR_CHARS = 1000
MAX_SKILL_NAME_CHARS = 60
MAP_ATTEMPTS = 4  # one ask plus up to 3 re-asks when the answer is off the list (papers.md §A)
PARSE_ATTEMPTS = 3  # an unparseable answer is asked again, then the rows are reported unlabelled


class _ExtractSpecBase(RecipeSpec):
    skill_set_name: SkillSetName = Field(description="the produced set is saved as the next version of this name")
    description: str = Field(default="", max_length=2000)
    endpoint: str | None = Field(default=None, description="endpoint name; the server default when absent")
    params: ExtractParams = Field(default_factory=ExtractParams)
    seed: int = Field(default=0, ge=0, le=MAX_INT)
    num_query_types: int = Field(default=16, ge=1, le=64)

    # Generation-only knobs. ``JobRecord.spec`` is one union and the generation path (chunks, curation)
    # reads these; an extraction job never enters that path, so they are fixed, not settable. ``quality``
    # and ``dedup`` are declared only: reading them for an extraction job is a bug and raises.
    chunk_size: ClassVar[int | None] = None
    item_retries: ClassVar[int] = 0
    keep_conversation: ClassVar[bool] = False
    quality: ClassVar[QualitySettings]
    dedup: ClassVar[DedupSettings]
    budget: ClassVar[None] = None  # no cap at submit; `PATCH /v1/jobs/{id}` sets one (its calls are charged)
    via_jobs: ClassVar[bool] = False  # submitted at POST /v1/skill-sets/extract
    stepped: ClassVar[bool] = True  # phase steps, not item chunks
    has_examples: ClassVar[bool] = False  # it produces a skill set

    @property
    def item_budget(self) -> int:
        return self.count

    @property
    def count(self) -> int:
        raise NotImplementedError


class ExtractAgnosticSpec(_ExtractSpecBase):
    """Model-only extraction (papers.md §A "-D"): topics, then skills per topic, then query types."""

    recipe: Literal["extract-agnostic"] = "extract-agnostic"
    num_topics: int = Field(default=10, ge=1, le=200)
    skills_per_topic: int = Field(default=10, ge=1, le=100)
    domain: str | None = Field(
        default=None, max_length=200, description='e.g. "high-school mathematics"; instruction following if absent'
    )
    allow_shortfall: StrictBool = Field(
        default=False,
        description="save the set even when fewer than half of the skills asked for (topics x skills per topic) "
        "are usable; otherwise such a job fails and says what came back",
    )

    @property
    def count(self) -> int:
        """Units of progress: the topics call, one skills call per topic, the query-types call."""
        return self.num_topics + 2


class DatasetSource(DataFileSource):
    """Where the seed rows are and how to read them."""

    format: Literal["jsonl", "parquet"] | None = Field(default=None, description="from the file suffix if absent")
    row_format: Literal["alpaca", "messages", "text", "math"] | None = Field(
        default=None,
        description="alpaca fields, chat messages, one text column, or MATH rows (problem, solution); detected "
        "if absent",
    )
    text_column: str | None = Field(default=None, min_length=1, max_length=200, description="for row_format=text")

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        if self.text_column is not None and self.row_format in (None, "text"):
            self.row_format = "text"
        elif self.text_column is not None:
            raise ValueError(f"text_column is only used with row_format='text', not {self.row_format!r}")
        if self.row_format == "text" and self.text_column is None:
            raise ValueError("row_format='text' needs text_column")
        if self.format is None:
            self.format = format_from_suffix(self.path, ("jsonl", "parquet"))  # type: ignore[assignment]
        return self


class ExtractDatasetSpec(_ExtractSpecBase):
    """Metacognition (papers.md §A SDD, §B): label every row, merge the labels, map rows back."""

    recipe: Literal["extract-from-dataset"] = "extract-from-dataset"
    source: DatasetSource
    rows: int = Field(
        default=0,
        ge=0,
        le=MAX_ROWS,
        description="use the first N rows (0 = all); the server sets it to the rows actually used",
    )
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1, le=MAX_ROWS, description="refuse larger datasets")
    max_skills: int = Field(default=100, ge=2, le=2000, description="coarse skills wanted at most")
    rows_per_call: int = Field(default=20, ge=1, le=200, description="rows labelled (or mapped) per LLM call")
    merge_batch: int = Field(default=400, ge=4, le=5000, description="labels per merge call at most")
    context_tokens: int = Field(default=16_000, ge=2048, le=2_000_000, description="the model's context window")
    max_row_chars: int = Field(default=2000, ge=100, le=100_000, description="longer rows are cut for the prompt")

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.rows > self.max_rows:
            raise ValueError(f"rows ({self.rows}) exceeds max_rows ({self.max_rows})")
        if self.context_tokens < self.params.max_tokens + 1024:
            raise ValueError(
                f"context_tokens ({self.context_tokens}) must exceed params.max_tokens ({self.params.max_tokens}) "
                "by at least 1024 so a prompt fits beside the answer"
            )
        return self

    @property
    def count(self) -> int:
        return self.rows


class UnlabelledRow(StrictModel):
    """A seed row that ended without a coarse skill, and why (never silently dropped)."""

    row: int = Field(ge=0)
    phase: Literal["label", "map"]
    reason: Literal["unparseable", "off_list", "llm_error", "empty_row"]
    detail: str = ""
    text: str = ""


class ExtractSubmitted(StrictModel):
    """What ``POST /v1/skill-sets/extract`` answers: the job to follow and where its result will be."""

    job_id: str
    recipe: str
    skill_set_name: str
    rows: int | None = None
    status_url: str
    unlabelled_url: str | None = None

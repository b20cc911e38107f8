"""How a job's output is curated: dedup, the quality checks and the optional LLM judge (``workers.curate``).

Its own module so ``schemas.jobs`` and ``schemas.extract`` both use it without importing each other.
"""

from typing import Literal, Self

from pydantic import Field, StrictBool, field_validator, model_validator

from schemas.base import MAX_INT, RequestModel

PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a team's quality profile (``schemas.judge_eval``)


class DedupSettings(RequestModel):
    exact: StrictBool = True
    near: StrictBool = True
    threshold: float = Field(default=0.7, ge=0.1, le=1.0, description="Jaccard similarity of instructions")
    num_perm: int = Field(default=128, ge=16, le=512)
    semantic: StrictBool = Field(
        default=False,
        description="also reject paraphrases (embedding similarity); workers need the [embed] extra, else skipped",
    )
    semantic_threshold: float = Field(
        default=0.85, ge=0.5, le=1.0, description="cosine similarity of instruction embeddings (all-MiniLM-L6-v2)"
    )


class JudgeSettings(RequestModel):
    """An LLM judge (``workers/curate/judge.py``) grading each generated pair against an explicit rubric: the
    paper's critique turn (papers.md §A) plus what heuristics miss: every one of the k skills scored on its
    own, facts and arithmetic, the request's explicit constraints, internal consistency, specificity to the
    request's particulars, no padding. More than one opinion where it pays: ``n`` answers per endpoint
    (different seeds) and/or several ``endpoints``, combined by ``combine``; and, where a known-good answer
    exists, the judge sees it. Every call counts in the job's usage."""

    endpoint: str | None = Field(
        default=None, description="endpoint name of the judge; the job's own endpoint when absent"
    )
    endpoints: list[str] = Field(
        default_factory=list,
        max_length=5,
        description="several judge endpoints (instead of endpoint), each asked n times; opinions combined",
    )
    n: int = Field(default=1, ge=1, le=9, description="opinions asked of each judge endpoint, each with its own seed")
    combine: Literal["all", "majority"] = Field(
        default="all", description="all opinions must pass, or a strict majority of them (a tie fails)"
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="of the judge's calls; absent: 0, or 0.7 when n > 1 (at 0 most endpoints answer the same "
        "whatever the seed)",
    )
    min_score: int = Field(
        default=3, ge=1, le=5, description="every criterion must score at least this (1-5), and the verdict pass"
    )
    max_tokens: int = Field(default=512, ge=64, le=8192, description="of the judge's answer")
    reference: StrictBool = Field(
        default=True,
        description="show the judge a known-good answer where one exists: MATH^2's verified answer and an "
        "independent solve reaching it; a brought dataset's reference_column",
    )
    reference_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="recipe curate: the row's column with a known-good answer",
    )

    @model_validator(mode="after")
    def _one_way_to_name_endpoints(self) -> Self:
        if self.endpoint and self.endpoints:
            raise ValueError("give endpoint or endpoints, not both")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints must be distinct (ask one endpoint several times with n)")
        return self

    def endpoint_names(self) -> list[str]:
        """The judge endpoints named (empty: the job's own endpoint judges)."""
        return list(self.endpoints) or ([self.endpoint] if self.endpoint else [])

    def sampling_temperature(self) -> float:
        return self.temperature if self.temperature is not None else (0.7 if self.n > 1 else 0.0)


class QualitySettings(RequestModel):
    """Which checks run (``checks``, in order; the error and cut-off checks always run) and their
    thresholds. ``enabled: false`` turns every optional check off."""

    enabled: StrictBool = True
    # Optional checks to run, in this order: the first reason found is the primary one.
    checks: list[
        Literal[
            "empty_response",
            "refusal",
            "placeholder",
            "incomplete",
            "restates_instruction",
            "low_novelty",
            "repetitive",
            "too_short",
            "generic_filler",
            "off_topic",
            "vague",
            "one_paragraph",
            "too_brief",
            "ignores_skills",
            "not_a_request",
            "no_skill_shown",
            "judge",
        ]
    ] = Field(
        default=[
            "empty_response",
            "not_a_request",
            "refusal",
            "restates_instruction",
            "repetitive",
            "placeholder",
            "incomplete",
            "low_novelty",
            "too_short",
            "generic_filler",
            "off_topic",
            "vague",
            "one_paragraph",
            "too_brief",
            "ignores_skills",
            "no_skill_shown",
        ],
        description="optional checks to run, in order (the first reason found is the primary one)",
    )
    min_skill_similarity: float = Field(
        default=0.2,
        ge=-1.0,
        le=1.0,
        description="no_skill_shown: cosine of the example with a skill's definition at which it is exhibited "
        "([embed] model; consulted only when no word of any skill is used)",
    )
    semantic_skills: StrictBool = Field(
        default=True,
        description="no_skill_shown: ask the [embed] model when it is installed (else the words alone decide)",
    )
    min_response_words: int = Field(default=40, ge=0, le=MAX_INT)
    min_instruction_words: int = Field(default=5, ge=0, le=MAX_INT)
    max_restate_similarity: float = Field(default=0.8, gt=0, le=1.0)
    min_topic_overlap: float = Field(
        default=0.25, ge=0, le=1.0, description="off_topic: share of the instruction's content words the response uses"
    )
    min_novelty: float = Field(
        default=0.35, ge=0, le=1.0, description="low_novelty: share of the response's content words not in the request"
    )
    max_vagueness: float = Field(
        default=2.5, gt=0, description="vague: filler-to-specifics score above which a response is vague"
    )
    brevity_ratio: float = Field(
        default=0.35, ge=0, le=1.0, description="too_brief: below this share of the job's median response length"
    )
    brevity_min_items: int = Field(
        default=20, ge=1, le=MAX_INT, description="too_brief: responses seen before the job's median is trusted"
    )
    paragraph_max_words: int = Field(
        default=200, ge=0, le=MAX_INT, description="one_paragraph: a single unstructured paragraph shorter than this"
    )
    substantial_instruction_words: int = Field(
        default=20, ge=0, le=MAX_INT, description="one_paragraph, too_brief, off_topic: only for instructions this long"
    )
    judge: JudgeSettings | None = Field(
        default=None,
        description="LLM judge (off by default); its verdict is checked after the listed checks unless "
        "'judge' is placed in checks",
    )
    profile: str | None = Field(
        default=None,
        pattern=PROFILE_NAME,
        description="a team's quality profile (POST /v1/quality-profiles, e.g. from `skillmix judge-eval "
        "--save-profile`): replaced at submit by its judge settings (endpoint, min_score), so the stored job "
        "is self-contained; an unknown name is a 422",
    )

    @field_validator("checks")
    @classmethod
    def _unique_checks(cls, checks: list[str]) -> list[str]:
        if len(set(checks)) != len(checks):
            raise ValueError("each check may be listed once")
        return checks

"""Calibrating a judge (recipe ``judge-eval``, ``skillmix judge-eval``): the labelled examples it is given, what
each item records, the report computed from them, and the named quality profiles a chosen threshold is saved as.

A judge-eval job runs the default heuristic checks and the judge on every labelled example; its report says
how much of the bad each catches (per kind and overall), how much of the good each throws away, for every
``min_score``, and which threshold catches most at the false-reject rate the team accepts.
"""

import re
from datetime import datetime
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from schemas.base import RequestModel, StrictModel
from schemas.curation import PROFILE_NAME, JudgeSettings

AUC_NEAR_HALF = 0.1  # |AUC - 0.5| below this: the judge's scores do not separate good from bad
STRONG_CORRELATION = 0.5  # |Spearman| of score and length on the good set at or above this: a length bias
NO_KIND = "(none)"


class LabelledExample(RequestModel):
    """One line of a labelled file: an example a person has already called good or bad."""

    instruction: str = Field(min_length=1, description="the request")
    input: str = ""
    output: str = Field(min_length=1, description="the response")
    skills: list[str] = Field(default_factory=list, description="the skills it should exhibit, when known")
    label: Literal["good", "bad"]
    kind: str = Field(default="", max_length=100, description="what is wrong with a bad one (e.g. generic)")

    @field_validator("instruction", "output")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class JudgeEvalRow(StrictModel):
    """What a judge-eval record keeps besides the judge's verdict: the label, and the heuristic checks' reasons."""

    label: Literal["good", "bad"]
    kind: str = ""
    heuristics: list[str] = Field(default_factory=list, description="reasons the default checks reject it for")
    criteria: list[str] = Field(default_factory=list, description="the judge's rubric criteria when it ran")
    words: int = Field(default=0, ge=0, description="words in the response")


class Rates(StrictModel):
    """Catch rate on the bad examples, false-reject rate on the good ones (None when there are none)."""

    bad: int = 0
    caught: int = 0
    catch_rate: float | None = None
    good: int = 0
    false_rejects: int = 0
    false_reject_rate: float | None = None

    @classmethod
    def of(cls, caught: int, bad: int, false_rejects: int, good: int) -> "Rates":
        return cls(
            bad=bad,
            caught=caught,
            catch_rate=caught / bad if bad else None,
            good=good,
            false_rejects=false_rejects,
            false_reject_rate=false_rejects / good if good else None,
        )


class RateSet(StrictModel):
    overall: Rates
    per_kind: dict[str, Rates] = Field(default_factory=dict)


class ThresholdPoint(StrictModel):
    """The judge rejecting at ``min_score`` on ``criterion`` (``overall``: every criterion, i.e. the lowest)."""

    criterion: str = "overall"
    min_score: int = Field(ge=1, le=5)
    judge: Rates
    combined: Rates = Field(description="heuristics or the judge")


class ErrorCounts(StrictModel):
    """Examples the judge gave no readable verdict for (after its one retry), or whose call failed: never a pass."""

    total: int = 0
    good: int = 0
    bad: int = 0
    by_reason: dict[str, int] = Field(default_factory=dict)


class Bias(StrictModel):
    auc: float | None = Field(default=None, description="P(a good example outscores a bad one), ties half")
    separates: bool | None = Field(
        default=None, description="AUC >= 0.6: its scores separate good from bad (None: no AUC to measure)"
    )
    length_spearman: float | None = Field(default=None, description="overall score vs response words, good set")
    length_pearson: float | None = None
    length_bias: bool | None = Field(
        default=None, description="|Spearman| >= 0.5 on the good set: its score follows length (sign: which way)"
    )
    warnings: list[str] = Field(default_factory=list)


class Cost(StrictModel):
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class JudgeEvalReport(StrictModel):
    """``GET /v1/judge-evals/{id}/report``. The judge rejects at ``min_score`` t when its verdict is fail or a
    criterion scores below t, exactly as ``quality.judge`` does in a job. Judge and combined rates are over the
    examples the judge gave a readable verdict for; errors are counted apart (in a job they reject)."""

    job_id: str
    state: str
    settled: bool
    endpoint: str
    model: str
    examples: int
    good: int
    bad: int
    judged: int
    errors: ErrorCounts
    criteria: list[str]
    max_false_reject: float
    heuristics: RateSet = Field(description="the default checks, over every example")
    heuristic_reasons: dict[str, int] = Field(default_factory=dict)
    judge_min_score: int = Field(description="where ``judge`` and ``combined`` are given: the chosen one, else 3")
    judge: RateSet
    combined: RateSet
    score_distribution: dict[str, dict[str, int]] = Field(description="good / bad -> overall score (1-5) -> examples")
    criterion_distribution: dict[str, dict[str, dict[str, int]]] = Field(default_factory=dict)
    curve: list[ThresholdPoint]
    criterion_curves: dict[str, list[ThresholdPoint]] = Field(default_factory=dict)
    chosen: ThresholdPoint | None = Field(
        description="the overall min_score catching most bad examples at a false-reject rate within the bound"
    )
    chosen_note: str = ""
    bias: Bias
    cost: Cost


class QualityProfileCreate(RequestModel):
    """``POST /v1/quality-profiles``: from a finished judge-eval (its chosen threshold) or given by hand."""

    name: str = Field(pattern=PROFILE_NAME, description="what job specs name in quality.profile")
    judge_eval: str | None = Field(default=None, min_length=1, max_length=200, description="a judge-eval job id")
    judge: JudgeSettings | None = Field(default=None, description="the settings themselves (endpoint required)")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.judge_eval is None) == (self.judge is None):
            raise ValueError("give judge_eval (a judge-eval job id) or judge (the settings), not both")
        if self.judge is not None and not self.judge.endpoint:
            raise ValueError("judge.endpoint: a profile names its judge's endpoint")
        return self


class QualityProfile(StrictModel):
    """A team's named judge settings; a job spec's ``quality.profile`` is replaced by them at submit."""

    name: str
    team: str = ""
    judge: JudgeSettings
    judge_eval: str | None = Field(default=None, description="the judge-eval job it was calibrated by")
    max_false_reject: float | None = None
    catch_rate: float | None = None
    false_reject_rate: float | None = None
    auc: float | None = None
    created_at: datetime


class QualityProfiles(StrictModel):
    data: list[QualityProfile]


def valid_profile_name(name: str) -> bool:
    return re.fullmatch(PROFILE_NAME, name) is not None

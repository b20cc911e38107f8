"""Evaluating a model on math questions (recipe ``eval-math``): the questions it is given, and what each
item records (the model's final answer, the equivalence check, the judge's verdict on the steps)."""

from pydantic import Field

from schemas.base import StrictModel


class EvalQuestion(StrictModel):
    """One question: its text, the reference final answer, optional skills (one for MATH-style, two for MATH^2)."""

    id: str = Field(min_length=1, max_length=500)
    problem: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="the reference final answer (no \\boxed{})")
    skills: list[str] = Field(default_factory=list)


class EvalResult(StrictModel):
    """How one question was graded: correct = the final answer equals the reference (math-verify) and, when a
    judge is used, the judge found the steps valid (a right answer through wrong steps is wrong)."""

    id: str
    reference: str
    extracted: str = Field(default="", description="the model's final answer: its last \\boxed{}, else 'answer is'")
    equivalent: bool = False
    correct: bool = False
    judge_verdict: bool | None = Field(default=None, description="steps valid? None when no judge was asked")
    judge_reason: str = ""
    judge_endpoint: str = ""
    finish_reason: str | None = None

"""The MATH^2 recipe's stage history (papers.md §B): every prompt, answer and verdict of one question.

Kept on the generated item and the stored example (``math``), accepted or rejected, so a reviewer sees how
the question came to be: the pair check, the question conversation, the sceptic's attempt, each rubric
validation and each independent solve with the vote over their answers. ``MathJobSpec`` is in
``schemas/jobs.py`` with the other job specs.
"""

from pydantic import Field

from schemas.base import StrictModel


class PairCheck(StrictModel):
    """Stage 1: are the two skills distinct and combinable in one question?"""

    prompt: str = ""
    response: str = ""
    valid: bool
    reasoning: str = ""
    cached: bool = Field(default=False, description="decided from the skill set's invalid-pair memory, no call")


class QuestionTurn(StrictModel):
    """Stage 2: one turn of the question conversation (the first writes, later ones review and revise)."""

    prompt: str
    response: str
    question: str = ""
    solution: str = ""
    answer: str = ""
    solvable: bool | None = Field(default=None, description="the model's own judgement; None on the writing turn")
    critique: str = ""
    finish_reason: str | None = None


class ScepticAttempt(StrictModel):
    """Stage 3: a deliberately sceptical attempt that hunts for flaws, missing data and ambiguity."""

    prompt: str
    response: str
    flaws: str = ""
    answer: str = ""


class Validation(StrictModel):
    """Stage 4: one rubric validation, reasoning first, then a final yes/no."""

    response: str
    reasoning: str = ""
    verdict: bool


class Solve(StrictModel):
    """Stage 5: one independent solve."""

    response: str
    answer: str = ""


class VoteResult(StrictModel):
    """The vote over the solves' answers (``workers.math.equivalence.Equivalence.vote``)."""

    answer: str | None
    votes: int
    groups: list[list[int]] = Field(default_factory=list)
    matches_question: bool | None = None


class MathHistory(StrictModel):
    template_version: str
    pair: list[str] = Field(default_factory=list)
    skipped_pairs: list[str] = Field(
        default_factory=list, description="pairs drawn first but known invalid for the skill set: redrawn, no call"
    )
    pair_check: PairCheck | None = None
    question_turns: list[QuestionTurn] = Field(default_factory=list)
    sceptic: ScepticAttempt | None = None
    validation_prompt: str = ""
    validations: list[Validation] = Field(default_factory=list)
    solve_prompt: str = ""
    solves: list[Solve] = Field(default_factory=list)
    vote: VoteResult | None = None

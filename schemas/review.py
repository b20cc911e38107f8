"""The MATH^2 review queue (papers.md §B step 6): a human accepts, edits or rejects each question that passed.

Review state lives beside the stored examples, never inside them (a stored example stays immutable
provenance): one ``ReviewItem`` per accepted math example, and a log of ``ReviewVersion`` entries, one per
change (who, when, what). Every write names the version it was made against (``expected_version``); a
stale one is a 409 and changes nothing. LLM help comes back as a ``Suggestion`` on the item, never as a
change to its problem, solution or answer.
"""

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from schemas.base import MAX_INT, RequestModel, StrictModel
from schemas.examples import Example

ReviewState = Literal["needs_review", "accepted", "rejected"]
HelpKind = Literal["make_skill_necessary", "resolve", "check_edit"]
EDITABLE = ("problem", "solution", "answer")


def _now() -> datetime:
    return datetime.now(UTC)


class Suggestion(StrictModel):
    """The LLM's answer to a help request; ``proposed`` holds the fields it would change (never applied)."""

    id: str
    kind: HelpKind
    requested_by: str
    skill: str | None = None
    note: str = ""
    status: Literal["pending", "failed"] = "pending"
    text: str = ""
    proposed: dict[str, str] = Field(default_factory=dict)
    llm_calls: int = 0
    created_at: datetime = Field(default_factory=_now)


class HelpTask(StrictModel):
    """Step unit of a job's review help: one help request on one item (``workers.review.help``)."""

    kind: Literal["help"] = "help"
    job_id: str
    item_id: str
    suggestion_id: str
    help: HelpKind
    by: str
    skill: str | None = None
    note: str = ""

    @property
    def arq_id(self) -> str:
        return f"skillmix:help:{self.job_id}:{self.suggestion_id}"


class ReviewItem(StrictModel):
    """The current review state of one question (``id`` is the stored example's id)."""

    id: str
    job_id: str
    index: int
    seq: int = Field(description="the example's place in the job's accepted storage")
    state: ReviewState = "needs_review"
    version: int = 1
    problem: str
    solution: str
    answer: str
    skills: list[str] = Field(default_factory=list)
    reject_reason: str | None = None
    suggestions: list[Suggestion] = Field(default_factory=list)
    updated_by: str = "system"
    updated_at: datetime = Field(default_factory=_now)


class FieldChange(StrictModel):
    old: Any = None
    new: Any = None


class ReviewVersion(StrictModel):
    """One entry of an item's log: the version it produced, who made it, when, and what changed."""

    version: int
    by: str
    at: datetime
    action: Literal["created", "accept", "reject", "edit", "suggestion"]
    changes: dict[str, FieldChange] = Field(default_factory=dict)
    reason: str | None = None
    suggestion_id: str | None = None


def _one_field_given(schema: dict[str, Any]) -> None:
    """The document says what ``_something`` checks: at least one of the three, as a string."""
    schema["anyOf"] = [
        {"required": [f], "properties": {f: {"type": "string"}}} for f in ("problem", "solution", "answer")
    ]


class ReviewEdit(RequestModel):
    model_config = ConfigDict(json_schema_extra=_one_field_given)

    expected_version: int = Field(ge=1, le=MAX_INT)
    problem: str | None = Field(default=None, min_length=1)
    solution: str | None = Field(default=None, min_length=1)
    answer: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _something(self) -> "ReviewEdit":
        if self.problem is None and self.solution is None and self.answer is None:
            raise ValueError("give at least one of problem, solution, answer")
        return self


class ReviewDecision(RequestModel):
    expected_version: int = Field(ge=1, le=MAX_INT)
    reason: str | None = Field(default=None, max_length=4000)


class RejectDecision(ReviewDecision):
    """A rejection needs its reason."""

    reason: str = Field(min_length=1, max_length=4000)


class HelpRequest(RequestModel):
    kind: HelpKind
    skill: str | None = Field(default=None, description="make_skill_necessary: which skill (default: the second)")
    note: str = Field(default="", max_length=4000, description="anything the reviewer wants the LLM to know")


class HelpAccepted(StrictModel):
    """202 to a help request: the suggestion with this id appears on the item when the worker is done."""

    suggestion_id: str
    job_id: str
    item_id: str


class ReviewItemsPublic(StrictModel):
    data: list[ReviewItem]
    next_cursor: str | None = None


class ReviewItemDetail(StrictModel):
    """One item with its stored example (the full MATH^2 stage history in ``example.math``) and every version."""

    item: ReviewItem
    example: Example
    history: list[ReviewVersion]


class ReviewConflict(StrictModel):
    detail: str
    current_version: int
    item: ReviewItem
    code: str = "conflict"  # schemas.errors.Conflict's: every error body names its branch

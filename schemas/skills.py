"""Skill sets: the inventory a generation job draws its skill combinations from."""

import re
from typing import Annotated

from pydantic import Field, StrictBool, field_validator, model_validator

from schemas.base import MAX_INT, RequestModel, StrictModel

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
SkillSetName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def to_snake_case(text: str) -> str:
    """Normalise a free-form label ("Persuasive Writing!") to ``persuasive_writing``."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "_".join(words)


class Exemplar(RequestModel):
    """A worked example of a skill, e.g. a MATH-format seed row: its problem and solution (papers.md §B)."""

    problem: str = Field(min_length=1)
    solution: str = ""
    level: str | None = None
    type: str | None = None


class Skill(RequestModel):
    name: str = Field(min_length=1, max_length=120, json_schema_extra={"pattern": SNAKE_CASE.pattern})
    description: str = ""
    examples: list[str] = Field(default_factory=list)
    exemplars: list[Exemplar] = Field(
        default_factory=list, description="worked examples (problem and solution); the math recipe shows them"
    )
    frequency: int | None = Field(default=None, ge=0, le=MAX_INT, description="rows mapped to it (extracted sets)")

    @field_validator("name")
    @classmethod
    def _snake_case(cls, value: str) -> str:
        if not SNAKE_CASE.match(value):
            raise ValueError(f"skill name {value!r} must be lower snake_case, e.g. {to_snake_case(value)!r}")
        return value


class QueryType(RequestModel):
    name: str = Field(min_length=1, max_length=80)
    definition: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)


class SkillSetCreate(RequestModel):
    """What a team uploads; the server assigns the version."""

    name: SkillSetName
    description: str = ""
    skills: list[Skill] = Field(min_length=1)
    query_types: list[QueryType] = Field(min_length=1)
    published: StrictBool = Field(
        default=False, description="visible to every team, read-only (admin keys only); otherwise the team's own"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "SkillSetCreate":
        for label, names in (
            ("skills", [s.name for s in self.skills]),
            ("query_types", [q.name for q in self.query_types]),
        ):
            seen: set[str] = set()
            dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
            if dupes:
                raise ValueError(f"{label} has duplicate names: {', '.join(dupes)}")
        return self


class SkillSet(SkillSetCreate):
    """A stored, immutable version of a skill set."""

    version: int = Field(ge=1)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class SkillSetsPublic(StrictModel):
    data: list[SkillSet]
    count: int


def parse_skill_set_ref(ref: str) -> tuple[str, int | None]:
    """``name@3`` -> (name, 3); ``name`` -> (name, None) meaning the latest version."""
    name, _, version = ref.partition("@")
    if not re.match(r"^[a-z0-9][a-z0-9_.-]{0,63}$", name):
        raise ValueError(f"skill set reference {ref!r}: name must be lower-case letters, digits, _ . -")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"skill set reference {ref!r}: version after '@' must be a positive integer")
    return name, int(version)

"""The shapes extraction asks the LLM for: a JSON schema per question and a lenient model to parse it.

Schemas are written out (strict-mode JSON schema: every property required, no extras) rather than
generated, so what the provider sees is exactly what is read here. Models ignore extra keys: a model
that adds a field has still answered.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.extract import MAX_SKILL_NAME_CHARS
from schemas.skills import to_snake_case


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RowSkill(_Answer):
    id: int
    skill: str


class RowSkillsAnswer(_Answer):
    """Label and map answers: one skill per row id."""

    labels: list[RowSkill]


class MergeGroup(_Answer):
    name: str
    description: str = ""
    members: list[str] = []


class MergeAnswer(_Answer):
    skills: list[MergeGroup]


class TopicsAnswer(_Answer):
    topics: list[str]


class NamedSkill(_Answer):
    name: str
    description: str = ""


class SkillsAnswer(_Answer):
    skills: list[NamedSkill]


class QueryTypeItem(_Answer):
    name: str
    definition: str = ""
    examples: list[str] = []


class QueryTypesAnswer(_Answer):
    query_types: list[QueryTypeItem]


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_STR: dict[str, Any] = {"type": "string"}


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def row_skills_schema(allowed: list[str] | None = None) -> dict[str, Any]:
    skill = {"type": "string", "enum": allowed} if allowed else _STR
    return _object(labels=_list(_object(id={"type": "integer"}, skill=skill)))


MERGE_SCHEMA = _object(skills=_list(_object(name=_STR, description=_STR, members=_list(_STR))))
TOPICS_SCHEMA = _object(topics=_list(_STR))
SKILLS_SCHEMA = _object(skills=_list(_object(name=_STR, description=_STR)))
QUERY_TYPES_SCHEMA = _object(query_types=_list(_object(name=_STR, definition=_STR, examples=_list(_STR))))


def skill_name(text: str) -> str | None:
    """A usable skill name from free text: lower snake_case, starting with a letter, at most 60 chars."""
    name = to_snake_case(text)
    if not name:
        return None
    if not name[0].isalpha():
        name = f"skill_{name}"
    while len(name) > MAX_SKILL_NAME_CHARS and "_" in name:
        name = name.rsplit("_", 1)[0]
    return name[:MAX_SKILL_NAME_CHARS]

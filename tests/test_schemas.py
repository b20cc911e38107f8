import ast
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas.jobs import InstructJobSpec, JobSpec, MathJobSpec, PromptsJobSpec
from schemas.skills import Skill, SkillSetCreate, parse_skill_set_ref

SPEC: TypeAdapter[InstructJobSpec | PromptsJobSpec] = TypeAdapter(JobSpec)


def test_schemas_import_nothing_from_service_or_workers() -> None:
    for path in Path("schemas").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            assert not [n for n in names if n.split(".")[0] in {"service", "workers"}], path


def test_spec_discriminates_on_recipe_and_fills_budget() -> None:
    spec = SPEC.validate_python({"recipe": "instruct", "skill_set": "starter@2", "count": 10})
    assert isinstance(spec, InstructJobSpec) and spec.item_budget == 30 and spec.k == 2
    prompts = SPEC.validate_python({"recipe": "prompts", "prompts": ["a", "b", "c"]})
    assert isinstance(prompts, PromptsJobSpec) and prompts.count == 3 and prompts.item_budget == 3
    assert prompts.dedup.near is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipe": "instruct", "skill_set": "s", "count": 0}, "count"),
        ({"recipe": "instruct", "skill_set": "s", "count": 5, "k": 9}, "k"),
        ({"recipe": "instruct", "skill_set": "Bad Name@x", "count": 5}, "skill_set"),
        ({"recipe": "instruct", "skill_set": "s", "count": 5, "colour": 1}, "colour"),
        ({"recipe": "instruct", "skill_set": "s", "count": 5, "max_items": 2}, "max_items"),
        ({"recipe": "poetry", "count": 5}, "recipe"),
        ({"recipe": "prompts", "prompts": ["a"], "count": 3}, "count"),
    ],
)
def test_bad_specs_name_the_problem(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        SPEC.validate_python(body)
    assert field in str(info.value)


@pytest.mark.parametrize("recipe", ["instruct", "math"])
def test_an_inline_skill_set_needs_k_skills(recipe: str) -> None:
    one = {"name": "tiny", "skills": [{"name": "a_b"}], "query_types": [{"name": "q", "definition": "d"}]}
    with pytest.raises(ValidationError, match="skill_set has 1 skills, fewer than k=2"):
        SPEC.validate_python({"recipe": recipe, "skill_set": one, "count": 5})
    two = {**one, "skills": [{"name": "a_b"}, {"name": "c_d"}]}
    spec = SPEC.validate_python({"recipe": recipe, "skill_set": two, "count": 5})
    assert isinstance(spec, InstructJobSpec | MathJobSpec) and spec.k == 2


def test_skill_names_must_be_snake_case_and_unique() -> None:
    with pytest.raises(ValidationError, match="persuasive_writing"):
        Skill(name="Persuasive Writing")
    with pytest.raises(ValidationError, match="duplicate names: a_b"):
        SkillSetCreate(
            name="x", skills=[Skill(name="a_b"), Skill(name="a_b")], query_types=[{"name": "q", "definition": "d"}]
        )


def test_skill_set_refs() -> None:
    assert parse_skill_set_ref("starter@3") == ("starter", 3)
    assert parse_skill_set_ref("starter") == ("starter", None)
    with pytest.raises(ValueError, match="positive integer"):
        parse_skill_set_ref("starter@latest")

"""Extraction on MATH-format data (issue 9): rows with ``problem`` and ``solution`` are read as their own row
format, each skill keeps its exemplars' problem and solution, and the math recipe shows them in its prompts."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis

from schemas.examples import extras_of
from schemas.extract import DatasetSource
from schemas.jobs import JobRecord, MathExtras
from schemas.settings import EndpointSettings
from schemas.skills import SkillSet
from store.datasets import resolve_path
from store.survey import inspect
from tests.extract.helpers import run_job, settings_for
from tests.plugins.fake_llm import FakeLLMFactory
from tests.workers.test_math import FakeMath
from workers.extract.reader import DatasetReader
from workers.recipes import recipe_for
from workers.recipes.math import MathRecipe, close_equivalence

TOPICS = ["modular_arithmetic", "quadratic_roots", "counting_subsets"]  # the fake labels a row by its token


def problem(i: int) -> str:
    return f"Problem {i} on {TOPICS[i % 3]}: find the value of x when {i}x + 3 = {i + 3}."


def solution(i: int) -> str:
    return f"Subtract 3 and divide by {i}: x = 1. The answer is $\\boxed{{1}}$ (solution {i})."


def write_math(path: Path, n: int = 12) -> None:
    rows = [
        {"problem": problem(i), "solution": solution(i), "level": f"Level {1 + i % 5}", "type": "Algebra"}
        for i in range(1, n + 1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_math_rows_are_detected_and_read(tmp_path: Path) -> None:
    write_math(tmp_path / "math.jsonl")
    source = DatasetSource(path="math.jsonl")
    info = inspect(resolve_path(tmp_path, source.path), source, 0, 100)
    assert (info.rows, info.row_format) == (12, "math")
    assert DatasetSource(path="math.jsonl", row_format="math").row_format == "math"  # or named explicitly
    reader = DatasetReader(tmp_path / "math.jsonl", source.model_copy(update={"row_format": "math"}))
    first = next(iter(reader.rows()))
    assert first.text == f"Problem:\n{problem(1)}\n\nSolution:\n{solution(1)}"  # labels see both
    assert first.fields == {"problem": problem(1), "solution": solution(1), "level": "Level 2", "type": "Algebra"}


def test_math_rows_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"problem": [problem(i) for i in range(1, 5)], "solution": [solution(i) for i in range(1, 5)]})
    pq.write_table(table, tmp_path / "math.parquet")
    source = DatasetSource(path="math.parquet")
    info = inspect(tmp_path / "math.parquet", source, 0, 100)
    assert info.row_format == "math"
    rows = list(DatasetReader(tmp_path / "math.parquet", source.model_copy(update={"row_format": "math"})).rows())
    assert len(rows) == 4 and rows[0].fields == {"problem": problem(1), "solution": solution(1)}
    assert rows[3].text.startswith(f"Problem:\n{problem(4)}")


@pytest.fixture
def _equivalence_pool() -> Iterator[None]:
    yield
    close_equivalence()


async def extracted(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> SkillSet:
    write_math(tmp_path / "math.jsonl")
    settings = settings_for(tmp_path, await fake_llm.astart())
    body = {"recipe": "extract-from-dataset", "skill_set_name": "mathseed", "source": {"path": "math.jsonl"}}
    status, found = await run_job(redis, settings, body)
    assert status.state == "completed", status.message
    assert status.counters.accepted == 12 and found is not None
    return found


async def test_extraction_keeps_problem_and_solution(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    found = await extracted(redis, fake_llm, tmp_path)
    assert {s.name for s in found.skills} == set(TOPICS)
    for skill in found.skills:
        rows = [i for i in range(1, 13) if TOPICS[i % 3] == skill.name]
        assert skill.frequency == 4
        assert [(e.problem, e.solution) for e in skill.exemplars] == [(problem(i), solution(i)) for i in rows]
        assert [e.level for e in skill.exemplars] == [f"Level {1 + i % 5}" for i in rows]
        assert skill.examples == [problem(i) for i in rows]  # plain examples: the problems


@pytest.mark.usefixtures("_equivalence_pool")
async def test_the_math_recipe_shows_extracted_exemplars(
    redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    found = await extracted(redis, fake_llm, tmp_path)
    record = JobRecord.model_validate(
        {
            "id": "mx",
            "spec": {"recipe": "math", "skill_set": found.ref, "count": 1, "seed": 2},
            "skill_set": found.model_dump(),
            "endpoint": "fake",
            "model": "fake-model",
            "chunk_size": 4,
            "created_at": "2025-01-01T00:00:00Z",
        }
    )
    endpoint = EndpointSettings.model_validate({"base_url": "http://fake.invalid/v1", "model": "fake-model"})
    recipe = recipe_for(record, "fake", endpoint)
    assert isinstance(recipe, MathRecipe)
    await recipe.prepare(redis, [0])
    item = await recipe.generate(recipe.item(0), FakeMath())
    history = extras_of(item, MathExtras).math
    assert history is not None and history.pair_check is not None
    skills = {s.name: s for s in found.skills}
    pair = history.pair
    for prompt in (history.pair_check.prompt, history.question_turns[0].prompt):
        for name in pair:
            ex = skills[name].exemplars[0]
            assert f"Example problem: {ex.problem}" in prompt
            assert f"Example solution: {ex.solution}" in prompt

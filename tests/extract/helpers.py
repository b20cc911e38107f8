"""Seed datasets with predictable labels, and running an extraction job in-process against the fake.

Rows carry their fine label as a snake_case token, which is what the fake endpoint answers for them
(``tests.fake_llm.extraction_label``), so a test knows every row's label, merge and coarse skill.
"""

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from pydantic import TypeAdapter

from schemas.extract import ExtractAgnosticSpec, ExtractDatasetSpec
from schemas.jobs import JobRecord, JobState, JobStatus
from schemas.settings import Settings
from schemas.skills import SkillSet
from store import jobs, records
from store.datasets import resolve_path
from store.skill_sets import get_skill_set
from store.survey import inspect
from tests import keyed
from tests.conftest import REDIS_URL
from tests.plugins.fake_llm import FakeLLM
from workers.extract import runner
from workers.extract.phase import ExtractFailed
from workers.runner.resources import Resources

SPEC: TypeAdapter[ExtractAgnosticSpec | ExtractDatasetSpec] = TypeAdapter(ExtractAgnosticSpec | ExtractDatasetSpec)


def hierarchical_label(i: int) -> str:
    """1,000 distinct labels, 4 segments deep: area (5) x topic (4) x sub (5) x variant (10)."""
    return f"area{i % 5}_topic{i // 5 % 4}_sub{i // 20 % 5}_v{i // 100 % 10}"


def coarse_of(i: int) -> str:
    """What the fake's merge rounds reduce ``hierarchical_label(i)`` to with max_skills=20."""
    return f"area{i % 5}_topic{i // 5 % 4}"


def row_text(i: int, label: str) -> str:
    return f"Question {i}: a customer asks something that needs {label} to answer well."


def write_jsonl(path: Path, n: int, label: Any = hierarchical_label) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"instruction": row_text(i, label(i)), "input": "", "output": f"Answer {i}."}) + "\n")
    return path


def settings_for(data_dir: Path, fake: FakeLLM) -> Settings:
    endpoint = fake.endpoint_settings(max_concurrency=64)  # an explicit pool: quick to build per job
    return Settings(data_dir=data_dir, endpoints={"fake": endpoint}, default_endpoint="fake")


async def start_job(redis: ArqRedis, settings: Settings, body: dict[str, Any]) -> JobRecord:
    """What the API does at submit, minus the queue: validate, inspect the dataset, store the record."""
    spec = SPEC.validate_python(body)
    if isinstance(spec, ExtractDatasetSpec):
        path = resolve_path(settings.data_dir, spec.source.path)
        info = inspect(path, spec.source, spec.rows, spec.max_rows)
        source = spec.source.model_copy(update={"row_format": info.row_format})
        spec = spec.model_copy(update={"rows": info.rows, "source": source})
    record = JobRecord(
        id=uuid.uuid4().hex,
        spec=spec,
        team=keyed.TEAM,
        endpoint="fake",
        model="fake-model",
        chunk_size=32,
        created_at=datetime.now(UTC),
    )
    await jobs.create(redis, record)
    await records.set_state(redis, record.id, JobState.RUNNING)
    return record


async def run_steps(redis: ArqRedis, settings: Settings, record: JobRecord, slice_s: float = 60.0) -> int:
    """Run the job's steps in-process like the worker would, on the runner's metered path (its calls are
    counted at send and charged, its answers kept); returns how many steps it took."""
    steps = 0
    res = Resources(redis, settings.model_copy(update={"redis_url": REDIS_URL}))
    try:
        while True:
            steps += 1
            if await runner.advance(res, redis, record, final_try=False, slice_s=slice_s):
                return steps
            assert steps < 100_000, "the job makes no progress"
    finally:
        await res.aclose()
        await asyncio.sleep(0.05)  # the fire-and-forget counts (``workers.tally``) land before the test reads


async def run_job(
    redis: ArqRedis, settings: Settings, body: dict[str, Any], slice_s: float = 60.0
) -> tuple[JobStatus, SkillSet | None]:
    record = await start_job(redis, settings, body)
    try:
        await run_steps(redis, settings, record, slice_s)
    except ExtractFailed as exc:
        await records.set_state(redis, record.id, JobState.FAILED, str(exc))
    status = await records.get_status(redis, record.id)
    assert status is not None
    found = None
    if status.result:
        name, _, version = status.result.partition("@")
        found = await get_skill_set(redis, keyed.TEAM, name, int(version))
    return status, found

"""Nothing reaches an endpoint except through the runner: one arq function, and endpoint clients built by
``workers.runner.Resources`` alone (which hands them to the metered path)."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from schemas.jobs import JobRecord, JobState, PhaseTask, PromptsJobSpec
from schemas.review import HelpTask
from schemas.settings import EndpointSettings, Settings
from store import keys, records, stepped
from tests import keyed
from workers.llm.client import LLMClient, NotTheRunner
from workers.runner.step import run_step
from workers.unit import RECIPE_UNITS
from workers.worker import WorkerSettings, make_worker

REPO = Path(__file__).resolve().parents[2]
ENDPOINT = EndpointSettings(base_url="http://127.0.0.1:9", model="m")


def test_a_bare_client_cannot_be_built() -> None:
    with pytest.raises(NotTheRunner):
        LLMClient("x", ENDPOINT)
    with pytest.raises(NotTheRunner):
        LLMClient("x", ENDPOINT, _key=object())


def test_only_the_runner_resources_hold_the_key() -> None:
    """The key is private; no product module but the runner's resources (and the client itself) touches it."""
    holders = sorted(
        str(path.relative_to(REPO))
        for package in ("workers", "store", "service", "schemas", "bench")
        for path in (REPO / package).rglob("*.py")
        if "_BUILD_KEY" in path.read_text(encoding="utf-8")
    )
    assert holders == ["workers/llm/client.py", "workers/runner/resources.py"]


def test_one_arq_function_runs_every_kind_of_work() -> None:
    assert WorkerSettings.functions == [run_step]
    worker = make_worker(Settings())
    assert list(worker.functions) == ["run_step"] == [keys.STEP_FUNCTION]  # the name the store enqueues for


def test_the_builtin_recipes_register_their_own_units() -> None:
    """The runner names no recipe (``test_layering``): the extraction and math modules register their units."""
    assert {("extract-agnostic", "phase"), ("extract-from-dataset", "phase"), ("math", "help")} <= set(RECIPE_UNITS)


async def _prompts_job(redis: ArqRedis) -> JobRecord:
    spec = PromptsJobSpec.model_validate({"prompts": ["Say 1."]})
    record = JobRecord(
        team=keyed.TEAM, id="p1", spec=spec, endpoint="fake", model="m", chunk_size=8, created_at=datetime.now(UTC)
    )
    await records.create_job(redis, record, planned=1)
    return record


async def test_a_phase_step_runs_the_recipe_s_unit_after_marking_it_started(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await _prompts_job(redis)
    seen: list[tuple[Any, int]] = []

    async def phase(ctx: dict[str, Any], task: PhaseTask, final_try: bool) -> dict[str, Any]:
        seen.append((task, (await stepped.current_step(redis, task.job_id)).step))
        return {"ran": True}

    monkeypatch.setitem(RECIPE_UNITS, ("prompts", "phase"), phase)
    task = PhaseTask(job_id=record.id, step=4)
    assert await run_step({"redis": redis, "job_try": 1}, task.model_dump()) == {"ran": True}
    assert seen == [(task, 4)]  # the runner kept where the chain stands before the unit ran


@pytest.mark.parametrize(
    "task",
    [
        PhaseTask(job_id="p1", step=0),
        HelpTask(job_id="p1", item_id="i", suggestion_id="s", help="resolve", by="ann"),
    ],
    ids=["phase", "help"],
)
async def test_a_unit_kind_the_recipe_lacks_fails_the_job_naming_both(
    redis: ArqRedis, task: PhaseTask | HelpTask
) -> None:
    record = await _prompts_job(redis)
    result = await run_step({"redis": redis, "job_try": 1}, task.model_dump())
    assert "failed" in result
    status = await records.get_status(redis, record.id)
    assert status is not None and status.state == JobState.FAILED
    assert f"recipe 'prompts' has no {task.kind} unit" in status.message

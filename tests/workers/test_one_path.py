"""Nothing reaches an endpoint except through the runner: one arq function, and endpoint clients built by
``workers.runner.Resources`` alone (which hands them to the metered path)."""

from pathlib import Path

import pytest

from schemas.settings import EndpointSettings, Settings
from store import keys
from workers.llm.client import LLMClient, NotTheRunner
from workers.runner.step import run_step
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

"""Recipes are plug-ins: a recipe defined in a test module (``tests/recipes/echo.py``) and named only in the
processes' ``SKILLMIX_RECIPES`` is accepted by ``POST /v1/jobs``, documented in the OpenAPI document, run by
the workers on the metered path, and its record extra reaches every export, with no edit to shared code."""

import io
import json
from typing import Any

import pyarrow.parquet as pq
from arq.connections import ArqRedis

from tests import keyed
from tests.conftest import Processes
from tests.test_end_to_end import examples, finished, settled, start_stack, submit, wait_for

PLUGIN = "tests.recipes.echo"


def test_a_recipe_registered_from_the_test_runs_end_to_end(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=6000, latency_ms=5)
    api = start_stack(processes, fake, SKILLMIX_RECIPES=PLUGIN)
    body = keyed.get(f"{api}/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert "echo" in json.dumps(body)  # documented with the built-ins
    bad = keyed.post(f"{api}/v1/jobs", json={"recipe": "echo", "count": 2, "topic": ""})
    assert bad.status_code == 422 and ["body", "topic"] in [e["loc"] for e in bad.json()["detail"]], bad.text

    job_id = submit(
        api,
        recipe="echo",
        topic="tide pools",
        count=12,
        chunk_size=4,
        quality={"enabled": False},
        dedup={"exact": False, "near": False},
    )
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["recipe"] == "echo", status
    status = wait_for(api, job_id, settled, timeout=60)
    assert status["counters"]["accepted"] == 12
    assert status["counters"]["llm_calls"] == fake.stats()["requests"] >= 12, (status, fake.stats())

    stored = examples(api, job_id)
    assert len(stored) == 12 and all(e["echo_len"] == len(e["output"]) > 0 for e in stored), stored[:2]
    assert all("tide pools" in e["instruction"] and "extras" not in e for e in stored)
    lines = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "jsonl"}).text.splitlines()
    assert sorted(json.loads(line)["echo_len"] for line in lines) == sorted(e["echo_len"] for e in stored)
    parquet = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "parquet"}, timeout=30)
    table = pq.read_table(io.BytesIO(parquet.content))
    assert str(table.schema.field("echo_len").type) == "int64"
    assert sorted(table.column("echo_len").to_pylist()) == sorted(e["echo_len"] for e in stored)


def test_without_the_plug_in_the_recipe_is_unknown(processes: Processes, fake_llm: Any) -> None:
    """The registry is what the processes loaded: the same spec is a 422 naming the known recipes."""
    api = start_stack(processes, fake_llm(rpm=6000))
    response = keyed.post(f"{api}/v1/jobs", json={"recipe": "echo", "count": 2, "topic": "x"})
    assert response.status_code == 422 and "'instruct'" in response.text and "echo" in response.text, response.text

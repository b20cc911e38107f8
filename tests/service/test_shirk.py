"""Shirker ablation (papers.md §A) and the held-out export split, through real API and worker processes, real
Redis and the fake endpoint: `skillmix shirk` plants exactly round(rate x count) labelled shirkers made by the
endpoint with the paper's prompts and copies the rest verbatim; the split is exact, disjoint and stable."""

import json
import subprocess
import sys
import time
from pathlib import Path
from string import Template
from typing import Any

import pyarrow.parquet as pq
import pytest
from arq.connections import ArqRedis

from service.export import heldout_positions
from tests import keyed
from tests.conftest import REPO, Processes, service_env
from tests.test_end_to_end import examples, finished, start_stack, submit, wait_for
from workers.recipes.shirk import shirker_indexes

TEMPLATES = REPO / "workers/recipes/templates/shirk/v1"
SOURCE_COUNT = 50


def skillmix(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def source_job(api: str) -> tuple[str, list[dict[str, Any]]]:
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=SOURCE_COUNT, seed=3, refine=False)
    status = wait_for(api, job_id, finished, timeout=90)
    assert status["state"] == "completed" and status["counters"]["accepted"] == SOURCE_COUNT, status
    rows = examples(api, job_id)
    assert len(rows) == SOURCE_COUNT
    time.sleep(0.5)  # calls cut short by the completion reach the endpoint before a test takes its count
    return job_id, rows


def recent_requests(fake: Any) -> list[dict[str, Any]]:
    response = keyed.get(f"{fake.admin_url}/admin/requests", timeout=5)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["requests"]
    return found


def request_text(source: dict[str, Any]) -> str:
    instruction, extra = str(source["instruction"]), str(source["input"])
    return instruction + (f"\n\n{extra}" if extra else "")


def check_labels(
    rows: list[dict[str, Any]], source: list[dict[str, Any]], src_id: str, kind: str, rate: float, seed: int
) -> list[dict[str, Any]]:
    """Every row labelled and traceable; exactly the seeded choice are shirkers; the rest copied verbatim."""
    assert sorted(r["index"] for r in rows) == list(range(SOURCE_COUNT))
    expected = shirker_indexes(seed, SOURCE_COUNT, rate)
    assert len(expected) == round(rate * SOURCE_COUNT)
    shirkers = [r for r in rows if r["shirker"] is True]
    assert {r["index"] for r in shirkers} == expected
    for row in rows:
        original = source[row["index"]]  # item i is the source's accepted example with seq i
        assert row["source_job"] == src_id and row["source_id"] == original["id"]
        assert row["instruction"] == original["instruction"] and row["skills"] == original["skills"]
        assert row["query_type"] == original["query_type"]
        if row["index"] in expected:
            assert row["shirker_kind"] == kind and row["recipe"] == "shirk" and row["template_version"] == "v1"
            assert row["output"] != original["output"] and row["output"].strip()
            assert row["usage"]["calls"] == 1, row["usage"]
            user, assistant = row["conversation"]
            prompt = Template((TEMPLATES / f"{kind}.txt").read_text()).substitute(request=request_text(original))
            assert user == {"role": "user", "content": prompt.strip()}
            assert assistant["role"] == "assistant" and assistant["content"].strip() == row["output"]
        else:
            assert row["shirker"] is False and row["shirker_kind"] is None
            for field in ("output", "input", "model", "endpoint", "recipe", "template_version", "conversation"):
                assert row[field] == original[field], field
            assert row["usage"]["calls"] == 0
        assert row["verdict"]["accepted"] is True
    return shirkers


def test_shirk_brevity_with_the_cli(tmp_path: Path, processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5)
    env = service_env({"fake": fake.endpoint_settings()})
    api = start_stack(processes, fake)
    src_id, source = source_job(api)
    calls_before = fake.stats()["requests"]

    out = tmp_path / "out" / "brevity.jsonl"
    done = skillmix("shirk", src_id, "--rate", "0.2", "--kind", "brevity", "-o", str(out), "--api", api, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted shirk job ")[1].split()[0]
    status = keyed.get(f"{api}/v1/jobs/{job_id}").json()
    assert status["state"] == "completed" and status["recipe"] == "shirk" and status["count"] == SOURCE_COUNT
    assert status["counters"]["accepted"] == SOURCE_COUNT and status["counters"]["rejected"] == 0

    # exactly the 10 shirkers went to the endpoint, and the job's usage counts each of them
    calls = fake.stats()["requests"] - calls_before
    assert calls == 10 and status["counters"]["llm_calls"] == calls, (calls, status["counters"])

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == SOURCE_COUNT and all(r["job_id"] == job_id for r in rows)
    shirkers = check_labels(rows, source, src_id, "brevity", 0.2, 0)
    assert len(shirkers) == 10 and sum(not r["shirker"] for r in rows) == 40

    # the endpoint saw the paper's brevity prompt: the instruction re-asked "in one paragraph"
    sent = [b["messages"][-1]["content"] for b in recent_requests(fake)[-10:]]
    assert all(text.endswith("Answer in one paragraph.") for text in sent), sent
    assert sorted(sent) == sorted(s["conversation"][0]["content"] for s in shirkers)


def test_shirk_junk_uses_the_junk_prompt(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5)
    api = start_stack(processes, fake)
    src_id, source = source_job(api)
    calls_before = fake.stats()["requests"]
    job_id = submit(api, recipe="shirk", source_job=src_id, rate=0.1, kind="junk", seed=7)
    status = wait_for(api, job_id, finished, timeout=60)
    assert status["state"] == "completed" and status["counters"]["accepted"] == SOURCE_COUNT, status
    assert fake.stats()["requests"] - calls_before == 5 == status["counters"]["llm_calls"]

    shirkers = check_labels(examples(api, job_id), source, src_id, "junk", 0.1, 7)
    assert len(shirkers) == 5
    wording = (TEMPLATES / "junk.txt").read_text()
    assert "extremely unhelpful response" in wording and "vague and long, with many filler words" in wording
    sent = [b["messages"][-1]["content"] for b in recent_requests(fake)[-5:]]
    for text in sent:
        assert text.startswith("Write an extremely unhelpful response") and "lazy and very generic" in text
    assert sorted(sent) == sorted(
        Template(wording).substitute(request=request_text(source[s["index"]])).strip() for s in shirkers
    )


def test_shirk_refuses_a_source_that_is_missing_running_or_empty(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=60, latency_ms=2000)  # slow: the source job is still running when we ask
    api = start_stack(processes, fake)
    unknown = keyed.post(f"{api}/v1/jobs", json={"recipe": "shirk", "source_job": "nope", "kind": "junk"})
    assert unknown.status_code == 422 and "unknown job" in unknown.text
    running = submit(api, recipe="instruct", skill_set="starter@1", count=30, refine=False)
    busy = keyed.post(f"{api}/v1/jobs", json={"recipe": "shirk", "source_job": running, "kind": "brevity"})
    assert busy.status_code == 422 and "wait until it finishes" in busy.text
    bad_kind = keyed.post(f"{api}/v1/jobs", json={"recipe": "shirk", "source_job": running, "kind": "lazy"})
    assert bad_kind.status_code == 422
    keyed.post(f"{api}/v1/jobs/{running}/cancel").raise_for_status()


def export_ids(api: str, job_id: str, **params: Any) -> list[str]:
    response = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "jsonl", **params}, timeout=30)
    response.raise_for_status()
    return [json.loads(line)["id"] for line in response.text.splitlines() if line]


def test_heldout_split_is_exact_disjoint_and_stable(
    tmp_path: Path, processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=0, latency_ms=5)
    env = service_env({"fake": fake.endpoint_settings()})
    api = start_stack(processes, fake)
    job_id, source = source_job(api)
    everything = export_ids(api, job_id)
    assert everything == [s["id"] for s in source]  # no split by default

    held = export_ids(api, job_id, split="heldout", heldout=12, heldout_seed=5)
    train = export_ids(api, job_id, split="train", heldout=12, heldout_seed=5)
    assert len(held) == 12 and len(train) == SOURCE_COUNT - 12
    assert not set(held) & set(train) and sorted(held + train) == sorted(everything)
    assert export_ids(api, job_id, split="heldout", heldout=12, heldout_seed=5) == held  # stable
    assert export_ids(api, job_id, split="heldout", heldout=12, heldout_seed=6) != held  # the seed decides
    assert held == [everything[i] for i in sorted(heldout_positions(SOURCE_COUNT, 12, 5))]
    alpaca = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "alpaca", "split": "heldout", "heldout": 12})
    assert len(alpaca.json()) == 12

    out = tmp_path / "heldout.jsonl"
    done = skillmix(
        "export", job_id, "--split", "heldout", "--heldout", "12", "--heldout-seed", "5", "-o", str(out),
        "--api", api, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == held
    parquet = tmp_path / "train.parquet"
    done = skillmix(
        "export", job_id, "-f", "parquet", "--split", "train", "--heldout", "12", "--heldout-seed", "5",
        "-o", str(parquet), "--api", api, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert pq.read_table(parquet).column("id").to_pylist() == train


@pytest.mark.parametrize("total", [1, 50, 4000])
def test_heldout_positions_and_shirker_choice_are_exact(total: int) -> None:
    for size in (1, 100, 10_000):
        chosen = heldout_positions(total, size, 0)
        assert len(chosen) == min(size, total) and all(0 <= p < total for p in chosen)
        assert heldout_positions(total, size, 0) == chosen
    for rate in (0.0, 0.2, 0.5, 1.0):
        picked = shirker_indexes(1, total, rate)
        assert len(picked) == int(rate * total + 0.5) and picked == shirker_indexes(1, total, rate)
    if total > 1:
        assert shirker_indexes(1, total, 0.5) != shirker_indexes(2, total, 0.5)

"""Whole jobs through the real API process, real worker processes, real Redis and the fake endpoint."""

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as sync_redis
from arq.connections import ArqRedis

from schemas.jobs import JobRecord, PromptsJobSpec
from store import keys, records
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env
from workers.curate.dedup import jaccard
from workers.curate.quality import normalise_text

STARTER = json.loads((Path(__file__).parents[1] / "service/data/starter-skills.json").read_text())


def wait_for(api: str, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = keyed.get(f"{api}/v1/jobs/{job_id}").json()
        if done(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job did not get there in {timeout}s: {status}")


def finished(status: dict[str, Any]) -> bool:
    return status["state"] in ("completed", "failed", "cancelled")


def settled(status: dict[str, Any]) -> bool:
    """Finished, and the items in flight at that moment curated too: counters and listings agree from here."""
    return bool(status["settled"])


def examples(api: str, job_id: str, status: str = "accepted") -> list[dict[str, Any]]:
    response = keyed.get(f"{api}/v1/jobs/{job_id}/examples", params={"status": status}, timeout=30)
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line]


def start_stack(processes: Processes, fake: Any, workers: int = 1, **env: str) -> str:
    settings = service_env({"fake": fake.endpoint_settings()}, **env)
    api = processes.api(settings)
    for _ in range(workers):
        processes.worker(settings)
    keyed.post(f"{api}/v1/skill-sets", json=STARTER).raise_for_status()
    return api


def submit(api: str, **spec: Any) -> str:
    response = keyed.post(f"{api}/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_instruct_job_end_to_end_dedups_and_filters(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(
        rpm=6000, latency_ms=20, exact_dup_rate=0.05, near_dup_rate=0.05, shirker_rate=0.05, refusal_rate=0.02
    )
    api = start_stack(processes, fake)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=200, seed=11)
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 200, status
    status = wait_for(api, job_id, settled, timeout=60)  # in-flight items may still be curated as surplus
    c = status["counters"]
    assert c["accepted"] == 200
    reasons = c["rejected_by_reason"]
    assert reasons.get("exact_duplicate", 0) > 0 and reasons.get("near_duplicate", 0) > 0, reasons
    assert reasons.get("restates_instruction", 0) + reasons.get("too_short", 0) > 0, reasons
    assert reasons.get("refusal", 0) > 0, reasons
    assert c["llm_calls"] >= 3 * c["processed"]  # write, critique, refine per item

    accepted = examples(api, job_id)
    assert len(accepted) == 200 and len({e["index"] for e in accepted}) == 200
    texts = [normalise_text(e["instruction"]) for e in accepted]
    assert len(set(texts)) == 200
    worst = max(jaccard(a, b) for i, a in enumerate(texts) for b in texts[i + 1 :])
    assert worst < 0.7
    first = accepted[0]
    assert len(first["skills"]) == 2 and first["query_type"] and first["template_version"] == "v1"
    assert first["model"] == "fake-model" and first["verdict"]["accepted"] is True
    assert [m["role"] for m in first["conversation"]] == ["system"] + ["user", "assistant"] * 3

    rejected = examples(api, job_id, "rejected")
    assert len(rejected) == c["rejected"] and all(r["verdict"]["reasons"] for r in rejected)
    assert any(r["duplicate_of"] for r in rejected)

    alpaca = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "alpaca"}).json()
    assert len(alpaca) == 200 and set(alpaca[0]) == {"instruction", "input", "output"}
    sharegpt = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "sharegpt"}).json()
    assert sharegpt[0]["conversations"][0]["from"] == "human"
    coverage = keyed.get(f"{api}/v1/jobs/{job_id}/coverage").json()
    assert coverage["items"] == 200 and coverage["skills_covered"] >= 35


def test_stays_under_the_endpoint_rate_limit(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=1200, latency_ms=50)
    api = start_stack(processes, fake)
    prompts = [f"Write a haiku about the number {i}." for i in range(240)]
    job_id = submit(api, recipe="prompts", prompts=prompts, dedup={"exact": False})
    status = wait_for(api, job_id, finished, timeout=90)
    assert status["counters"]["accepted"] == 240
    stats = fake.stats()
    assert stats["rate_limited"] <= 0.01 * stats["requests"], stats
    assert stats["max_rps_1s"] <= 2 * 1200 / 60 + 1, stats  # 1 s of burst on top of the rate


def test_recovers_from_429_storm_and_5xx(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=10, error_rate=0.2, storm=40, storm_retry_after_s=1.0)
    api = start_stack(processes, fake)
    job_id = submit(api, recipe="prompts", prompts=[f"Tell me fact number {i}." for i in range(100)])
    status = wait_for(api, job_id, finished, timeout=90)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 100, status
    assert c["rate_limited"] >= 1 and c["retries"] >= 10
    stats = fake.stats()
    # the endpoint-wide pause means the storm is not multiplied by every concurrent request's retries
    assert stats["rate_limited"] <= 40 + 32, stats


def test_cancel_stops_the_job(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=600, latency_ms=1500)  # slow answers: many calls are in flight when the cancel lands
    api = start_stack(processes, fake)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=500, refine=False)
    wait_for(api, job_id, lambda s: s["counters"]["accepted"] >= 3, timeout=60)
    assert keyed.post(f"{api}/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    time.sleep(1.0)
    calls = fake.stats()["requests"]
    time.sleep(3.0)
    status = keyed.get(f"{api}/v1/jobs/{job_id}").json()
    assert status["state"] == "cancelled" and status["counters"]["accepted"] < 500
    assert fake.stats()["requests"] - calls <= 2  # no new work is started after the cancel
    # every request the endpoint saw is in the job's usage, the ones cut short by the cancel included
    # (give or take one whose connection closed before the endpoint counted it)
    assert abs(status["counters"]["llm_calls"] - fake.stats()["requests"]) <= 1, (status, fake.stats())


def test_job_falls_short_honestly_when_budget_is_spent(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5, shirker_rate=0.7)
    api = start_stack(processes, fake)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=20, max_items=25, refine=False)
    status = wait_for(api, job_id, finished, timeout=60)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] < 20 and c["processed"] == 25, status
    assert "fell short" in status["message"] and "max_items=25" in status["message"]


def test_killed_worker_loses_and_duplicates_nothing(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """SIGKILL mid-job; the default 30-minute chunk timeout stays: heartbeats get its chunks rerun at once."""
    fake = fake_llm(rpm=900, latency_ms=100)  # paced, so most chunks are mid-way when the worker dies
    fast = {"SKILLMIX_HEARTBEAT_S": "1", "SKILLMIX_CLAIM_IDLE_MS": "2000"}
    api = start_stack(processes, fake, 1, **fast)
    settings = service_env({"fake": fake.endpoint_settings()}, **fast)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=120, refine=False, chunk_size=8)
    wait_for(api, job_id, lambda s: s["counters"]["accepted"] >= 10, timeout=60)
    victim = processes.procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    with sync_redis.Redis.from_url(REDIS_URL) as plain:
        assert plain.keys("arq:in-progress:*"), "the test must kill the worker while it holds chunks"
    processes.worker(settings)
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 120, status
    accepted = examples(api, job_id)
    assert len(accepted) == 120 and len({e["index"] for e in accepted}) == 120


async def test_work_planned_by_a_process_that_died_is_enqueued_again(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=0, latency_ms=5)
    endpoint = fake.endpoint_settings()
    settings = service_env({"fake": endpoint}, SKILLMIX_HEARTBEAT_S="1")
    api = processes.api(settings)
    processes.worker(settings)
    spec = PromptsJobSpec.model_validate({"prompts": [f"Say {i}." for i in range(40)]})
    record = JobRecord(
        team=keyed.TEAM,
        id="orphan",
        spec=spec,
        endpoint="fake",
        model=endpoint.model,
        chunk_size=8,
        created_at=datetime.now(UTC),
    )
    await records.create_job(redis, record, planned=40)  # and the API dies here, before enqueueing
    assert await redis.zcard(keys.QUEUE_NAME) == 0
    status = wait_for(api, "orphan", finished, timeout=60)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 40, status
    assert sorted(e["index"] for e in examples(api, "orphan")) == list(range(40))
    assert not await redis.exists(keys.pending_plans("orphan"))


def test_endpoint_down_then_back_loses_nothing(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5, error_rate=1.0)
    settings = service_env({"fake": fake.endpoint_settings(max_retries=1)})
    api = processes.api(settings)
    processes.worker(settings)
    job_id = submit(api, recipe="prompts", prompts=[f"Say {i}." for i in range(40)])
    wait_for(api, job_id, lambda s: s["counters"]["retries"] >= 40, timeout=30)
    assert keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]["processed"] == 0
    fake.configure(error_rate=0.0)
    status = wait_for(api, job_id, finished, timeout=60)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 40, status
    assert sorted(e["index"] for e in examples(api, job_id)) == list(range(40))


def test_bad_key_fails_the_job_with_a_clear_message(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, require_key="right")
    settings = service_env({"fake": fake.endpoint_settings(api_key_env="FAKE_KEY")}, FAKE_KEY="wrong")
    api = processes.api(settings)
    processes.worker(settings)
    job_id = submit(api, recipe="prompts", prompts=["hello"] * 1 + ["world"])
    status = wait_for(api, job_id, finished, timeout=30)
    assert status["state"] == "failed" and "401" in status["message"], status
    assert fake.stats()["requests"] <= 2

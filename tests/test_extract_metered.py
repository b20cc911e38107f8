"""Extraction jobs on the runner's one metered path, through real API and worker processes, real Redis and the
fake endpoint: every call counted at send (also across a SIGKILL), a cancel stops the calls, a budget pauses
the job and raising it finishes the job, a rerun pays no answered call twice, and fair share with generation.
"""

import json
import time
from pathlib import Path
from typing import Any

import redis as sync_redis
from arq.connections import ArqRedis

from schemas.jobs import JobState, PhaseTask
from store import keys, records, stepped
from tests import keyed
from tests.conftest import REDIS_URL, Processes, kill_mid_call, service_env
from tests.extract.helpers import settings_for, start_job, write_jsonl
from tests.test_end_to_end import finished, submit, wait_for
from workers.watchdog import MAX_REDRIVES, Watchdog

FAST = {"SKILLMIX_HEARTBEAT_S": "0.5", "SKILLMIX_STALL_S": "1", "SKILLMIX_CLAIM_IDLE_MS": "2000"}
SOURCE = {"source": {"path": "seed.jsonl"}}
PRICED = {"usd_per_mtok_prompt": 1.0, "usd_per_mtok_completion": 2.0}  # micro-dollars = tokens x price, exactly


def _stack(processes: Processes, fake: Any, data_dir: Path, **env: str) -> tuple[str, dict[str, str]]:
    settings = service_env({"fake": fake.endpoint_settings(**PRICED)}, SKILLMIX_DATA_DIR=str(data_dir), **env)
    api = processes.api(settings)
    processes.worker(settings)
    return api, settings


def _extract(api: str, seed: Path, **spec: Any) -> str:
    body = {"recipe": "extract-from-dataset", "skill_set_name": "metered", "max_skills": 20} | spec
    with seed.open("rb") as fh:
        response = keyed.post(
            f"{api}/v1/skill-sets/extract", files={"file": (seed.name, fh), "spec": (None, json.dumps(body))}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _status(api: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = keyed.get(f"{api}/v1/jobs/{job_id}").json()
    return body


def _settled(fake: Any, api: str, job_id: str) -> tuple[int, dict[str, Any]]:
    """(fake's requests, the job's status) once neither moves."""
    last: tuple[int, int] = (-1, -1)
    for _ in range(60):
        status = _status(api, job_id)
        now = (fake.stats()["requests"], status["counters"]["llm_calls"])
        if now == last:
            return now[0], status
        last = now
        time.sleep(0.3)
    raise AssertionError(f"counts did not settle: {last}")


def _wait_requests(fake: Any, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while fake.stats()["ok"] < at_least:
        assert time.monotonic() < deadline, fake.stats()
        time.sleep(0.02)


def _cost_is_exact(counters: dict[str, Any]) -> None:
    prompt, completion = counters["prompt_tokens"], counters["completion_tokens"]
    assert prompt > 0 and counters["cost_micro_usd"] == prompt * 1 + completion * 2, counters


def test_sigkill_mid_labelling_then_rerun_counts_every_call_and_pays_none_twice(
    processes: Processes, redis: ArqRedis, fake_llm: Any, tmp_path: Path
) -> None:
    fake = fake_llm(rpm=0, latency_ms=300, latency_jitter_ms=200)
    api, settings = _stack(processes, fake, tmp_path / "data", **FAST)
    worker = processes.procs[-1]
    job_id = _extract(api, write_jsonl(tmp_path / "seed.jsonl", 600), rows_per_call=5)
    _wait_requests(fake, 20)  # well into labelling (120 label calls)
    in_flight, at_kill = kill_mid_call(worker, fake)  # answers the worker may not have kept
    assert at_kill["in_flight"] > 0
    while (drained := fake.stats())["in_flight"]:  # the fake finishes what the dead worker sent
        time.sleep(0.05)
    counted = _status(api, job_id)["counters"]["llm_calls"]
    assert counted == drained["requests"], (counted, drained)  # counted at send: the dead worker's calls too
    with sync_redis.Redis.from_url(REDIS_URL) as plain:
        kept = plain.hlen(keys.replay(job_id, "extract"))
    assert kept > 0  # the killed step's answers, kept as they arrived

    processes.worker(settings)
    status = wait_for(api, job_id, finished, timeout=120)
    requests, status = _settled(fake, api, job_id)
    stats = fake.stats()
    print(f"extract replay: answered {drained['ok']}, kept {kept}, in flight {in_flight}, "
          f"repaid {stats['repaid']}, replayed {status['counters']['replayed']}, requests {requests}")  # fmt: skip
    assert status["state"] == "completed" and status["result"] == "metered@1", status
    assert status["counters"]["llm_calls"] == requests  # a replayed answer is not a call
    # no answer the worker got was paid again: rows whose answer was stored are skipped, answers that arrived
    # but whose rows were not stored yet are replayed; only calls the frozen worker never heard back from go again
    assert stats["repaid"] <= in_flight, (stats, in_flight)
    _cost_is_exact(status["counters"])
    with sync_redis.Redis.from_url(REDIS_URL) as plain:  # the kept answers go when the job is retired
        deadline = time.monotonic() + 30
        while list(plain.scan_iter(match=f"{keys.job(job_id)}:replay*")):
            assert time.monotonic() < deadline, "replay keys outlived the job"
            time.sleep(0.2)


def test_a_cancel_mid_labelling_stops_the_calls_within_max_concurrency(
    processes: Processes, redis: ArqRedis, fake_llm: Any, tmp_path: Path
) -> None:
    fake = fake_llm(rpm=0, latency_ms=300)
    max_concurrency = 8
    settings = service_env(
        {"fake": fake.endpoint_settings(max_concurrency=max_concurrency)}, SKILLMIX_DATA_DIR=str(tmp_path / "data")
    )
    api = processes.api(settings)
    processes.worker(settings)
    job_id = _extract(api, write_jsonl(tmp_path / "seed.jsonl", 2000), rows_per_call=5)  # 400 label calls
    _wait_requests(fake, 30)
    response = keyed.post(f"{api}/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled", response.text
    at_cancel = fake.stats()["requests"]
    time.sleep(3)  # at 300 ms a call, ~80 more calls would have left by now
    after = fake.stats()["requests"]
    print(f"extract cancel: {at_cancel} requests at the cancel, {after - at_cancel} after")
    assert after - at_cancel <= max_concurrency, (at_cancel, after)
    requests, status = _settled(fake, api, job_id)
    assert status["state"] == "cancelled" and status["counters"]["llm_calls"] == requests


def test_a_budget_capped_extraction_pauses_at_its_cap_and_completes_once_raised(
    processes: Processes, redis: ArqRedis, fake_llm: Any, tmp_path: Path
) -> None:
    fake = fake_llm(rpm=0, latency_ms=50)
    settings = service_env(
        {"fake": fake.endpoint_settings(max_concurrency=4, **PRICED)}, SKILLMIX_DATA_DIR=str(tmp_path / "data")
    )
    api = processes.api(settings)
    processes.worker(settings)
    job_id = _extract(api, write_jsonl(tmp_path / "seed.jsonl", 400), rows_per_call=5)
    capped = keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_cost_usd": 0.005}})
    assert capped.status_code == 200, capped.text  # an extraction job has a budget like any job
    paused = wait_for(api, job_id, lambda s: s["state"] in ("paused", "completed", "failed"), timeout=60)
    assert paused["state"] == "paused" and "budget reached" in paused["message"], paused
    requests, paused = _settled(fake, api, job_id)
    assert paused["state"] == "paused" and paused["counters"]["llm_calls"] == requests
    c = paused["counters"]
    per_call = c["cost_micro_usd"] / c["llm_calls"]
    assert 5000 <= c["cost_micro_usd"] < 5000 + 2 * 4 * per_call, c  # stopped at the cap: only calls in flight on
    time.sleep(1.5)
    assert fake.stats()["requests"] == requests  # paused: nothing leaves

    raised = keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_cost_usd": None}})
    assert raised.status_code == 200 and raised.json()["state"] == "running", raised.text
    done = wait_for(api, job_id, finished, timeout=120)
    assert done["state"] == "completed" and done["result"] == "metered@1", done
    requests, done = _settled(fake, api, job_id)
    assert done["counters"]["llm_calls"] == requests
    assert done["counters"]["accepted"] + done["counters"]["rejected"] == 400
    assert done["counters"]["llm_calls"] > c["llm_calls"]  # the work left at the pause was done after it
    _cost_is_exact(done["counters"])


def test_an_extraction_submitted_behind_a_big_generation_job_starts_within_a_couple_of_chunks(
    processes: Processes, redis: ArqRedis, fake_llm: Any, tmp_path: Path
) -> None:
    """One worker running 2 units at a time; 400 prompts in 100 chunks of 4, then a 40-row extraction (a few
    steps, each enqueued with a fair-share score). Behind the whole backlog it would start after ~98 chunks."""
    fake = fake_llm(rpm=0, latency_ms=150)
    api, _ = _stack(processes, fake, tmp_path / "data", SKILLMIX_WORKER_MAX_JOBS="2")
    big = submit(api, recipe="prompts", prompts=[f"Write about apples, take {i}." for i in range(400)],
                 chunk_size=4, dedup={"exact": False})  # fmt: skip
    wait_for(api, big, lambda s: s["counters"]["processed"] >= 8, timeout=60)
    generated_at_submit = _status(api, big)["counters"]["generated"]
    job_id = _extract(api, write_jsonl(tmp_path / "seed.jsonl", 40), rows_per_call=10)
    started = wait_for(api, job_id, lambda s: s["counters"]["llm_calls"] > 0 or s["state"] != "queued", timeout=60)
    waited = _status(api, big)["counters"]["generated"] - generated_at_submit
    print(f"extraction started after {waited} items of the big job ({waited // 4} chunks)")
    assert started["counters"]["llm_calls"] > 0, started
    assert waited <= 3 * 4 + 2 * 4, f"the extraction waited {waited} items behind the big job"  # a couple of chunks
    done = wait_for(api, job_id, finished, timeout=60)
    left = 400 - _status(api, big)["counters"]["generated"]
    assert done["state"] == "completed", done
    assert left >= 200, f"the extraction waited behind the big job: only {left} of 400 big items left"


async def test_the_watchdog_reruns_a_lost_extraction_step_and_fails_the_job_after_its_redrives(
    redis: ArqRedis, fake_llm: Any, tmp_path: Path
) -> None:
    """A stepped job is watched like any other: its live step, neither queued nor running, is enqueued again
    (same id: it resumes from its saved place); after ``MAX_REDRIVES`` reruns without progress the job fails."""
    write_jsonl(tmp_path / "seed.jsonl", 20)
    settings = settings_for(tmp_path, await fake_llm.astart())
    record = await start_job(redis, settings, {"recipe": "extract-from-dataset", "skill_set_name": "w"} | SOURCE)
    await stepped.mark_started(redis, PhaseTask(job_id=record.id, step=3))  # step 3 started, then arq lost it
    step = f"skillmix:phase:{record.id}:3"
    watchdog = Watchdog(redis, stall_ms=0)
    await watchdog.run_once()  # the first look only starts the stall clock
    for _ in range(MAX_REDRIVES):
        report = await watchdog.run_once()
        assert (report.stalled, report.redriven, report.failed) == (1, 1, 0), report
        assert await redis.zscore(keys.QUEUE_NAME, step) is not None
        await redis.zrem(keys.QUEUE_NAME, step)  # lost again
    report = await watchdog.run_once()
    assert report.failed == 1, report
    status = await records.get_status(redis, record.id)
    assert status is not None and status.state == JobState.FAILED
    assert f"phase {step} made no progress in {MAX_REDRIVES} reruns" in status.message

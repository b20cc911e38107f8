"""Provider batch mode (issue 17) end to end: real API and worker processes, real Redis, the fake endpoint's
Files + Batch API (``tests/fake_batch.py``). Every test checks what the fake billed against what the job says."""

import json
import signal
import time
from typing import Any

import redis as sync_redis
from arq.connections import ArqRedis

from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env
from tests.test_end_to_end import STARTER, examples, finished, settled, submit, wait_for

PRICES = {"usd_per_mtok_prompt": 2.0, "usd_per_mtok_completion": 8.0}
FAST = {"SKILLMIX_BATCH_GATHER_S": "0.3", "SKILLMIX_STALL_S": "5", "SKILLMIX_HEARTBEAT_S": "1"}


def batch_stack(processes: Processes, fake: Any, workers: int = 1, **endpoint: Any) -> tuple[str, dict[str, str]]:
    settings = fake.endpoint_settings(batch=True, batch_poll_s=0.2, **PRICES, **endpoint)
    env = service_env({"fake": settings}, **FAST)
    api = processes.api(env)
    for _ in range(workers):
        processes.worker(env)
    keyed.post(f"{api}/v1/skill-sets", json=STARTER).raise_for_status()
    return api, env


def expected_cost(fake_stats: dict[str, Any], factor: float = 0.5) -> float:
    """What the fake billed, at the endpoint's prices times the batch factor."""
    prompt, completion = fake_stats["batch_prompt_tokens"], fake_stats["batch_completion_tokens"]
    return float(prompt * PRICES["usd_per_mtok_prompt"] + completion * PRICES["usd_per_mtok_completion"]) * factor / 1e6


def test_prompts_job_in_batch_mode_bills_each_line_once_at_half_price(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(batch_latency_s=0.5)
    api, _ = batch_stack(processes, fake)
    prompts = [f"Tell me fact number {i} about the sea." for i in range(1000)]
    job_id = submit(api, recipe="prompts", prompts=prompts, mode="batch", chunk_size=100)
    status = wait_for(api, job_id, settled, timeout=120)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 1000, status
    stats = fake.stats()
    assert stats["requests"] == 0, "batch mode sent online requests"  # nothing went through /chat/completions
    assert stats["batch_lines_billed"] == 1000 and stats["batch_rebilled"] == 0, stats
    assert c["llm_calls"] == 1000 and c["prompt_tokens"] == stats["batch_prompt_tokens"], (c, stats)
    assert c["completion_tokens"] == stats["batch_completion_tokens"]
    assert abs(c["cost_usd"] - expected_cost(stats)) < 1e-5, (c["cost_usd"], expected_cost(stats))
    assert status["mode"] == "batch" and status["batch"]["open_batches"] == 0, status
    assert status["batch"]["rounds"] >= 1 and status["batch"]["lines_submitted"] == 1000
    assert len(examples(api, job_id)) == 1000


def test_instruct_job_in_batch_mode_goes_by_rounds(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """A 5-turn conversation: each answer resumes its item, whose next turn goes into the next batch."""
    fake = fake_llm(batch_latency_s=0.3, cutoff_rate=0.3)  # cut-off answers add rewrite turns (up to 5)
    api, _ = batch_stack(processes, fake, workers=2)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=100, seed=5, mode="batch", chunk_size=25)
    status = wait_for(api, job_id, settled, timeout=240)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 100, status
    stats = fake.stats()
    assert stats["requests"] == 0 and stats["batch_rebilled"] == 0, stats
    assert c["llm_calls"] == stats["batch_lines_billed"], (c, stats)
    decided = examples(api, job_id) + examples(api, job_id, "rejected")
    turns = [sum(m["role"] == "assistant" for m in e["conversation"]) for e in decided]
    # every kept turn was billed once (a redrawn item's unparseable attempt was billed too, as online)
    assert sum(turns) <= stats["batch_lines_billed"] and set(stats["batch_billed_by_body"].values()) == {1}
    if not c["parse_failures"]:
        assert sum(turns) == stats["batch_lines_billed"]
    assert max(turns) >= 4 and status["batch"]["rounds"] >= max(turns), (turns, status["batch"])
    assert abs(c["cost_usd"] - expected_cost(stats)) < 1e-5


def test_error_lines_and_an_expired_batch_are_resubmitted(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(batch_latency_s=0.4, batch_error_rate=0.2, batch_expire_next=1, batch_done_fraction=0.5)
    api, _ = batch_stack(processes, fake)
    prompts = [f"Name a colour, number {i}." for i in range(100)]
    job_id = submit(api, recipe="prompts", prompts=prompts, mode="batch", chunk_size=100)
    status = wait_for(api, job_id, settled, timeout=120)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 100, status
    stats = fake.stats()
    assert stats["batch_statuses"].get("expired", 0) == 1, stats["batch_statuses"]
    assert stats["batch_lines_failed"] > 0 and stats["batch_rebilled"] == 0, stats
    assert stats["batch_lines_billed"] == 100
    assert c["retries"] > 0 and status["batch"]["lines_submitted"] > 100, (c, status["batch"])


def test_a_line_that_fails_for_good_fails_its_item_with_the_providers_message(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(batch_latency_s=0.2)
    api, _ = batch_stack(processes, fake)
    prompts = [f"Count to {i}." for i in range(10)]
    job_id = submit(api, recipe="prompts", prompts=prompts, mode="batch", chunk_size=10)
    # the fake fails a body with 400 in every batch it is in: no retry helps
    fake.configure(batch_invalid_rate=1.0)
    status = wait_for(api, job_id, settled, timeout=60)
    c = status["counters"]
    assert c["accepted"] == 0 and c["rejected_by_reason"].get("llm_error") == 10, status
    rejected = examples(api, job_id, "rejected")
    assert all("HTTP 400" in r["verdict"]["detail"] for r in rejected), rejected[0]


def test_cancel_cancels_open_batches_and_stops_submitting(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(batch_latency_s=30, batch_cancel_s=0.3, batch_done_fraction=0.25)
    api, _ = batch_stack(processes, fake)
    prompts = [f"Tell me about planet {i}." for i in range(40)]
    job_id = submit(api, recipe="prompts", prompts=prompts, mode="batch", chunk_size=40)
    deadline = time.monotonic() + 30  # validating for 20% of the latency (cancelled then, nothing would run)
    while fake.stats()["batch_statuses"].get("in_progress", 0) < 1:
        assert time.monotonic() < deadline, fake.stats()["batch_statuses"]
        time.sleep(0.2)
    assert keyed.get(f"{api}/v1/jobs/{job_id}").json()["batch"]["open_batches"] == 1
    keyed.post(f"{api}/v1/jobs/{job_id}/cancel").raise_for_status()
    deadline = time.monotonic() + 20
    while fake.stats()["batch_statuses"].get("cancelled", 0) < 1:
        assert time.monotonic() < deadline, fake.stats()["batch_statuses"]
        time.sleep(0.2)
    status = wait_for(api, job_id, lambda s: finished(s) and s["batch"]["open_batches"] == 0, 30)
    stats = fake.stats()
    assert stats["batches_created"] == 1, stats  # nothing submitted after the cancel
    assert stats["batch_lines_billed"] == 10  # a quarter done when cancelled: those are counted and priced
    c = status["counters"]
    assert c["llm_calls"] == 10 and abs(c["cost_usd"] - expected_cost(stats)) < 1e-5, (c, stats)


def test_budget_pauses_before_a_file_would_pass_the_cap(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(batch_latency_s=0.2)
    api, _ = batch_stack(processes, fake)
    prompts = [f"Describe city {i}." for i in range(50)]
    # worst case of the file: 50 lines x (prompt + 256 completion tokens) at $8/Mtok x 0.5: about $0.05
    job_id = submit(
        api, recipe="prompts", prompts=prompts, mode="batch", chunk_size=50, params={"max_tokens": 256},
        budget={"max_cost_usd": 0.01},
    )  # fmt: skip
    status = wait_for(api, job_id, lambda s: s["state"] == "paused", 30)
    assert "next batch file" in status["message"], status["message"]
    time.sleep(1.0)
    assert fake.stats()["files_uploaded"] == 0 and status["counters"]["cost_usd"] == 0
    keyed.patch(f"{api}/v1/jobs/{job_id}", json={"budget": {"max_cost_usd": 1.0}}).raise_for_status()
    status = wait_for(api, job_id, settled, timeout=60)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 50, status


def test_sigkill_with_open_batches_loses_nothing_and_pays_nothing_twice(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(batch_latency_s=1.0)
    api, env = batch_stack(processes, fake, workers=2)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=30, seed=9, mode="batch", chunk_size=10)
    workers = list(processes.procs[1:])
    store = sync_redis.Redis.from_url(REDIS_URL)
    for round_ in range(3):  # kill every worker while batches are open (at different moments), start fresh ones
        deadline = time.monotonic() + 60
        while not store.scard(f"skillmix:job:{job_id}:batches"):
            assert time.monotonic() < deadline, "no batch opened"
            time.sleep(0.05)
        time.sleep(0.2 + 0.5 * round_)
        for proc in workers:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        workers = [processes.worker(env) for _ in range(2)]
    status = wait_for(api, job_id, settled, timeout=240)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 30, status
    stats = fake.stats()
    assert stats["batch_rebilled"] == 0 and stats["requests"] == 0, stats
    assert c["llm_calls"] == stats["batch_lines_billed"], (c, stats)
    assert abs(c["cost_usd"] - expected_cost(stats)) < 1e-5
    leftover = sync_redis.Redis.from_url(REDIS_URL).zcard("skillmix:batches:open")
    assert leftover == 0
    assert json.dumps(status)  # the status stays serialisable


def test_dataset_extraction_in_batch_mode(processes: Processes, redis: ArqRedis, fake_llm: Any, tmp_path: Any) -> None:
    """A stepped job: each window's calls go into one file; the step waits in the queue and replays its window."""
    from tests.extract.helpers import write_jsonl

    fake = fake_llm(batch_latency_s=0.3)
    settings = fake.endpoint_settings(batch=True, batch_poll_s=0.2, **PRICES)
    env = service_env({"fake": settings}, SKILLMIX_DATA_DIR=str(tmp_path / "data"), **FAST)
    api = processes.api(env)
    processes.worker(env)
    seed = write_jsonl(tmp_path / "seed.jsonl", 600)
    spec = {"recipe": "extract-from-dataset", "skill_set_name": "tickets", "max_skills": 20, "mode": "batch"}
    with seed.open("rb") as fh:
        response = keyed.post(
            f"{api}/v1/skill-sets/extract", files={"file": ("t.jsonl", fh), "spec": (None, json.dumps(spec))}
        )
    assert response.status_code == 201, response.text
    status = wait_for(api, response.json()["id"], finished, timeout=120)
    assert status["state"] == "completed" and status["result"] == "tickets@1", status
    c = status["counters"]
    assert c["accepted"] + c["rejected"] == 600 and c["accepted"] > 550, c
    stats = fake.stats()
    assert stats["requests"] == 0 and stats["batch_rebilled"] == 0 and stats["batches_created"] >= 3, stats
    assert c["llm_calls"] == stats["batch_lines_billed"]
    assert abs(c["cost_usd"] - expected_cost(stats)) < 1e-5


def test_math_job_in_batch_mode_with_votes(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """MATH^2's calls (question, validations, identical solves for the vote) are distinct lines, each billed once."""
    from tests.workers.test_math import MATH_SET  # the recipe's own test skill set

    fake = fake_llm(batch_latency_s=0.3)
    api, _ = batch_stack(processes, fake)
    keyed.post(f"{api}/v1/skill-sets", json=MATH_SET).raise_for_status()
    spec = {"recipe": "math", "skill_set": "mathskills@1", "count": 6, "seed": 2, "mode": "batch", "chunk_size": 6}
    job_id = submit(api, **spec)
    status = wait_for(api, job_id, settled, timeout=180)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 6, status
    stats = fake.stats()
    assert stats["requests"] == 0 and stats["batch_rebilled"] == 0, stats
    assert c["llm_calls"] == stats["batch_lines_billed"] and c["llm_calls"] >= 6 * 5, (c, stats)
    assert abs(c["cost_usd"] - expected_cost(stats)) < 1e-5


def test_files_are_split_at_the_endpoints_bounds(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(batch_latency_s=0.3)
    api, _ = batch_stack(processes, fake, batch_max_requests=40, batch_max_mb=0.01)  # 10 KiB a file
    prompts = [f"Give me one word for the number {i}." for i in range(100)]
    job_id = submit(api, recipe="prompts", prompts=prompts, mode="batch", chunk_size=100)
    status = wait_for(api, job_id, settled, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 100, status
    stats = fake.stats()
    assert stats["batch_lines_billed"] == 100 and stats["batch_rebilled"] == 0
    store = sync_redis.Redis.from_url(REDIS_URL)
    counters = {k.decode(): int(v) for k, v in store.hgetall(f"skillmix:job:{job_id}:counters").items()}
    assert stats["batches_created"] == counters["batches_done"] >= 3, (stats, counters)  # 40 lines / 10 KiB bound
    assert counters["batch_rounds"] == 1  # one gathering, split: one round

"""One rate limit for the whole fleet: real worker processes, one fake endpoint, limits kept in Redis."""

import time
from typing import Any

import redis as sync_redis
from arq.connections import ArqRedis

from store import keys
from store.stats import stat_field
from tests import keyed
from tests.conftest import REDIS_URL, TIMING, Processes, service_env
from tests.test_end_to_end import finished, submit, wait_for

pytestmark = TIMING


def prompts(n: int, tag: str = "") -> list[str]:
    return [f"Fleet test {tag}{i}: one sentence about the number {i}." for i in range(n)]


def stack(processes: Processes, fake: Any, workers: int, **endpoint: Any) -> str:
    settings = service_env({"fake": fake.endpoint_settings(**endpoint)})
    api = processes.api(settings)
    for _ in range(workers):
        processes.worker(settings)
    return api


def run_prompts(api: str, n: int, tag: str = "") -> str:
    return submit(api, recipe="prompts", prompts=prompts(n, tag), dedup={"exact": False, "near": False})


def test_four_workers_given_the_full_limit_stay_under_it(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """Each worker is told the endpoint's whole rpm; one process-local limiter each would send 4x (49.7% 429s
    with 2 workers before the fleet limiter)."""
    fake = fake_llm(rpm=1200, latency_ms=100)
    api = stack(processes, fake, workers=4, rpm=1200)
    start = time.monotonic()
    job_id = run_prompts(api, 300)
    status = wait_for(api, job_id, finished, timeout=120)
    elapsed = time.monotonic() - start
    assert status["state"] == "completed", status
    assert status["counters"]["accepted"] == 300
    stats = fake.stats()
    assert stats["rate_limited"] <= 3, stats  # <= 1% of the calls
    assert stats["requests"] == status["counters"]["llm_calls"]
    assert elapsed >= (300 - 20) / 20 * 0.9, elapsed  # 20/s with a 1 s burst: nobody ran ahead of the limit


def test_a_429_on_one_worker_pauses_every_worker(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=50)
    api = stack(processes, fake, workers=3, rpm=1200)
    job_id = run_prompts(api, 200)
    wait_for(api, job_id, lambda s: s["counters"]["llm_calls"] >= 40, timeout=60)
    fake.configure(storm=1, storm_retry_after_s=3.0)  # the next request, whoever sends it, gets a 429
    deadline = time.monotonic() + 10
    while (stats := fake.stats())["rate_limited"] < 1:
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    at_429 = stats["requests"]
    time.sleep(2.0)
    during = fake.stats()["requests"] - at_429
    # calls already being written when the 429 arrived may still land; nothing booked later does
    assert during <= 6, during  # at 20/s, 40 calls would have gone out in these 2 s
    time.sleep(1.5)
    assert fake.stats()["requests"] - at_429 > during  # and the fleet carries on after the cool-down
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 200, status
    assert status["counters"]["rate_limited"] == 1


def test_a_limit_learned_from_headers_applies_to_every_worker(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """Configured at 6,000 rpm; the provider says 600 in x-ratelimit-limit-requests: the fleet paces at 600."""
    fake = fake_llm(rpm=600, latency_ms=50, ratelimit_headers=True)
    api = stack(processes, fake, workers=2, rpm=6000)
    warm = run_prompts(api, 10, "warm")
    assert wait_for(api, warm, finished, timeout=60)["state"] == "completed"
    limits = keyed.get(f"{api}/v1/endpoints/fake").json()
    assert limits["learned"]["rpm"] == 600 and limits["effective"]["rpm"] == 600, limits
    before = fake.stats()["rate_limited"]
    start = time.monotonic()
    job_id = run_prompts(api, 100)
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 100, status
    assert fake.stats()["rate_limited"] - before <= 2
    assert time.monotonic() - start >= (100 - 10) / 10 * 0.85  # paced at 10/s, not at the configured 100/s


def test_limits_changed_at_run_time_apply_within_a_second(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=20)
    api = stack(processes, fake, workers=2, rpm=3000)
    assert keyed.patch(f"{api}/v1/endpoints/nope", json={"rpm": 10}, key=keyed.ADMIN).status_code == 404
    bad = keyed.patch(f"{api}/v1/endpoints/fake", json={"rpm": 0}, key=keyed.ADMIN)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "rpm"
    job_id = run_prompts(api, 3000)
    wait_for(api, job_id, lambda s: s["counters"]["llm_calls"] >= 100, timeout=60)
    response = keyed.patch(f"{api}/v1/endpoints/fake", json={"rpm": 300}, key=keyed.ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["runtime"]["rpm"] == 300 and response.json()["effective"]["rpm"] == 300
    time.sleep(1.0)  # within a second every worker paces at 5/s
    r1 = fake.stats()["requests"]
    time.sleep(3.0)
    sent = fake.stats()["requests"] - r1
    assert sent <= 5 * 3 + 5 + 2, sent  # 3 s at 5/s plus at most the 1 s burst; 3,000 rpm would be 150
    restored = keyed.patch(f"{api}/v1/endpoints/fake", json={"reset": True}, key=keyed.ADMIN).json()
    assert restored["runtime"] == {"rpm": None, "tpm": None} and restored["effective"]["rpm"] == 3000
    keyed.post(f"{api}/v1/jobs/{job_id}/cancel")


def test_adaptive_concurrency_keeps_a_queueing_server_near_its_capacity(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """A server that queues (capacity 4) instead of answering 429: two workers, each allowed 32 in flight,
    share one AIMD limit that stays near what the server can take."""
    fake = fake_llm(rpm=0, latency_ms=100, capacity=4)
    api = stack(processes, fake, workers=2, max_concurrency=32, concurrency="adaptive")
    job_id = run_prompts(api, 300)
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 300, status
    assert fake.stats()["max_in_flight"] <= 16, fake.stats()  # fixed concurrency would put up to 64 in flight
    gauge = sync_redis.Redis.from_url(REDIS_URL).hget(keys.GAUGES, stat_field("adaptive_concurrency", "fake"))
    assert gauge is not None and 1 <= float(gauge) <= 16, gauge  # what /metrics exports

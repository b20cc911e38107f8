"""``GET /metrics`` of a real API process and a real worker's metrics port, while a real job runs.

The fleet counters must equal the job's counters (and the fake endpoint's request count), move between
scrapes, and carry ``skillmix:stats`` / ``skillmix:gauges`` as labelled series; the worker's request histogram
must count every call it made, by outcome; its JSON log lines must carry the job id.
"""

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families

from schemas.batches import BatchRecord
from schemas.jobs import JobRecord, JobState, PromptsJobSpec
from service.ports import free_port
from service.routes.metrics import read_fleet, render
from store import keys, records, stats
from store.batches import Group, group_member
from tests import keyed
from tests.conftest import Processes
from tests.test_end_to_end import finished, start_stack, submit, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """Every sample of a Prometheus text page, by (name, sorted labels), and each family's type."""
    response = keyed.get(url, timeout=10, key=keyed.ADMIN)  # fleet metrics: an admin key
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Retry ``check`` until it stops raising AssertionError (in-flight calls settle after completion)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


async def test_metrics_follow_a_real_job(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=6000, latency_ms=10, refusal_rate=0.15, exact_dup_rate=0.1)
    fake.configure(storm=2, fail_next=1)  # two 429s, then a 503: every outcome but timeout is seen
    metrics_port = free_port()
    api = start_stack(processes, fake, SKILLMIX_METRICS_PORT=str(metrics_port), SKILLMIX_LOG_FORMAT="json")
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"

    before, types = scrape(f"{api}/metrics")
    assert value(before, "skillmix_llm_calls_total") == 0
    assert value(before, "skillmix_items_accepted_total") == 0
    for state in JobState:  # every state is exported, zeros included
        assert value(before, "skillmix_jobs", state=state.value) == 0
    assert types["skillmix_jobs"] == "gauge" and types["skillmix_llm_calls"] == "counter"
    assert value(before, "skillmix_queue_depth") == 0

    await stats.add(redis, "test_probe", "fake", 1.5)
    await stats.set_gauge(redis, "test_level", "fake", 7)
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=20, seed=5)
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed", status
    await stats.add(redis, "test_probe", "fake", 2.0)

    def settled() -> tuple[Samples, Samples, dict[str, Any]]:
        """API scrape, worker scrape and job counters once they agree with the endpoint's request count."""
        fleet, _ = scrape(f"{api}/metrics")
        worker, _ = scrape(worker_metrics)
        c = keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]
        requests = fake.stats()["requests"]
        assert c["llm_calls"] == requests == value(fleet, "skillmix_llm_calls_total")
        assert total(worker, "skillmix_llm_request_seconds_count", endpoint="fake") == requests
        assert value(worker, "skillmix_llm_in_flight", endpoint="fake") == 0
        return fleet, worker, c

    after, worker, c = eventually(settled)
    assert c["llm_calls"] > 0 and c["accepted"] == 20

    # fleet counters equal the job's, and moved between the scrapes
    assert value(after, "skillmix_items_accepted_total") == c["accepted"] == 20
    assert value(after, "skillmix_llm_retries_total") == c["retries"] >= 3
    assert value(after, "skillmix_llm_rate_limited_total") == c["rate_limited"] >= 2
    assert value(after, "skillmix_llm_tokens_total", kind="prompt") == c["prompt_tokens"] > 0
    assert value(after, "skillmix_llm_tokens_total", kind="completion") == c["completion_tokens"] > 0
    assert value(after, "skillmix_cost_usd_total") == c["cost_usd"]
    rejected = {dict(lbl)["reason"]: v for (n, lbl), v in after.items() if n == "skillmix_items_rejected_total"}
    assert rejected == c["rejected_by_reason"] and rejected.get("refusal", 0) > 0, rejected
    assert value(after, "skillmix_jobs", state="completed") == 1
    assert sum(v for (n, _), v in after.items() if n == "skillmix_jobs") == 1
    for name in ("skillmix_llm_calls_total", "skillmix_items_accepted_total"):
        assert value(after, name) > value(before, name)

    # the generic stats contract: labelled counters and gauges, moving as they are written
    assert value(after, "skillmix_test_probe_total", endpoint="fake") == 3.5
    assert value(after, "skillmix_test_level", endpoint="fake") == 7
    await stats.add(redis, "test_probe", "fake", 0.5)
    again, _ = scrape(f"{api}/metrics")
    assert value(again, "skillmix_test_probe_total", endpoint="fake") == 4.0

    # the worker's own histogram: every call, by outcome
    count = "skillmix_llm_request_seconds_count"
    assert value(worker, count, endpoint="fake", outcome="429") == c["rate_limited"] == fake.stats()["rate_limited"]
    assert value(worker, count, endpoint="fake", outcome="error") >= 1  # the 503
    assert value(worker, count, endpoint="fake", outcome="ok") > 0
    assert value(worker, "skillmix_llm_request_seconds_bucket", endpoint="fake", outcome="ok", le="+Inf") > 0
    assert total(worker, "skillmix_llm_request_seconds_sum", endpoint="fake") > 0

    # JSON logs: every JSON line is an object with the fields, and the chunk's lines carry the job id
    log_text = "\n".join(p.read_text() for p in processes.tmp.glob("worker-*.log"))
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    with_job = [line for line in lines if line.get("job_id") == job_id]
    assert any("retry" in line["msg"] for line in with_job), log_text[-3000:]


async def test_cost_of_a_job_without_exact_cost_uses_its_record_prices(redis: ArqRedis) -> None:
    """A job whose counters predate ``cost_micro_usd`` is priced from its record, as GET /v1/jobs/{id} does."""
    spec = PromptsJobSpec(recipe="prompts", prompts=["a", "b"], count=2)
    record = JobRecord(
        team=keyed.TEAM,
        id="priced",
        spec=spec,
        endpoint="fake",
        model="m",
        chunk_size=8,
        usd_per_mtok_prompt=2.5,
        usd_per_mtok_completion=10.0,
        created_at=datetime.now(UTC),
    )
    await records.create_job(redis, record)
    await redis.hset(keys.counters("priced"), mapping={"prompt_tokens": 123_457, "completion_tokens": 9_876})
    status = await records.get_status(redis, "priced")
    assert status is not None and status.counters.cost_usd > 0
    snapshot = await read_fleet(redis)
    assert snapshot.cost_usd == status.counters.cost_usd
    assert snapshot.jobs_by_state == {"queued": 1}
    page = render(snapshot).decode()
    assert f"skillmix_cost_usd_total {status.counters.cost_usd}" in page
    await redis.hset(keys.counters("priced"), "cost_micro_usd", 4_000_000)  # the exact counter wins once there
    status = await records.get_status(redis, "priced")
    assert status is not None and (await read_fleet(redis)).cost_usd == 4.0 == status.counters.cost_usd


async def test_fields_breaking_the_stats_contract_are_skipped(redis: ArqRedis) -> None:
    await redis.hset(keys.STATS, mapping={"no_separator": 1, "llm_calls|x": 5, "ok_metric|e": "NaNx", "fine|e": 2})
    await redis.hset(keys.GAUGES, mapping={"fine|e": 3, "level|e": 4})  # a gauge may not reuse a counter's name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render(await read_fleet(redis)).decode())
        for s in family.samples
    }
    assert samples[("skillmix_fine_total", (("endpoint", "e"),))] == 2
    assert samples[("skillmix_level", (("endpoint", "e"),))] == 4
    assert ("skillmix_fine", (("endpoint", "e"),)) not in samples
    assert samples[("skillmix_llm_calls_total", ())] == 0  # a stats field cannot shadow a built-in counter
    assert not any(name.startswith(("skillmix_no_separator", "skillmix_ok_metric")) for name, _ in samples)


async def test_batch_gauges_count_open_batches_and_gathering_lines_by_endpoint(redis: ArqRedis) -> None:
    for bid, endpoint in (("b1", "hosted"), ("b2", "hosted"), ("b3", "other")):
        await redis.set(keys.batch(bid), BatchRecord(id=bid, job_id="j", endpoint=endpoint).model_dump_json())
        await redis.zadd(keys.BATCHES_OPEN, {bid: 0})
    await redis.zadd(keys.BATCHES_OPEN, {"gone": 0})  # its record is gone: counted, not labelled by a guess
    for job, endpoint, n in (("j", "hosted", 3), ("k", "hosted", 2), ("k", "other", 1)):
        await redis.rpush(Group(job, endpoint).open, *["{}"] * n)
        await redis.zadd(keys.BATCHES_GATHERING, {group_member(job, endpoint): 0})
    page = render(await read_fleet(redis)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert value(samples, "skillmix_batches_open", endpoint="hosted") == 2
    assert value(samples, "skillmix_batches_open", endpoint="other") == 1
    assert value(samples, "skillmix_batches_open", endpoint=stats.UNSCANNED) == 1
    assert value(samples, "skillmix_batch_lines_gathering", endpoint="hosted") == 5
    assert value(samples, "skillmix_batch_lines_gathering", endpoint="other") == 1
    await redis.hset(keys.GAUGES, "batches_open|hosted", 99)  # a worker's gauge cannot shadow the built-in one
    assert render(await read_fleet(redis)).decode().count('skillmix_batches_open{endpoint="hosted"}') == 1


async def test_batch_gauges_look_at_a_bounded_number_of_entries(redis: ArqRedis, monkeypatch: Any) -> None:
    monkeypatch.setattr(stats, "BATCH_SCAN", 2)
    for i in range(5):
        bid = f"b{i}"
        await redis.set(keys.batch(bid), BatchRecord(id=bid, job_id="j", endpoint="hosted").model_dump_json())
        await redis.zadd(keys.BATCHES_OPEN, {bid: i})
    snapshot = await read_fleet(redis)
    assert snapshot.batches_open == {"hosted": 2, stats.UNSCANNED: 3}  # the total stays exact

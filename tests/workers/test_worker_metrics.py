"""A worker's own metrics (request histogram by outcome, in flight, the metrics port) and its log lines."""

import asyncio
import io
import logging
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from schemas.llm import ChatMessage
from store.stats import parse_field, stat_field
from tests import keyed
from tests.raw_client import raw_client
from workers import logs, metrics
from workers.llm.client import RetryPolicy

HELLO = [ChatMessage(role="user", content="Say hello.")]


def count(endpoint: str, outcome: str) -> float:
    found = REGISTRY.get_sample_value("skillmix_llm_request_seconds_count", {"endpoint": endpoint, "outcome": outcome})
    return found or 0.0


async def test_each_request_that_left_is_timed_by_outcome(fake_llm: Any) -> None:
    fake = await fake_llm.astart(latency_ms=5)
    name = f"probe-{uuid.uuid4().hex[:8]}"  # its own label values: other tests' calls do not mix in
    fast_retry = RetryPolicy(base_s=0.01, cap_s=0.02, default_retry_after_s=0.05)
    async with raw_client(name, fake.endpoint_settings(timeout_s=0.5, max_retries=3), retry=fast_retry) as client:
        await fake.aconfigure(storm=1, storm_retry_after_s=0.05, fail_next=1, fail_status=500)
        await client.chat(HELLO, max_tokens=16)  # 429, then 500, then ok
        await fake.aconfigure(hang_next=1, hang_s=2.0)
        await client.chat(HELLO, max_tokens=16)  # no answer within 0.5 s, then ok

        async def refuse(attempt: int) -> None:
            raise RuntimeError("job stopped")

        with pytest.raises(RuntimeError):  # refused before its bytes left: not a request, not timed
            await client.chat(HELLO, max_tokens=16, on_send=refuse)
        assert client.stats.calls == 5
    assert (count(name, "429"), count(name, "error"), count(name, "timeout"), count(name, "ok")) == (1, 1, 1, 2)
    assert (await fake.astats())["requests"] == 5
    assert REGISTRY.get_sample_value("skillmix_llm_in_flight", {"endpoint": name}) == 0
    timed_out = REGISTRY.get_sample_value("skillmix_llm_request_seconds_sum", {"endpoint": name, "outcome": "timeout"})
    assert timed_out is not None and timed_out >= 0.45  # the timeout is timed at its deadline


async def test_in_flight_counts_requests_under_way(fake_llm: Any) -> None:
    fake = await fake_llm.astart(latency_ms=400)
    name = f"probe-{uuid.uuid4().hex[:8]}"
    async with raw_client(name, fake.endpoint_settings()) as client:
        calls = [asyncio.create_task(client.chat(HELLO, max_tokens=8)) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert REGISTRY.get_sample_value("skillmix_llm_in_flight", {"endpoint": name}) == 3
        await asyncio.gather(*calls)
    assert REGISTRY.get_sample_value("skillmix_llm_in_flight", {"endpoint": name}) == 0
    assert count(name, "ok") == 3


def test_helpers_for_other_modules_label_once() -> None:
    metrics.replay_hit("helper-probe", 2)
    metrics.limiter_waited("helper-probe", 0.3)
    assert REGISTRY.get_sample_value("skillmix_replay_hits_total", {"endpoint": "helper-probe"}) == 2
    assert REGISTRY.get_sample_value("skillmix_limiter_wait_seconds_count", {"endpoint": "helper-probe"}) == 1
    assert stat_field("limiter_wait_seconds", "openai") == "limiter_wait_seconds|openai"
    assert parse_field("limiter_wait_seconds|a|b") == ("limiter_wait_seconds", "a|b")
    for bad in ("Bad-Name", "x_total", ""):
        with pytest.raises(ValueError):
            stat_field(bad, "e")


def test_metrics_port_taken_is_logged_and_a_free_one_serves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "_serving", None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="workers.metrics"):
            assert metrics.serve(port) is False
        assert f":{port} unavailable" in caplog.text
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert metrics.serve(free) is True
    assert metrics.serve(free + 1) is True  # once per process: a restarted worker keeps the first server
    metrics.RequestMetrics("served-probe").ok.observe(0.2)
    text = keyed.get(f"http://127.0.0.1:{free}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["skillmix_llm_request_seconds"].type == "histogram"
    assert any(s.labels.get("endpoint") == "served-probe" for s in families["skillmix_llm_request_seconds"].samples)
    assert "process_cpu_seconds" in families  # the process collectors come with the default registry


@pytest.fixture
def root_logging() -> Iterator[io.StringIO]:
    """What ``logs.configure`` writes, with the process's logging put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in logs.QUIET_LOGGERS})
    out = io.StringIO()
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


async def test_json_lines_carry_the_job_id_of_their_context(root_logging: io.StringIO) -> None:
    logs.configure("json", "INFO", root_logging)
    log = logging.getLogger("tests.logs")
    log.info("before any job")
    with logs.job_context("job-1"):

        async def in_a_task() -> None:
            log.warning("inside %s", "a task")

        await asyncio.create_task(in_a_task())  # tasks started inside inherit the job id
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.info("after")
    logging.getLogger("httpx").info("HTTP Request: ...")  # one line per request: kept quiet
    lines = [orjson.loads(line) for line in root_logging.getvalue().splitlines()]
    assert [line.get("job_id") for line in lines] == [None, "job-1", "job-1", None]
    assert lines[1]["msg"] == "inside a task" and lines[1]["level"] == "WARNING" and lines[1]["logger"] == "tests.logs"
    assert "ValueError: boom" in lines[2]["exc"] and "exc" not in lines[0]
    assert lines[0]["ts"].endswith("+00:00")


def test_text_lines_tag_the_job(root_logging: io.StringIO) -> None:
    logs.configure("text", "INFO", root_logging)
    with logs.job_context("job-7"):
        logging.getLogger("tests.logs").info("hello")
    assert root_logging.getvalue().rstrip("\n").endswith("INFO tests.logs [job job-7]: hello")

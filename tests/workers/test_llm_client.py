"""LLMClient against the real fake server (subprocess, real sockets); MockTransport only where it cannot."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.settings import EndpointSettings
from tests.plugins.fake_llm import FakeLLMFactory
from tests.raw_client import raw_client
from workers.llm.client import LLMClient, RetryPolicy
from workers.llm.errors import (
    LLMBadRequest,
    LLMFatal,
    LLMMissingKey,
    LLMStatusError,
    LLMUnavailable,
)
from workers.llm.limits import EndpointLimiter

FAST = RetryPolicy(base_s=0.02, cap_s=0.2)
PROMPT = [ChatMessage(role="user", content="## Instruction\nWrite one about rivers.")]


def prompt(i: int) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=f"## Instruction\nWrite item {i}.")]


async def run_many(client: LLMClient, n: int) -> list[ChatResult]:
    return await asyncio.gather(*(client.chat(prompt(i), max_tokens=400) for i in range(n)))


def total(results: list[ChatResult]) -> Usage:
    usage = Usage()
    for result in results:
        usage = usage.add(result.usage)
    return usage


async def test_success_reports_usage(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart()
    async with raw_client("fake", fake.endpoint_settings()) as client:
        result = await client.chat(PROMPT, max_tokens=400, seed=1)
        again = await client.chat(PROMPT, max_tokens=400, seed=1)
    assert result.content.startswith("## Instruction\n") and result.finish_reason == "stop"
    assert result.model == "fake-model" and again.content == result.content
    assert result.usage == Usage(
        prompt_tokens=len(PROMPT[0].content.split()),
        completion_tokens=len(result.content.split()),
        calls=1,
        retries=0,
        rate_limited=0,
    )
    assert client.stats == result.usage.add(again.usage)


async def test_stays_under_the_endpoint_rpm(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(rpm=1200)  # 20/s, bucket of 20
    started = time.monotonic()
    async with raw_client("fake", fake.endpoint_settings(max_concurrency=20), retry=FAST) as client:
        results = await run_many(client, 60)
    elapsed = time.monotonic() - started
    stats = await fake.astats()
    assert len(results) == 60 and stats["ok"] == 60
    assert stats["rate_limited"] <= 3, stats  # same rate both sides: new connections arrive late, bunched
    assert elapsed >= 1.8  # 20 at once, then 40 more at 20/s
    assert stats["max_rps_1s"] <= 41, stats


async def test_429_storm_is_survived(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(storm=20, storm_retry_after_s=0.5)
    started = time.monotonic()
    async with raw_client("fake", fake.endpoint_settings(max_concurrency=30), retry=FAST) as client:
        results = await run_many(client, 30)
    stats = await fake.astats()
    assert len(results) == 30 and stats["ok"] == 30
    assert stats["rate_limited"] == 20 and stats["requests"] == 50, stats  # one 429 per storm slot, no more
    assert total(results).rate_limited == 20 and client.stats.calls == 50
    assert time.monotonic() - started >= 0.5  # retries waited for retry-after-ms


async def test_endpoint_wide_pause_holds_back_requests_not_yet_sent(fake_llm: FakeLLMFactory) -> None:
    # 429 for everything during 1 s. 30 calls through 5 connections: only the first wave can see a 429;
    # without the shared pause each of the 30 calls would get its own (>= 30).
    fake = await fake_llm.astart()
    async with raw_client("fake", fake.endpoint_settings(max_concurrency=5), retry=FAST) as client:
        await fake.aconfigure(storm_s=1.0)
        results = await run_many(client, 30)
    stats = await fake.astats()
    assert len(results) == 30 and stats["ok"] == 30
    assert stats["rate_limited"] <= 10, stats


async def test_5xx_are_retried(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(error_rate=0.3, fault_seed=7)
    async with raw_client("fake", fake.endpoint_settings(max_concurrency=10, max_retries=8), retry=FAST) as client:
        results = await run_many(client, 30)
    stats = await fake.astats()
    assert len(results) == 30 and stats["errors"] > 0
    assert total(results).retries == stats["errors"] and client.stats.calls == stats["requests"]


async def test_hang_times_out_then_succeeds(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(hang_next=1, hang_s=5)
    started = time.monotonic()
    async with raw_client("fake", fake.endpoint_settings(timeout_s=0.5), retry=FAST) as client:
        result = await client.chat(PROMPT, max_tokens=100)
    assert result.usage.calls == 2 and result.usage.retries == 1
    assert time.monotonic() - started < 2.0
    assert (await fake.astats())["hung"] == 1


async def test_malformed_bodies_are_retried(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(malformed_next=2)
    async with raw_client("fake", fake.endpoint_settings(), retry=FAST) as client:
        result = await client.chat(PROMPT, max_tokens=100)
    assert result.usage.calls == 3 and result.content


async def test_bad_key_is_fatal_at_once(fake_llm: FakeLLMFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await fake_llm.astart(require_key="sekrit")
    monkeypatch.setenv("FAKE_KEY", "wrong")
    async with raw_client("fake", fake.endpoint_settings(api_key_env="FAKE_KEY"), retry=FAST) as client:
        with pytest.raises(LLMFatal) as caught:
            await client.chat(PROMPT, max_tokens=100)
    assert caught.value.status_code == 401 and caught.value.usage == Usage(calls=1)
    assert (await fake.astats())["requests"] == 1
    monkeypatch.setenv("FAKE_KEY", "sekrit")
    async with raw_client("fake", fake.endpoint_settings(api_key_env="FAKE_KEY")) as client:
        assert (await client.chat(PROMPT, max_tokens=100)).content
    monkeypatch.delenv("FAKE_KEY")
    with pytest.raises(LLMMissingKey, match="FAKE_KEY"):
        raw_client("fake", fake.endpoint_settings(api_key_env="FAKE_KEY"))


async def test_bad_request_fails_the_item_at_once(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(max_context_words=50)
    async with raw_client("fake", fake.endpoint_settings(), retry=FAST) as client:
        with pytest.raises(LLMBadRequest) as caught:
            await client.chat(PROMPT, max_tokens=100)  # 5 prompt words + 100 > 50
        assert caught.value.status_code == 400 and "context_length_exceeded" in caught.value.body
        await fake.aconfigure(max_context_words=0, fail_next=1, fail_status=422)
        with pytest.raises(LLMBadRequest):
            await client.chat(PROMPT, max_tokens=100)
    assert (await fake.astats())["requests"] == 2


async def test_retries_exhausted_is_unavailable(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(fail_next=100, fail_status=503)
    async with raw_client("fake", fake.endpoint_settings(max_retries=2), retry=FAST) as client:
        with pytest.raises(LLMUnavailable) as caught:
            await client.chat(PROMPT, max_tokens=100)
    cause = caught.value.__cause__
    assert isinstance(cause, LLMStatusError) and cause.status_code == 503
    assert caught.value.usage == Usage(calls=3, retries=2) and client.stats.calls == 3
    assert (await fake.astats())["requests"] == 3


# --- MockTransport: what a real server cannot easily produce ---------------------------------------


def completion(content: str = "ok") -> httpx.Response:
    body = {"model": "m", "choices": [{"message": {"content": content}, "finish_reason": "stop"}]}
    return httpx.Response(200, json=body | {"usage": {"prompt_tokens": 3, "completion_tokens": 1}})


def mock_client(handler: Any, **settings: Any) -> LLMClient:
    endpoint = EndpointSettings.model_validate({"base_url": "http://llm.test/v1", "model": "m"} | settings)
    return raw_client("mock", endpoint, transport=httpx.MockTransport(handler), retry=FAST)


async def test_request_shape_with_json_schema() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://llm.test/v1/chat/completions"
        seen.append(json.loads(request.content))
        return completion('{"instruction": "x"}')

    schema = {"type": "object", "properties": {"instruction": {"type": "string"}}}
    async with mock_client(handler) as client:
        await client.chat(PROMPT, max_tokens=50, temperature=0.2, top_p=0.9, seed=5, json_schema=schema)
        await client.chat(PROMPT, max_tokens=50)
    assert seen[0] == {
        "model": "m",
        "messages": [{"role": "user", "content": PROMPT[0].content}],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 5,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": schema},
        },
    }
    assert "seed" not in seen[1] and "response_format" not in seen[1]


async def test_429_connection_error_and_empty_choice_are_retried() -> None:
    replies: list[httpx.Response | Exception] = [
        httpx.Response(429, headers={"retry-after-ms": "200", "retry-after": "7"}),
        httpx.ConnectError("refused"),
        httpx.Response(200, content=b'{"choices": [{"message": {"role": "assistant"}}]}'),  # no content
        completion(),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    started = time.monotonic()
    async with mock_client(handler) as client:
        result = await client.chat(PROMPT, max_tokens=10)
    assert 0.2 <= time.monotonic() - started < 1.0  # retry-after-ms wins over retry-after
    # the refused connection sent nothing, so it is no call: three requests reached the endpoint
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=1, calls=3, retries=2, rate_limited=1)


async def test_retry_after_forms_and_quota_429() -> None:
    def no_quota(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"code": "insufficient_quota", "message": "pay up"}})

    async with mock_client(no_quota) as client:
        in_30s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        assert 28 <= client._retry_after(httpx.Headers({"retry-after": in_30s})) <= 30
        assert client._retry_after(httpx.Headers({"retry-after": "2.5"})) == 2.5
        assert client._retry_after(httpx.Headers({"retry-after": "soon"})) == FAST.default_retry_after_s
        assert client._retry_after(httpx.Headers({"retry-after": "99999"})) == FAST.max_retry_after_s
        with pytest.raises(LLMFatal) as caught:  # out of credit: waiting will not help
            await client.chat(PROMPT, max_tokens=10)
    assert caught.value.status_code == 429 and caught.value.usage == Usage(calls=1)


async def test_limiter_pause_and_rpm_burst() -> None:
    limiter = EndpointLimiter(rpm=600, tpm=10**9, max_concurrency=100)  # 10/s, burst of 10
    started = time.monotonic()
    times: list[float] = []

    async def one() -> None:
        async with limiter.slot(10):
            times.append(time.monotonic() - started)

    await asyncio.gather(*(one() for _ in range(15)))
    assert sum(t < 0.05 for t in times) == 10 and max(times) >= 0.45  # burst ~1 s worth, then 10/s
    await limiter.pause(0.3)
    await limiter.pause(0.1)  # a shorter pause never shortens the current one
    paused_at = time.monotonic()
    await one()
    assert time.monotonic() - paused_at >= 0.28


async def test_limiter_charges_tokens_beyond_the_estimate() -> None:
    limiter = EndpointLimiter(rpm=6000, tpm=60_000, max_concurrency=4)  # 1,000 tokens/s, bucket of 1,000
    started = time.monotonic()
    async with limiter.slot(5_000):  # clamped to the bucket: does not wait
        pass
    assert time.monotonic() - started < 0.05
    await limiter.settle(estimated=5_000, actual=1_300)  # reserved 1,000, used 1,300: 300 more at 1,000/s
    assert time.monotonic() - started >= 0.25

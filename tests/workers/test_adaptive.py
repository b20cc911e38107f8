"""Adaptive concurrency against a real Redis and the fake endpoint over HTTP, queueing like vLLM.

Two ``AdaptiveConcurrency`` instances on separate Redis connections and HTTP clients stand for two worker
processes sharing one limit.
"""

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from arq.connections import ArqRedis
from pydantic import ValidationError
from redis.asyncio import Redis

from schemas.settings import EndpointSettings
from store import keys
from tests.conftest import REDIS_URL, TIMING
from tests.plugins.fake_llm import FakeLLM, FakeLLMFactory
from workers.llm.adaptive import AdaptiveConcurrency, gauge_field

# the limit grows and falls with measured latency: a machine busy with other tests slows its growth
pytestmark = TIMING

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 20}
HTTP_TIMEOUT_S = 10.0


@dataclass
class Load:
    """What the driving tasks saw: (finish time, latency) of successes, and how many attempts each side made."""

    ok: list[tuple[float, float]] = field(default_factory=list)
    failed: int = 0
    calls: list[int] = field(default_factory=lambda: [0, 0])


@pytest.fixture
async def connections(redis: ArqRedis) -> AsyncIterator[list[Redis]]:
    """Two more Redis connections (``redis`` flushes the test db around the test)."""
    conns = [Redis.from_url(REDIS_URL, socket_timeout=5.0) for _ in range(2)]
    yield conns
    for conn in conns:
        await conn.aclose()


async def drive(ac: AdaptiveConcurrency, http: httpx.AsyncClient, url: str, side: int, load: Load, stop: float) -> None:
    """One caller: attempts back to back until ``stop``, each inside ``hold`` and reporting its outcome."""
    while time.monotonic() < stop:
        async with ac.hold() as lease:
            started = time.monotonic()
            response = await http.post(url, json=BODY)
            latency = time.monotonic() - started
            load.calls[side] += 1
            if response.status_code == 200:
                lease.ok(latency)
                load.ok.append((time.monotonic(), latency))
            else:
                lease.overloaded()
                load.failed += 1


async def run_fleet(
    fake: FakeLLM,
    conns: list[Redis],
    *,
    max_concurrency: int,
    callers: int,
    seconds: float,
    sample_s: float = 0.05,
    during: float | None = None,
    then: dict[str, int] | None = None,
) -> tuple[Load, list[tuple[float, float]]]:
    """``callers`` tasks on each of two instances for ``seconds``; the shared limit sampled every ``sample_s``.

    ``then``: a fake config change applied ``during`` seconds in.
    """
    acs = [AdaptiveConcurrency(conn, "vllm", max_concurrency, lease_ttl_s=20.0) for conn in conns]
    load, samples = Load(), []
    limits = httpx.Limits(max_connections=4 * callers, max_keepalive_connections=4 * callers)
    t0 = time.monotonic()
    stop = t0 + seconds
    async with (
        httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, limits=limits) as one,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, limits=limits) as two,
    ):
        url = fake.base_url + "/chat/completions"
        tasks = [
            asyncio.create_task(drive(ac, http, url, side, load, stop))
            for side, (ac, http) in enumerate(zip(acs, (one, two), strict=True))
            for _ in range(callers)
        ]
        changed = False
        while time.monotonic() < stop:
            state = await acs[0].state()
            if state.limit is not None:
                samples.append((time.monotonic() - t0, state.limit))
            if then and not changed and during is not None and time.monotonic() - t0 >= during:
                await fake.aconfigure(**then)
                changed = True
            await asyncio.sleep(sample_s)
        await asyncio.gather(*tasks)
    for ac in acs:
        await ac.aclose()
    for i, (t, latency) in enumerate(load.ok):
        load.ok[i] = (t - t0, latency)
    return load, samples


async def test_shared_limit_converges_to_a_queueing_servers_capacity(
    fake_llm: FakeLLMFactory, connections: list[Redis], redis: ArqRedis
) -> None:
    # 6 served at once, 100 ms each: 60 calls/s at best; 48 callers would queue 800 ms without the limit.
    fake = await fake_llm.astart(capacity=6, latency_ms=100)
    load, samples = await run_fleet(fake, connections, max_concurrency=32, callers=24, seconds=10.0)
    settled = [limit for t, limit in samples if t >= 3.0]
    latencies = [latency for t, latency in load.ok if t >= 3.0]
    rate = len(latencies) / (load.ok[-1][0] - 3.0)
    median = statistics.median(latencies)
    stats = await fake.astats()
    print(
        f"limit after 3 s: min {min(settled):.2f} median {statistics.median(settled):.2f} max {max(settled):.2f}; "
        f"latency median {median * 1000:.0f} ms p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:.0f} ms; "
        f"{rate:.1f} calls/s of 60; fake max in flight {stats['max_in_flight']}; calls per side {load.calls}"
    )
    # about 6-11 on a quiet machine; bounds with room for a loaded one
    assert 4 <= statistics.median(settled) <= 11, settled
    assert sum(3 <= limit <= 12 for limit in settled) >= 0.9 * len(settled), settled
    assert max(settled) <= 16, settled
    assert stats["max_in_flight"] <= 32 and stats["errors"] == 0
    assert median < 3 * 0.100
    assert rate >= 0.7 * 60  # the limit does not starve the server either
    assert min(load.calls) > 0.25 * sum(load.calls)  # both "processes" got their share
    gauge = await redis.hget(keys.GAUGES, gauge_field("vllm"))
    assert gauge is not None and 1 <= float(gauge) <= 32


async def test_limit_is_capped_by_max_concurrency(fake_llm: FakeLLMFactory, connections: list[Redis]) -> None:
    fake = await fake_llm.astart(latency_ms=50)  # never queues: latency stays flat, so the limit only grows
    _, samples = await run_fleet(fake, connections, max_concurrency=8, callers=12, seconds=5.0)
    stats = await fake.astats()
    assert max(limit for _, limit in samples) == 8  # it grows to the cap and never past it
    # (not "stays at 8 to the end": on a machine loaded by other tests a latency spike may cut it, as it should)
    assert 7 <= stats["max_in_flight"] <= 8


async def test_errors_cut_the_limit(fake_llm: FakeLLMFactory, connections: list[Redis]) -> None:
    fake = await fake_llm.astart(latency_ms=50)
    load, samples = await run_fleet(
        fake, connections, max_concurrency=16, callers=12, seconds=5.5, sample_s=0.01, during=3.0,
        then={"fail_next": 16},
    )  # fmt: skip
    before = [limit for t, limit in samples if t < 3.0]
    after = [limit for t, limit in samples if t >= 3.0]
    print(f"limit before the 503s {before[-1]:.2f}, lowest after {min(after):.2f}, failures {load.failed}")
    assert before[-1] >= 8  # it grew from 4 (16 on a quiet machine)
    assert load.failed == 16
    assert min(after) <= before[-1] * 0.7 + 0.01
    assert after[-1] > min(after) + 2  # and it grows back


async def test_one_cut_per_round(redis: ArqRedis) -> None:
    """Overloads of attempts admitted before a cut do not cut again: the cut already answered them."""
    ac = AdaptiveConcurrency(redis, "vllm", 10, start_limit=10)
    holds = [ac.hold() for _ in range(8)]
    leases = [await hold.__aenter__() for hold in holds]
    for hold, lease in zip(holds, leases, strict=True):  # a round of 8 failures, all sent before any answer
        lease.overloaded()
        await hold.__aexit__(None, None, None)
    assert (await ac.state()).limit == pytest.approx(7.0)
    await asyncio.sleep(0.002)  # cuts and admissions are stamped in Redis milliseconds: admitted AFTER the cut
    async with ac.hold() as lease:  # sent after the cut: it is news
        lease.overloaded()
    assert (await ac.state()).limit == pytest.approx(4.9)
    for _ in range(20):
        await asyncio.sleep(0.002)
        async with ac.hold() as lease:
            lease.overloaded()
    assert (await ac.state()).limit == 1  # never below 1


async def test_leases_of_a_killed_holder_expire(redis: ArqRedis, connections: list[Redis]) -> None:
    killed = AdaptiveConcurrency(connections[0], "vllm", 2, lease_ttl_s=1.0)
    for _ in range(2):  # take every place and never give them back, as a SIGKILLed worker would
        await killed._acquire()
    await connections[0].aclose()
    survivor = AdaptiveConcurrency(connections[1], "vllm", 2, lease_ttl_s=30.0)
    assert (await survivor.state()).in_flight == 2
    started = time.monotonic()
    async with survivor.hold():
        waited = time.monotonic() - started
        assert (await survivor.state()).in_flight == 1
    assert 0.7 <= waited <= 3.0, waited
    assert (await survivor.state()).in_flight == 0


async def test_cancelled_attempt_frees_its_place(redis: ArqRedis) -> None:
    ac = AdaptiveConcurrency(redis, "vllm", 4)
    entered = asyncio.Event()

    async def attempt() -> None:
        async with ac.hold():
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(attempt())
    await entered.wait()
    assert (await ac.state()).in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = await ac.state()
    assert state.in_flight == 0 and state.limit == 4  # no outcome reported: the limit learnt nothing


async def test_waiters_queue_behind_the_limit(redis: ArqRedis) -> None:
    ac = AdaptiveConcurrency(redis, "vllm", 2, start_limit=2)
    peak = current = 0

    async def attempt() -> None:
        nonlocal peak, current
        async with ac.hold() as lease:
            current += 1
            peak = max(peak, current)
            await asyncio.sleep(0.05)
            current -= 1
            lease.ok(0.05)

    started = time.monotonic()
    await asyncio.gather(*(attempt() for _ in range(10)))
    elapsed = time.monotonic() - started
    assert peak == 2
    assert 0.25 <= elapsed < 1.5  # 5 rounds of 50 ms; a waiter wakes as soon as a place frees
    assert (await ac.state()).in_flight == 0


async def test_fake_capacity_queues_requests(fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(capacity=2, latency_ms=100)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
        started = time.monotonic()
        responses = await asyncio.gather(*(http.post(fake.base_url + "/chat/completions", json=BODY) for _ in range(6)))
        elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert 0.3 <= elapsed < 1.0  # three rounds of two, not one round of six
    assert (await fake.astats())["max_in_flight"] == 6  # they were all there, waiting


def test_concurrency_setting() -> None:
    base = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    assert EndpointSettings.model_validate(base).concurrency == "fixed"
    assert EndpointSettings.model_validate(base | {"concurrency": "adaptive"}).concurrency == "adaptive"
    with pytest.raises(ValidationError, match="concurrency"):
        EndpointSettings.model_validate(base | {"concurrency": "dynamic"})

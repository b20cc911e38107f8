"""The fleet limiter against a real Redis: several limiters (as in several processes) share one rate."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from schemas.settings import EndpointSettings
from store import keys
from store.limits import effective_limits, signal_channel
from store.stats import stat_field
from tests.conftest import REDIS_URL
from workers.llm.errors import JobStopped
from workers.llm.fleet import (
    BURST_MS,
    SAFETY,
    TICK_S,
    FleetLimiter,
    LimitSignals,
    leaves_at,
    parse_reset,
)


def endpoint(rpm: int, tpm: int = 10_000_000) -> EndpointSettings:
    return EndpointSettings.model_validate(
        {"base_url": "http://127.0.0.1:9/v1", "model": "m", "rpm": rpm, "tpm": tpm, "max_concurrency": 64}
    )


@pytest_asyncio.fixture
async def redises(redis: Redis) -> AsyncIterator[list[Redis]]:
    """Separate connections per limiter, as separate worker processes would have."""
    clients = [Redis.from_url(REDIS_URL) for _ in range(3)]
    yield clients
    for c in clients:
        await c.aclose()


async def subscribed(redis: Redis, within: float = 10.0) -> None:
    """Until a ``LimitSignals`` listens on this database's channel (a fixed sleep is too short on a busy machine)."""
    channel = signal_channel(redis)
    deadline = time.monotonic() + within
    while (await redis.pubsub_numsub(channel))[0][1] < 1:
        assert time.monotonic() < deadline, "LimitSignals never subscribed"
        await asyncio.sleep(0.02)


async def take_times(limiter: FleetLimiter, n: int, tokens: int = 1) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        async with limiter.slot(tokens):
            times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(n)))
    return times


async def test_limiters_share_one_request_rate(redises: list[Redis]) -> None:
    # 1,200 rpm = 20/s, burst of 1 s: three limiters taking 60 calls together need ~ (60 - 20) / 19.4 s.
    limiters = [FleetLimiter(r, None, "ep-share", endpoint(1200)) for r in redises]
    start = time.monotonic()
    results = await asyncio.gather(*(take_times(lim, 20) for lim in limiters))
    times = sorted(t - start for ts in results for t in ts)
    rate = 1200 / 60 * SAFETY
    burst = rate * BURST_MS / 1000
    assert times[-1] >= (60 - burst - 1) / rate * 0.9  # one process alone would have allowed all 60 at once
    for i, t in enumerate(times):  # never ahead of what the shared bucket allows
        assert i + 1 <= burst + 1 + t * rate * 1.05, (i, t)


async def test_tokens_are_limited_and_settled(redises: list[Redis]) -> None:
    # tpm 6,000 = 100 tokens/s: 3 calls of 100 tokens fit the 1 s burst, more must wait
    a, b = (FleetLimiter(r, None, "ep-tok", endpoint(60_000, tpm=6000)) for r in redises[:2])
    start = time.monotonic()
    await take_times(a, 3, tokens=100)
    await take_times(b, 3, tokens=100)
    assert time.monotonic() - start >= 1.5  # ~ (600 - 100) tokens / 97 per s ≈ 5 s with no refund...
    # a refund of everything reserved brings the next call forward at once
    tat_before = float(await redises[0].hget(keys.limiter_tat("ep-tok"), "t") or 0)
    await a.settle(estimated=100, actual=0)
    await asyncio.sleep(0.2)
    tat_after = float(await redises[0].hget(keys.limiter_tat("ep-tok"), "t") or 0)
    assert tat_after < tat_before - 900  # 100 tokens at ~97/s ≈ 1,030 ms refunded


async def test_cooldown_from_one_limiter_holds_all(redises: list[Redis]) -> None:
    heard = LimitSignals(redises[2])
    heard.start()
    await subscribed(redises[0])
    a = FleetLimiter(redises[0], None, "ep-cool", endpoint(60_000))
    b = FleetLimiter(redises[1], None, "ep-cool", endpoint(60_000), heard)
    await a.pause(1.0)
    await asyncio.sleep(0.05)  # the cool-down write is fire-and-forget; the announcement arrives meanwhile
    assert heard.until("ep-cool") - time.monotonic() > 0.8  # calls b booked before the 429 wait too
    start = time.monotonic()
    await take_times(b, 1)
    assert time.monotonic() - start >= 0.85
    await heard.aclose()


async def test_signals_stay_in_their_database(redises: list[Redis]) -> None:
    # pub/sub is server-wide: a 429 announced by a fleet on another database must not pause ours
    heard = LimitSignals(redises[1])
    heard.start()
    await subscribed(redises[0])
    db = int(redises[0].connection_pool.connection_kwargs.get("db") or 0)
    other = Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + f"/{(db + 1) % 16}")  # never sent a command
    assert signal_channel(other) != signal_channel(redises[0])
    await redises[0].publish(signal_channel(other), "ep-other 5000")
    await FleetLimiter(redises[0], None, "ep-ours", endpoint(60_000)).pause(5.0)
    await asyncio.sleep(0.1)
    assert heard.until("ep-ours") - time.monotonic() > 4  # our own database's announcement arrives
    assert heard.until("ep-other") == 0.0
    await heard.aclose()
    await other.aclose()


async def test_gate_refuses_a_stopped_job(redises: list[Redis]) -> None:
    limiter = FleetLimiter(redises[0], None, "ep-gate", endpoint(60_000))
    meta = keys.meta("gated-job")
    await redises[0].hset(meta, "state", "running")
    async with limiter.slot(1, gate=meta):
        pass
    await redises[0].hset(meta, "state", "cancelled")
    with pytest.raises(JobStopped):
        async with limiter.slot(1, gate=meta):
            pass
    await redises[0].hset(meta, "state", "paused")
    with pytest.raises(JobStopped):
        async with limiter.slot(1, gate=meta):
            pass


async def test_calls_asking_together_are_booked_by_one_script_run_each_under_its_own_gate(
    redises: list[Redis],
) -> None:
    limiter = FleetLimiter(redises[0], None, "ep-batch", endpoint(60_000))
    running, stopped = keys.meta("batch-running"), keys.meta("batch-stopped")
    await redises[0].hset(running, "state", "running")
    await redises[0].hset(stopped, "state", "cancelled")
    script, runs = limiter._acquire, []

    async def counted(**kwargs: object) -> object:
        runs.append(kwargs)
        return await script(**kwargs)

    limiter._acquire = counted

    async def one(gate: str | None) -> str:
        try:
            async with limiter.slot(1, gate=gate):
                return "went"
        except JobStopped:
            return "refused"

    outcome = await asyncio.gather(*(one(g) for g in [running, stopped, None, running, stopped, None]))
    assert outcome == ["went", "refused", "went", "went", "refused", "went"]
    assert len(runs) == 1  # six calls, one round trip
    assert int(await redises[0].hget(keys.STATS, stat_field("limiter_acquired", "ep-batch")) or 0) == 4


async def test_runtime_and_learned_limits(redises: list[Redis]) -> None:
    ep = endpoint(60_000)
    a = FleetLimiter(redises[0], None, "ep-learn", ep)
    a.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "500"})
    await asyncio.sleep(0.1)
    limits = await effective_limits(redises[1], "ep-learn", ep)
    assert limits["learned"] == {"rpm": 600}
    assert limits["effective"] == {"rpm": 600, "tpm": ep.tpm}
    b = FleetLimiter(redises[1], None, "ep-learn", ep)  # another process learns it from Redis
    start = time.monotonic()
    await take_times(b, 15)  # 600 rpm = 10/s with a 1 s burst: 15 calls need ~0.5 s
    assert time.monotonic() - start >= 0.4
    # a limit set at run time replaces the configured one (the learned, lower one still wins)
    await redises[0].hset(keys.limiter_limits("ep-learn"), mapping={"rpm": 300})
    limits = await effective_limits(redises[1], "ep-learn", ep)
    assert limits["effective"] == {"rpm": 300, "tpm": ep.tpm}


def test_calls_booked_ahead_leave_together_on_the_tick_and_never_early() -> None:
    assert leaves_at(100.013, 0.0) == 100.013  # free now: no wait at all
    turns = [100.013 + w for w in (0.001, 0.010, 0.030)]  # three turns within one tick
    leave = {leaves_at(100.013, t - 100.013) for t in turns}
    assert len(leave) == 1 and all(t <= min(leave) < t + TICK_S for t in turns)
    later = leaves_at(100.013, 0.5)
    assert 100.513 <= later < 100.513 + TICK_S and abs(later / TICK_S - round(later / TICK_S)) < 1e-9


def test_parse_reset() -> None:
    assert parse_reset("1s") == 1.0
    assert parse_reset("6m0s") == 360.0
    assert parse_reset("20ms") == pytest.approx(0.02)
    assert parse_reset("1.5") == 1.5
    assert parse_reset("soon") is None

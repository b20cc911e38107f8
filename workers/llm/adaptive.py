"""Adaptive concurrency for one endpoint, shared by every worker through Redis (``concurrency: adaptive``).

Self-hosted servers (vLLM, llama.cpp, TGI) do not answer 429 when they are full: they queue, and the only
sign of too many requests in flight is latency growing with the queue (and, later, timeouts and 5xx). So the
fleet finds the endpoint's concurrency by AIMD, like TCP finds a link's window:

- every HTTP attempt holds a lease, admitted only while fewer than ``floor(limit)`` leases are held fleet-wide;
- a success, while the recent latency (an EWMA over the last few calls, so one outlier does not count) is at
  most ``tolerance`` x the baseline, grows the limit by ``1/limit`` (about +1 per round of requests), up to
  ``max_concurrency``; growth needs the limit to be in use (in flight >= limit/2), so an idle fleet does not
  inflate it and then flood the server with a burst;
- a recent latency above that, a 5xx, a timeout or a 429 cuts the limit to ``limit x decrease`` (never below
  1), at most once per round: only an attempt admitted after the previous cut can cut again, and a cut resets
  the recent latency to the baseline (fresh evidence is needed for the next);
- the baseline is an asymmetric EWMA of latencies: it follows faster answers within a few calls and slower
  ones with a time constant of ``RISE_S`` (30 s, whatever the call rate), so it tracks the unqueued latency,
  yet a server that really got slower is learnt within a minute or so (meanwhile the limit sits low).

With ``tolerance x decrease <= 1`` (1.4 x 0.7 by default) a cut drains the server's queue, so the baseline keeps
seeing unqueued latencies and does not creep up. The limit starts at ``min(max_concurrency, 4)``: a cautious
start that reaches a 32-request server in a few seconds (+1 per round trip).

State lives in Redis (``keys.adaptive_state``, ``keys.adaptive_leases``); a lease is scored with its expiry in
Redis TIME, so the leases of a killed worker lapse after ``lease_ttl_s`` instead of blocking the fleet. Both
decisions are one Lua script each, so workers never race on the limit. The current limit is also written to
the fleet gauges hash (``keys.GAUGES``, field ``adaptive_concurrency|<endpoint>``) for /metrics.
"""

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, Self

from pydantic import BaseModel
from redis.asyncio import Redis

from schemas.settings import EndpointSettings
from store import keys
from store.stats import stat_field
from workers.tally import Tally

log = logging.getLogger(__name__)

START_LIMIT = 4.0  # first limit of an endpoint nobody has measured (capped by max_concurrency)
TOLERANCE = 1.4  # a recent latency above this x baseline counts as queueing
DECREASE = 0.7  # multiplicative cut; TOLERANCE x DECREASE <= 1 so a cut drains the queue
ALPHA_DOWN = 0.1  # EWMA weight of a latency below the baseline: follows faster answers within a few calls
RISE_S = 30.0  # time constant of the baseline following slower answers: a slower server is learnt, queueing
# (which each cut drains within a round) is not
ALPHA_RECENT = 0.25  # EWMA of recent latencies, compared with the baseline: one slow outlier does not cut
WAIT_MIN_S = 0.01  # a refused acquire looks again after baseline / limit, within these bounds
WAIT_MAX_S = 0.05
LEASE_MARGIN_S = 10.0  # lease TTL = endpoint timeout + this: no live attempt outlasts its lease
STATE_TTL_S = 86_400  # an endpoint unused for a day starts over from START_LIMIT


def gauge_field(endpoint: str) -> str:
    """The ``keys.GAUGES`` field holding the endpoint's current limit (``skillmix_adaptive_concurrency``)."""
    return stat_field("adaptive_concurrency", endpoint)


# KEYS: leases, state, gauges. ARGV: member, ttl_ms, max, start, wait_min_ms, wait_max_ms, gauge field, state ttl.
# Returns {1, now_ms, 0} when admitted, else {0, now_ms, hint_ms}.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local maxc = tonumber(ARGV[3])
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit'))
if limit == nil or limit > maxc then
  limit = math.min(limit or tonumber(ARGV[4]), maxc)
  redis.call('HSET', KEYS[2], 'limit', tostring(limit))
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
  redis.call('HSET', KEYS[3], ARGV[7], tostring(limit))
end
if redis.call('ZCARD', KEYS[1]) < math.floor(limit) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, now, 0}
end
local base = tonumber(redis.call('HGET', KEYS[2], 'baseline')) or 0
local hint = math.floor(base * 1000 / limit)
return {0, now, math.max(tonumber(ARGV[5]), math.min(tonumber(ARGV[6]), hint))}
"""

# KEYS: leases, state, gauges. ARGV: member, outcome (ok | over | none), latency_s, admitted_ms, max, start,
# tolerance, decrease, alpha_down, rise ms, gauge field, state ttl ms, alpha_recent. Returns the limit (string).
RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local outcome = ARGV[2]
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or tonumber(ARGV[6])
if outcome == 'none' then return tostring(limit) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maxc, tol, beta = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
local base = tonumber(redis.call('HGET', KEYS[2], 'baseline'))
local recent = tonumber(redis.call('HGET', KEYS[2], 'recent'))
local cut = tonumber(redis.call('HGET', KEYS[2], 'cut_ms')) or 0
local slow = outcome == 'over'
if outcome == 'ok' then
  local latency = tonumber(ARGV[3])
  if base == nil then
    base, recent = latency, latency
  else
    recent = (recent or base) + tonumber(ARGV[13]) * (latency - (recent or base))
    slow = recent > tol * base
    if latency < base then
      base = base + tonumber(ARGV[9]) * (latency - base)
    else  -- by elapsed time, not per call: at 100 calls/s as slowly as at 1
      local since = now - (tonumber(redis.call('HGET', KEYS[2], 'baseline_ms')) or now)
      base = base + math.min(1, since / tonumber(ARGV[10])) * (latency - base)
    end
  end
  redis.call('HSET', KEYS[2], 'baseline', tostring(base), 'recent', tostring(recent), 'baseline_ms', now)
  if not slow and (redis.call('ZCARD', KEYS[1]) + 1) * 2 >= limit then
    limit = limit + 1 / limit
  end
end
if slow and tonumber(ARGV[4]) > cut then
  limit = limit * beta
  redis.call('HSET', KEYS[2], 'cut_ms', now)
  if base ~= nil then redis.call('HSET', KEYS[2], 'recent', tostring(base)) end  -- new evidence for a new cut
end
limit = math.max(1, math.min(maxc, limit))
redis.call('HSET', KEYS[2], 'limit', tostring(limit))
redis.call('PEXPIRE', KEYS[2], ARGV[12])
redis.call('HSET', KEYS[3], ARGV[11], tostring(limit))
return tostring(limit)
"""

# KEYS: leases, state. Returns {limit, baseline, leases alive} without changing anything.
SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[2], 'limit', 'baseline')
return {state[1] or false, state[2] or false, redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')}
"""


class AdaptiveState(BaseModel):
    """What the fleet currently believes about an endpoint (``None`` before its first measurement)."""

    limit: float | None
    baseline_s: float | None
    in_flight: int


Outcome = Literal["ok", "over", "none"]


class Lease:
    """One admitted HTTP attempt; say how it went with ``ok`` or ``overloaded`` before the ``hold`` ends.

    Neither (a 4xx, a cancelled or malformed call) frees the place without teaching the limit anything.
    """

    __slots__ = ("admitted_ms", "latency_s", "member", "outcome", "started")

    def __init__(self, member: str, admitted_ms: int) -> None:
        self.member = member
        self.admitted_ms = admitted_ms  # Redis TIME at admission: orders the attempt against the last cut
        self.started = time.monotonic()
        self.outcome: Outcome = "none"
        self.latency_s = 0.0

    def ok(self, latency_s: float | None = None) -> None:
        """The attempt succeeded in ``latency_s`` (default: since admission). Pass the same kind of number for
        every call of an endpoint (e.g. seconds per completion token when answer lengths vary a lot)."""
        self.outcome = "ok"
        self.latency_s = time.monotonic() - self.started if latency_s is None else max(latency_s, 0.0)

    def overloaded(self) -> None:
        """The server is saturated: 5xx, a timeout, a connection refused or reset, a 429."""
        self.outcome = "over"


class AdaptiveConcurrency:
    """Fleet-wide AIMD concurrency limit of one endpoint; ``async with ac.hold() as lease`` around each attempt.

    One instance per process and endpoint: its waiters queue locally (one polls Redis at a time, in FIFO order)
    and wake at once when an attempt of the same process ends.
    """

    def __init__(
        self,
        redis: Redis,
        endpoint: str,
        max_concurrency: int,
        *,
        lease_ttl_s: float = 120.0 + LEASE_MARGIN_S,
        start_limit: float = START_LIMIT,
        tolerance: float = TOLERANCE,
        decrease: float = DECREASE,
        tally: Tally | None = None,
    ) -> None:
        if max_concurrency < 1 or lease_ttl_s <= 0 or tolerance <= 1 or not 0 < decrease < 1:
            raise ValueError("need max_concurrency >= 1, lease_ttl_s > 0, tolerance > 1, 0 < decrease < 1")
        self.endpoint = endpoint
        self.max_concurrency = max_concurrency
        self._redis = redis
        self._keys = [keys.adaptive_leases(endpoint), keys.adaptive_state(endpoint), keys.GAUGES]
        self._ttl_ms = max(1, round(lease_ttl_s * 1000))
        self._start = max(1.0, min(float(max_concurrency), start_limit))
        self._tolerance, self._decrease = tolerance, decrease
        self._tally = tally
        self._acquire_script = redis.register_script(ACQUIRE)
        self._release_script = redis.register_script(RELEASE)
        self._snapshot_script = redis.register_script(SNAPSHOT)
        self._gate = asyncio.Lock()  # FIFO: one local waiter asks Redis at a time
        self._wake = asyncio.Event()  # set when an attempt of this process ends
        self._rng = random.Random()
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(cls, redis: Redis, name: str, endpoint: EndpointSettings, tally: Tally | None = None) -> Self:
        """Bounded by the endpoint's ``max_concurrency``; a lease outlives the endpoint's timeout by a margin."""
        return cls(redis, name, endpoint.max_concurrency, lease_ttl_s=endpoint.timeout_s + LEASE_MARGIN_S, tally=tally)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Lease]:
        """Wait for a place under the fleet's limit, hold it for one HTTP attempt, then free it and learn."""
        lease = await self._acquire()
        try:
            yield lease
        finally:
            await self._release(lease)

    async def state(self) -> AdaptiveState:
        limit, baseline, in_flight = await self._snapshot_script(keys=self._keys[:2])
        return AdaptiveState(
            limit=None if limit is None else float(limit),
            baseline_s=None if baseline is None else float(baseline),
            in_flight=int(in_flight),
        )

    async def aclose(self) -> None:
        """Wait (bounded) for releases still on their way to Redis."""
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)

    async def _acquire(self) -> Lease:
        member = uuid.uuid4().hex
        args = [member, self._ttl_ms, self.max_concurrency, self._start]
        args += [round(WAIT_MIN_S * 1000), round(WAIT_MAX_S * 1000), gauge_field(self.endpoint), STATE_TTL_S * 1000]
        async with self._gate:
            while True:
                self._wake.clear()
                try:
                    admitted, now_ms, hint_ms = await self._acquire_script(keys=self._keys, args=args)
                except BaseException:
                    # The script may have admitted us before we stopped listening: do not leave that lease behind.
                    self._spawn(self._run_release(Lease(member, 0)))
                    raise
                if admitted:
                    return Lease(member, int(now_ms))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(int(hint_ms) / 1000 * self._rng.uniform(0.5, 1.0)):
                        await self._wake.wait()

    async def _release(self, lease: Lease) -> None:
        if self._tally is not None:
            self._tally.eval(RELEASE, self._keys, self._release_args(lease))
            self._wake.set()
            return
        # Shielded: a cancelled attempt still frees its place now rather than when its lease expires.
        await asyncio.shield(self._spawn(self._run_release(lease)))

    async def _run_release(self, lease: Lease) -> None:
        try:
            await self._release_script(keys=self._keys, args=self._release_args(lease))
        except Exception as exc:  # Redis away: the lease lapses by its TTL
            log.warning("%s: could not release an adaptive-concurrency lease: %s", self.endpoint, exc)
        finally:
            self._wake.set()

    def _release_args(self, lease: Lease) -> list[str | int | float]:
        return [
            lease.member,
            lease.outcome,
            repr(lease.latency_s),
            lease.admitted_ms,
            self.max_concurrency,
            self._start,
            self._tolerance,
            self._decrease,
            ALPHA_DOWN,
            round(RISE_S * 1000),
            gauge_field(self.endpoint),
            STATE_TTL_S * 1000,
            ALPHA_RECENT,
        ]

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

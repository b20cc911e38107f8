"""One rate limit for every worker process of an endpoint: a GCRA over requests and tokens kept in Redis.

Providers limit an account, not a process. Each call takes its request and its token estimate from the
endpoint's shared state in ONE Lua script run on Redis's clock (``TIME``), never a machine's: the script
answers with the delay at which the call may go (it books that moment at once, so a worker never asks twice
for one call) or, when the endpoint is booked further ahead than ``MAX_AHEAD_MS``, with how long to wait
before asking again. The same script refuses a call of a job that is no longer queued or running (the gate),
honours the endpoint's shared 429 cool-down, run-time limits set with ``PATCH /v1/endpoints/{name}`` and
limits learned from ``x-ratelimit-*`` headers, and counts the wait for the metrics: one round trip per call.
Settling the token estimate against the returned usage, a 429's cool-down and a learned limit are written
without waiting for a reply (``Tally.eval``).

GCRA (generic cell rate algorithm): a theoretical arrival time (TAT) per quantity; a call may go at
``max(now, TAT - burst)`` and moves TAT one emission interval further. A worker that lost Redis cannot send
at all, so it cannot burst when it comes back: its calls queue for their turns like everybody else's.
"""

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import cast

from redis.asyncio import Redis

from schemas.settings import EndpointSettings
from store import keys
from store.limits import signal_channel
from store.stats import stat_field
from workers.llm.errors import JobStopped
from workers.metrics import limiter_waited
from workers.tally import Tally

log = logging.getLogger(__name__)
SAFETY = 0.99  # pace slightly under the grant: arrival jitter against the provider's own bucket causes 429s
BURST_MS = 250  # a quantity may run this far ahead of its steady pace: a quarter second's worth at once, at most
TICK_S = 0.05  # turns are rounded up to this grid: calls go out in groups (see ``FleetLimiter.take``)
MAX_AHEAD_MS = 2000  # book at most this far ahead; beyond it, wait and ask again
LEARNED_TTL_MS = 600_000  # a header-learned limit holds for 10 minutes after it was last seen
STATE_TTL_MS = 3_600_000  # an idle endpoint's TATs are in the past anyway; let the key go after an hour

# Books every call asking in one loop turn of one process (a batch), each in turn, as if asked one by one.
# KEYS: tat, cool, limits, learned, stats, then the batch's gates
# ARGV: rpm, tpm, stat_wait, stat_acquired, then per call: tokens, its gate's KEYS index (0: ungated)
# Returns per call: {code, delay}: 0 booked to go after delay ms; -1 booked out, ask again after delay; -2 gated
_ACQUIRE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local set = redis.call('HMGET', KEYS[3], 'rpm', 'tpm')
if set[1] then rpm = tonumber(set[1]) end
if set[2] then tpm = tonumber(set[2]) end
local learned = redis.call('HMGET', KEYS[4], 'rpm', 'tpm')
if learned[1] and tonumber(learned[1]) < rpm then rpm = tonumber(learned[1]) end
if learned[2] and tonumber(learned[2]) < tpm then tpm = tonumber(learned[2]) end
local tr, tt = 60000 / (rpm * {SAFETY}), 60000 / (tpm * {SAFETY})
local tat = redis.call('HMGET', KEYS[1], 'r', 't')
local tat_r, tat_t = tonumber(tat[1] or '0'), tonumber(tat[2] or '0')
local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
local open, out, booked, waited = {{}}, {{}}, 0, 0
for i = 5, #ARGV, 2 do
  local gate = tonumber(ARGV[i + 1])
  if gate > 0 and open[gate] == nil then
    local st = redis.call('HGET', KEYS[gate], 'state')
    open[gate] = st == 'queued' or st == 'running'
  end
  if gate > 0 and not open[gate] then
    out[#out + 1] = {{-2, '0'}}
  else
    local at = now
    if cool > at then at = cool end
    if tat_r - {BURST_MS} > at then at = tat_r - {BURST_MS} end
    if tat_t - {BURST_MS} > at then at = tat_t - {BURST_MS} end
    local delay = at - now
    if delay > {MAX_AHEAD_MS} then
      out[#out + 1] = {{-1, tostring(delay)}}
    else
      tat_r = math.max(tat_r, at) + tr
      tat_t = math.max(tat_t, at) + math.min(tonumber(ARGV[i]), tpm) * tt
      booked, waited = booked + 1, waited + delay
      out[#out + 1] = {{0, tostring(delay)}}
    end
  end
end
if booked > 0 then
  redis.call('HSET', KEYS[1], 'r', tostring(tat_r), 't', tostring(tat_t))
  redis.call('PEXPIRE', KEYS[1], {STATE_TTL_MS})
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[3], waited / 1000)
  redis.call('HINCRBY', KEYS[5], ARGV[4], booked)
end
return out
"""

# KEYS: tat, limits, learned   ARGV: tpm, extra_tokens (may be negative: a refund)
_SETTLE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tpm = tonumber(redis.call('HGET', KEYS[2], 'tpm') or ARGV[1])
local learned = tonumber(redis.call('HGET', KEYS[3], 'tpm') or tpm)
if learned < tpm then tpm = learned end
local old = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local new = old + tonumber(ARGV[2]) * 60000 / (tpm * {SAFETY})
if tonumber(ARGV[2]) < 0 then new = math.max(new, math.min(old, now)) end
redis.call('HSET', KEYS[1], 't', tostring(new))
return 1
"""

# Extend the shared cool-down and tell every process at once (calls already booked wait for it too).
# KEYS: cool, stats   ARGV: seconds, stat_cooldowns (or ''), channel, endpoint name
_COOL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local untl = now + tonumber(ARGV[1]) * 1000
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then
  redis.call('SET', KEYS[1], tostring(untl), 'PX', math.max(1, math.ceil(untl - now)))
  if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. tostring(untl - now))
end
return 1
"""

# A changed limit voids the bookings made under the old one (theirs were paced for it): TATs start afresh and
# every process is told, so calls booked ahead book again.
# KEYS: learned, tat   ARGV: rpm or '', tpm or '', channel, endpoint name
_LEARN = f"""
local old = redis.call('HMGET', KEYS[1], 'rpm', 'tpm')
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'rpm', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'tpm', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], {LEARNED_TTL_MS})
if (ARGV[1] ~= '' and old[1] ~= ARGV[1]) or (ARGV[2] ~= '' and old[2] ~= ARGV[2]) then
  redis.call('DEL', KEYS[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' limits')
end
return 1
"""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str) -> float | None:
    """OpenAI's ``x-ratelimit-reset-*``: "1s", "6m0s", "20ms", or plain seconds; None when unreadable."""
    value = value.strip()
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def leaves_at(now: float, wait_s: float) -> float:
    """When a call whose turn is ``wait_s`` away leaves: now if it may go now, else at the first ``TICK_S``
    boundary at or after its turn (never before it), with the others whose turns fall in that tick."""
    return now if wait_s <= 0 else math.ceil((now + wait_s) / TICK_S) * TICK_S


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(float(value))
    except ValueError:
        return None
    return number if number >= 0 else None


class LimitSignals:
    """429 cool-downs and limit changes of every endpoint, heard by this process within a millisecond (pub/sub).

    Keys in Redis stop new bookings; these stop calls booked BEFORE a 429 or a lower limit from going out
    under the old terms. While the subscription is down (Redis restarting) nobody can book anyway.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._until: dict[str, float] = {}  # endpoint -> time.monotonic() deadline
        self._epochs: dict[str, int] = {}  # endpoint -> limit changes heard
        self._task: asyncio.Task[None] | None = None

    def until(self, name: str) -> float:
        return self._until.get(name, 0.0)

    def epoch(self, name: str) -> int:
        return self._epochs.get(name, 0)

    def bump(self, name: str) -> None:
        self._epochs[name] = self.epoch(name) + 1

    def note(self, name: str, seconds: float) -> None:
        self._until[name] = max(self.until(name), time.monotonic() + seconds)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(signal_channel(self._redis))
                    delay = 0.1
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            name, _, what = message["data"].decode().rpartition(" ")
                            if what == "limits":
                                self.bump(name)
                            else:
                                self.note(name, float(what) / 1000.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: subscribe again when it is back
                log.debug("cool-down subscription lost (%s); again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class FleetLimiter:
    """``Limiter`` shared by every process that names this endpoint: rates in Redis, concurrency per process.

    ``gate`` (a job's meta key, passed per call by the job's metered client) makes the acquire refuse the call
    with ``JobStopped`` once the job is not queued or running.
    """

    gates = True

    def __init__(
        self,
        redis: Redis,
        tally: Tally | None,
        name: str,
        endpoint: EndpointSettings,
        signals: LimitSignals | None = None,
    ) -> None:
        self._redis, self._tally, self.name = redis, tally, name
        self._rpm, self._tpm = endpoint.rpm, endpoint.tpm
        self._concurrency = asyncio.Semaphore(endpoint.max_concurrency)
        self._signals = signals or LimitSignals(redis)
        self._channel = signal_channel(redis)
        self._acquire = redis.register_script(_ACQUIRE)
        self._tat, self._cool = keys.limiter_tat(name), keys.limiter_cooldown(name)
        self._limits, self._learned = keys.limiter_limits(name), keys.limiter_learned(name)
        self._wait_field = stat_field("limiter_wait_seconds", name)
        self._acquired_field = stat_field("limiter_acquired", name)
        self._cooldown_field = stat_field("rate_limited_cooldowns", name)
        self._acquire_keys = [self._tat, self._cool, self._limits, self._learned, keys.STATS]
        self._asking: list[tuple[int, str | None, asyncio.Future[tuple[int, float]]]] = []
        self._booking: set[asyncio.Task[list[list[object]]]] = set()  # scripts in flight (kept from the GC)
        self._seen: tuple[int | None, int | None, float] = (None, None, 0.0)
        self._rng = random.Random()

    @asynccontextmanager
    async def slot(self, tokens: int, gate: str | None = None) -> AsyncIterator[None]:
        async with self._concurrency:  # first: booking a turn and then queueing here would waste the turn
            await self.take(tokens, gate)
            yield

    async def take(self, tokens: int, gate: str | None = None) -> None:
        """Book this call's turn (request + ``tokens``) and sleep until it comes; a cool-down announced while
        we slept voids the booking (the call books again after it).

        A turn booked ahead is waited for up to the next ``TICK_S`` boundary, so calls whose turns fall within
        one tick go out (and mostly come back) together: a worker at the rate limit then wakes once per tick,
        not once per call. A call that may go now goes now (an endpoint bound by its concurrency, not its
        rate, loses no time). The calls asking in one loop turn are booked by one script run (``_book``).
        """
        while True:
            if (cool := self._signals.until(self.name) - time.monotonic()) > 0:
                await asyncio.sleep(cool)
            epoch = self._signals.epoch(self.name)
            code, wait_s = await self._book(max(tokens, 0), gate)
            if code == -2:
                raise JobStopped(gate)
            if code == 0:
                limiter_waited(self.name, wait_s)
                if wait_s > 0:
                    now = time.monotonic()
                    await asyncio.sleep(leaves_at(now, wait_s) - now)
                if self._signals.until(self.name) <= time.monotonic() and self._signals.epoch(self.name) == epoch:
                    return
                continue  # a 429 or a new limit arrived while we waited: our turn was booked on old terms
            # booked too far ahead: come back when our turn would be near, spread so askers do not herd
            await asyncio.sleep(max(0.01, wait_s - MAX_AHEAD_MS / 1000.0) * (1 + 0.1 * self._rng.random()))

    async def _book(self, tokens: int, gate: str | None) -> tuple[int, float]:
        """(code, seconds) of the acquire script for this call, asked together with the others of this turn."""
        answer: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._asking.append((tokens, gate, answer))
        if len(self._asking) == 1:
            asyncio.get_running_loop().call_soon(self._send_bookings)
        return await answer

    def _send_bookings(self) -> None:
        asking, self._asking = self._asking, []
        gates: dict[str, int] = {}
        args: list[str | int] = [self._rpm, self._tpm, self._wait_field, self._acquired_field]
        for tokens, gate, _ in asking:
            args += [tokens, 0 if gate is None else gates.setdefault(gate, len(self._acquire_keys) + len(gates) + 1)]
        task = asyncio.ensure_future(self._acquire(keys=[*self._acquire_keys, *gates], args=args))
        self._booking.add(task)

        def answer(done: "asyncio.Task[list[list[object]]]") -> None:
            self._booking.discard(done)
            for i, (_, _, future) in enumerate(asking):
                if future.done():  # its caller was cancelled
                    continue
                if done.cancelled():
                    future.cancel()
                elif (exc := done.exception()) is not None:
                    future.set_exception(exc)
                else:
                    code, delay = cast(tuple[int, bytes], done.result()[i])
                    future.set_result((int(code), float(delay) / 1000.0))

        task.add_done_callback(answer)

    async def settle(self, estimated: int, actual: int) -> None:
        extra = actual - estimated
        if extra:
            self._run(_SETTLE, [self._tat, self._limits, self._learned], [self._tpm, extra])

    async def pause(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self._signals.note(self.name, seconds)  # this process at once; the others by the script's PUBLISH
        self._run(_COOL, [self._cool, keys.STATS], [seconds, self._cooldown_field, self._channel, self.name])

    def observe(self, headers: Mapping[str, str]) -> None:
        """Tighten the fleet's limits to what the provider says (``x-ratelimit-*``): its limits, and a short
        cool-down when a quantity has nothing remaining (someone else shares the account). Limits are written
        when they change and once a minute while they stand."""
        rpm = _int_header(headers, "x-ratelimit-limit-requests")
        tpm = _int_header(headers, "x-ratelimit-limit-tokens")
        for kind, limit in (("requests", rpm), ("tokens", tpm)):
            if _int_header(headers, f"x-ratelimit-remaining-{kind}") == 0:
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}", ""))
                if reset:  # "reset" is until the bucket is FULL; the next call fits after one interval
                    step = 60.0 / limit if kind == "requests" and limit else 1.0
                    cool = min(reset, step)
                    self._signals.note(self.name, cool)
                    self._run(_COOL, [self._cool, keys.STATS], [cool, "", self._channel, self.name])
        learn_rpm = rpm if rpm and rpm < self._rpm else None
        learn_tpm = tpm if tpm and tpm < self._tpm else None
        now = time.monotonic()
        if learn_rpm is None and learn_tpm is None:
            return
        if (learn_rpm, learn_tpm) == self._seen[:2] and now - self._seen[2] < LEARNED_TTL_MS / 10_000:
            return
        self._seen = (learn_rpm, learn_tpm, now)
        args: list[str | int | float] = ["" if learn_rpm is None else learn_rpm, "" if learn_tpm is None else learn_tpm]
        self._run(_LEARN, [self._learned, self._tat], [*args, self._channel, self.name])

    def _run(self, script: str, keys_: list[str], args: list[str | int | float]) -> None:
        if self._tally is not None:
            self._tally.eval(script, keys_, args)
        else:
            task = asyncio.ensure_future(self._redis.eval(script, len(keys_), *keys_, *args))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

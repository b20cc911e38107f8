"""Client-side limits for one endpoint: requests/min, tokens/min, concurrency, and a shared pause.

Staying under the provider's limits is cheaper than being told off: every 429 costs a round trip and
a wait. The limits are behind the small ``Limiter`` protocol: workers use the Redis-backed, fleet-wide
``workers.llm.fleet.FleetLimiter``; ``EndpointLimiter`` (one process only) serves a client without Redis.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from aiolimiter import AsyncLimiter

from schemas.llm import ChatMessage
from schemas.settings import EndpointSettings

BURST_S = 1.0  # a limiter may release at most about this many seconds' worth of its rate at once
SAFETY = 0.97  # pace slightly under the grant: scheduling jitter against the provider's own bucket causes 429s
CHARS_PER_TOKEN = 4  # rough, provider-independent; corrected afterwards from the returned usage


class Limiter(Protocol):
    """What the client needs from a limiter; one attempt = one ``slot``."""

    def slot(self, tokens: int, gate: str | None = None) -> AbstractAsyncContextManager[None]:
        """Hold a concurrency place and a request + ``tokens`` rate allowance for one HTTP attempt.

        A limiter that can read the job's state (``gates``) refuses with ``JobStopped`` once the job whose meta
        key is ``gate`` is no longer queued or running; others ignore ``gate``."""
        ...

    async def settle(self, estimated: int, actual: int) -> None:
        """Charge the tokens a finished request used beyond what its slot reserved."""
        ...

    async def pause(self, seconds: float) -> None:
        """Hold back every request of the endpoint for ``seconds`` (a 429 is about all of us)."""
        ...

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from a successful response's headers (``x-ratelimit-*``); may do nothing."""
        ...


def text_tokens(*texts: str) -> int:
    """The one token estimate for text (chars/4), used by the limiter's reservation and extraction's packing."""
    return sum(map(len, texts)) // CHARS_PER_TOKEN


def estimate_tokens(messages: list[ChatMessage], max_tokens: int) -> int:
    """Prompt chars/4 + max_tokens: providers reserve max_tokens too, so this mirrors their count."""
    return text_tokens(*(m.content for m in messages)) + max_tokens


def _per_minute_limiter(per_minute: int) -> AsyncLimiter:
    """AsyncLimiter(max_rate, period) bursts max_rate at once; keep that burst to ~BURST_S of the rate."""
    paced = max(1.0, per_minute * SAFETY)
    period = max(BURST_S, 60.0 / paced)
    return AsyncLimiter(paced * period / 60.0, period)


class EndpointLimiter:
    """In-process ``Limiter`` from an endpoint's rpm, tpm and max_concurrency."""

    def __init__(self, rpm: int, tpm: int, max_concurrency: int) -> None:
        self._rpm = _per_minute_limiter(rpm)
        self._tpm = _per_minute_limiter(tpm)
        self._concurrency = asyncio.Semaphore(max_concurrency)
        self.paused_until = 0.0  # time.monotonic() value

    @classmethod
    def from_settings(cls, endpoint: EndpointSettings) -> "EndpointLimiter":
        return cls(endpoint.rpm, endpoint.tpm, endpoint.max_concurrency)

    @property
    def token_bucket(self) -> float:
        """Largest token amount one acquisition may take (bigger requests are clamped to this)."""
        return self._tpm.max_rate

    @asynccontextmanager
    async def slot(self, tokens: int, gate: str | None = None) -> AsyncIterator[None]:
        # Concurrency first: taking rate slots and then queueing would release them later as a burst.
        async with self._concurrency:
            await self._wait_pause()
            await self._rpm.acquire()
            await self._tpm.acquire(min(max(tokens, 0), self._tpm.max_rate))
            await self._wait_pause()  # a 429 may have arrived while we queued for the rate
            yield

    async def settle(self, estimated: int, actual: int) -> None:
        # The slot took at most one bucket; pay any excess in bucket-sized pieces.
        extra = actual - min(max(estimated, 0), self._tpm.max_rate)
        while extra > 0:
            piece = min(extra, self._tpm.max_rate)
            await self._tpm.acquire(piece)
            extra -= piece

    def observe(self, headers: Mapping[str, str]) -> None:
        """One process cannot speak for the fleet: header-learned limits live in ``FleetLimiter``."""

    async def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + max(seconds, 0.0))

    async def _wait_pause(self) -> None:
        # Sleep exactly to the deadline, then look again: another 429 may have extended it meanwhile.
        while True:
            delay = self.paused_until - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

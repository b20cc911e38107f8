"""One client per OpenAI-compatible endpoint: rate-limited, retrying ``chat`` calls with usage counts.

The transport is injectable (``http=`` or ``transport=``) so tests swap the network, not our internals.
"""

import asyncio
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Required, Self, TypedDict, Unpack

import httpx
import orjson
from pydantic import ValidationError

from schemas.llm import ChatMessage, ChatResult, Usage, WireResponse
from schemas.settings import EndpointSettings
from workers.llm.errors import (
    LLMBadRequest,
    LLMConnectionError,
    LLMError,
    LLMFatal,
    LLMMalformedResponse,
    LLMMissingKey,
    LLMRateLimited,
    LLMStatusError,
    LLMTimeout,
    LLMUnavailable,
)
from workers.llm.limits import EndpointLimiter, Limiter, estimate_tokens

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
POOL_SHARD_SIZE = 16  # connections per httpcore pool; see ShardedTransport
BAD_REQUEST_STATUSES = frozenset({400, 413, 422})
FATAL_STATUSES = frozenset({401, 402, 403, 404})
FATAL_429_CODES = frozenset({"insufficient_quota"})  # a 429 that waiting will not fix
# httpcore trace events fired just before a request's first byte is written: the moment a call is "sent".
SEND_EVENTS = frozenset({"http11.send_request_headers.started", "http2.send_request_headers.started"})

SendHook = Callable[[int], Awaitable[None]]
"""Awaited with the attempt number (from 1) right before a request's bytes leave; raising stops the call."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts; transient failures and 429s have separate allowances."""

    base_s: float = 0.5
    cap_s: float = 30.0
    rate_limit_factor: int = 3  # 429 allowance = max_retries * this: storms are survived, not fatal
    default_retry_after_s: float = 1.0  # a 429 without any retry-after header
    max_retry_after_s: float = 120.0  # do not let one header park the endpoint for an hour

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter (attempt counts from 1), so retries spread out."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


class ShardedTransport(httpx.AsyncBaseTransport):
    """``connections`` split over small pools, each request sent on the least busy one.

    httpcore 1.0.x spends O(connections^2) CPU per request in its pool bookkeeping
    (encode/httpcore#1035, encode/httpx#3215): one 100-connection client managed ~35 req/s on a core,
    ten 10-connection pools ~275 req/s. Small pools keep the client cheap at high concurrency.
    """

    def __init__(self, connections: int, shard_size: int = POOL_SHARD_SIZE) -> None:
        count = math.ceil(connections / shard_size)
        per = math.ceil(connections / count)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._shards = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(count)]
        self._active = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = min(range(len(self._shards)), key=self._active.__getitem__)
        self._active[shard] += 1
        try:
            response = await self._shards[shard].handle_async_request(request)
        except BaseException:
            self._active[shard] -= 1
            raise
        # The connection stays busy until the body is read and closed, so count it free only then.
        response.stream = _ReleasingStream(response.stream, lambda: self._release(shard))
        return response

    def _release(self, shard: int) -> None:
        self._active[shard] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, release: Callable[[], None]):
        self._inner = inner
        self._release = release
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._inner, httpx.AsyncByteStream)
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            if isinstance(self._inner, httpx.AsyncByteStream):
                await self._inner.aclose()
        finally:
            if not self._released:
                self._released = True
                self._release()


class LLMClient:
    """Chat completions against one endpoint; ``stats`` accumulates usage over the client's life."""

    def __init__(
        self,
        name: str,
        endpoint: EndpointSettings,
        *,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if http is not None and transport is not None:
            raise ValueError("pass either http= or transport=, not both")
        self.name = name
        self.endpoint = endpoint
        self.stats = Usage()
        self._retry = retry or RetryPolicy()
        self._rng = random.Random()
        self._limiter: Limiter = limiter or EndpointLimiter.from_settings(endpoint)
        self._url = endpoint.chat_url
        self._headers = {"content-type": "application/json"}
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise LLMMissingKey(endpoint.api_key_env)
            self._headers["authorization"] = f"Bearer {key}"
        # httpx timeouts are per operation; _post adds an overall deadline on top.
        self._timeout = httpx.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, CONNECT_TIMEOUT_S))
        self._owns_http = http is None
        if http is None:
            transport = transport or ShardedTransport(endpoint.max_concurrency)
            http = httpx.AsyncClient(transport=transport, timeout=self._timeout)
        self._http = http

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP pool if we created it (a shared one belongs to whoever passed it in)."""
        if self._owns_http:
            await self._http.aclose()

    async def chat(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
        frequency_penalty: float = 0.0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        on_send: SendHook | None = None,
    ) -> ChatResult:
        """One completion, retried per ``RetryPolicy``; raises an ``LLMError`` carrying ``usage``.

        ``usage.calls`` counts requests whose bytes left (a call cancelled or refused by ``on_send`` before
        that is not counted), so it equals what the endpoint saw.
        """
        payload: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": [m.model_dump() for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            payload["seed"] = seed
        if frequency_penalty:
            payload["frequency_penalty"] = frequency_penalty
        if json_schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "strict": True, "schema": json_schema},
            }
        body = orjson.dumps(payload)
        estimate = estimate_tokens(messages, max_tokens)
        usage = Usage()
        try:
            result = await self._with_retries(body, estimate, usage, on_send)
        except LLMError as exc:
            exc.usage = usage
            raise
        except BaseException as exc:  # cancelled, or stopped by ``on_send``: what was sent still counts
            exc.usage = usage  # type: ignore[attr-defined]
            raise
        finally:
            self.stats = self.stats.add(usage)
        await self._limiter.settle(estimate, usage.prompt_tokens + usage.completion_tokens)
        return result

    async def _with_retries(self, body: bytes, estimate: int, usage: Usage, on_send: SendHook | None) -> ChatResult:
        max_retries = self.endpoint.max_retries
        max_rate_limited = max_retries * self._retry.rate_limit_factor
        failures = 0
        while True:
            try:
                async with self._limiter.slot(estimate):
                    response = await self._post(body, usage, on_send)
                return self._parse(response, usage)
            except LLMRateLimited as exc:
                usage.rate_limited += 1
                await self._limiter.pause(exc.retry_after)
                if usage.rate_limited > max_rate_limited:
                    raise LLMUnavailable(f"{self.name}: still rate limited after {usage.calls} calls") from exc
                log.debug("%s: 429, endpoint paused %.2fs", self.name, exc.retry_after)
            except LLMError as exc:
                if not exc.retryable:
                    raise
                failures += 1
                if failures > max_retries:
                    raise LLMUnavailable(f"{self.name}: gave up after {usage.calls} calls: {exc}") from exc
                delay = self._retry.backoff(failures, self._rng)
                log.info("%s: %s; retry %d in %.2fs", self.name, exc, failures, delay)
                await asyncio.sleep(delay)

    async def _post(self, body: bytes, usage: Usage, on_send: SendHook | None) -> httpx.Response:
        """The only place httpx errors exist: every failure leaves here as an ``LLMError``.

        The call is counted (and ``on_send`` awaited) from httpcore's trace hook just before the request's
        headers are written: not while it waits for a pooled connection, never after its bytes left.
        """
        sent = False

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal sent
            if event in SEND_EVENTS and not sent:
                if on_send is not None:
                    await on_send(usage.calls + 1)  # may refuse; its increment is its last, synchronous step
                sent = True
                usage.calls += 1
                usage.retries = usage.calls - 1

        try:
            async with asyncio.timeout(self.endpoint.timeout_s):
                response = await self._http.post(
                    self._url, content=body, headers=self._headers, timeout=self._timeout, extensions={"trace": trace}
                )
            if not sent:  # a transport that is not httpcore (tests inject them) fires no trace: count it now
                await trace(next(iter(SEND_EVENTS)), {})
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise LLMTimeout(f"{self.name}: no answer within {self.endpoint.timeout_s}s") from exc
        except httpx.DecodingError as exc:
            raise LLMMalformedResponse(f"{self.name}: undecodable body: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LLMConnectionError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise self._status_error(response)
        return response

    def _status_error(self, response: httpx.Response) -> LLMError:
        status, text = response.status_code, response.text
        if status == 429:
            if _error_code(response.content) in FATAL_429_CODES:
                return LLMFatal(status, text)
            return LLMRateLimited(self._retry_after(response.headers), f"{self.name}: HTTP 429")
        if status in BAD_REQUEST_STATUSES:
            return LLMBadRequest(status, text)
        if status in FATAL_STATUSES:
            return LLMFatal(status, text)
        return LLMStatusError(status, text)

    def _retry_after(self, headers: httpx.Headers) -> float:
        """``retry-after-ms`` (OpenAI), then ``retry-after`` (seconds or HTTP date), else the default."""
        seconds: float | None = None
        if (ms := headers.get("retry-after-ms")) is not None:
            seconds = _float_or_none(ms)
            seconds = None if seconds is None else seconds / 1000.0
        if seconds is None and (value := headers.get("retry-after")) is not None:
            seconds = _float_or_none(value)
            if seconds is None:
                try:
                    seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
                except (TypeError, ValueError, IndexError):
                    seconds = None
        if seconds is None or not math.isfinite(seconds):
            seconds = self._retry.default_retry_after_s
        return min(max(seconds, 0.0), self._retry.max_retry_after_s)

    def _parse(self, response: httpx.Response, usage: Usage) -> ChatResult:
        try:
            wire = WireResponse.model_validate(orjson.loads(response.content))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise LLMMalformedResponse(f"{self.name}: not a chat completion: {exc}") from exc
        choice = wire.choices[0]
        content = choice.message.get("content")
        if not isinstance(content, str):
            raise LLMMalformedResponse(f"{self.name}: choice without text content")
        if wire.usage is not None:
            usage.prompt_tokens += wire.usage.prompt_tokens
            usage.completion_tokens += wire.usage.completion_tokens
        return ChatResult(
            content=content,
            finish_reason=choice.finish_reason,
            model=wire.model or self.endpoint.model,
            usage=usage,
        )


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _error_code(body: bytes) -> str | None:
    """The OpenAI-style ``error.code`` of an error body, if it has one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


class ChatOptions(TypedDict, total=False):
    """Everything of one completion request besides its messages; ``LLMClient.chat`` holds the defaults."""

    max_tokens: Required[int]
    temperature: float
    top_p: float
    seed: int | None
    frequency_penalty: float
    json_schema: dict[str, Any] | None
    schema_name: str
    on_send: SendHook | None


class ChatClient(Protocol):
    """What recipes need from an endpoint: ``LLMClient`` and wrappers such as ``MeteredClient``."""

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult: ...


class MeteredClient:
    """The job's view of an endpoint: each call is counted (and may be refused) as it is sent, by ``on_send``;
    its tokens and 429s are reported by ``on_usage`` when it returns, success or error.

    Counting at send time (not per finished item) keeps accounting right when items are cancelled, fail
    part-way through a multi-turn conversation, or their worker is killed with calls in flight.
    """

    def __init__(
        self, inner: ChatClient, on_send: SendHook, on_usage: Callable[[Usage], Awaitable[None]]
    ) -> None:
        self.inner, self.on_send, self.on_usage = inner, on_send, on_usage

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        options["on_send"] = self.on_send
        try:
            result = await self.inner.chat(messages, **options)
        except BaseException as exc:  # an LLMError, a cancel or a refusal by on_send: report what it cost
            if (usage := getattr(exc, "usage", None)) is not None:
                await asyncio.shield(self.on_usage(usage))
            raise
        await asyncio.shield(self.on_usage(result.usage))
        return result

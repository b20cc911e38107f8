"""One client per OpenAI-compatible endpoint: rate-limited, retrying ``chat`` calls with usage counts.

Requests go out through aiohttp: per call it costs a quarter of httpx's CPU (0.25 vs 1.0 ms at 64 in
flight, ``bench/profile_before.md``), and at a thousand calls a second that is cores. Tests may inject an
httpx transport (``transport=``) to swap the network, not our internals; both paths count a call in the
same synchronous step that writes its bytes.
"""

import asyncio
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Required, Self, TypedDict, Unpack

import aiohttp
import httpx
import orjson
from pydantic import ValidationError

from schemas.errors import SkillmixError
from schemas.llm import ChatMessage, ChatResult, Usage, WireChoice, WireResponse, WireUsage
from schemas.settings import EndpointSettings
from workers.llm.adaptive import AdaptiveConcurrency
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
from workers.metrics import RequestMetrics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0  # idle connections close before servers' usual keep-alive (the fake's: 60 s)
BAD_REQUEST_STATUSES = frozenset({400, 413, 422})
FATAL_STATUSES = frozenset({401, 402, 403, 404})
FATAL_429_CODES = frozenset({"insufficient_quota"})  # a 429 that waiting will not fix
# httpcore trace events fired just before a request's first byte is written (injected httpx transports).
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


class Answer(NamedTuple):
    """An HTTP answer, whichever library fetched it: headers are case-insensitive in both."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class _Send:
    """One HTTP attempt's hook state: counts the call (and awaits ``on_send``) right before its bytes are
    written; a refusal raised by ``on_send`` is kept, because aiohttp wraps what its writer raises."""

    __slots__ = ("on_send", "refused", "sent", "usage")

    def __init__(self, usage: Usage, on_send: SendHook | None) -> None:
        self.usage, self.on_send = usage, on_send
        self.sent = False
        self.refused: BaseException | None = None

    async def fire(self) -> None:
        if self.sent:
            return
        if self.on_send is not None:
            try:
                await self.on_send(self.usage.calls + 1)  # may refuse; its increment is its last synchronous step
            except BaseException as exc:
                self.refused = exc
                raise
        self.sent = True
        self.usage.calls += 1
        self.usage.retries = self.usage.calls - 1


async def _on_chunk_sent(_: aiohttp.ClientSession, ctx: Any, __: Any) -> None:
    """aiohttp's last hook before the request's first write (headers go out with the body, in the same
    synchronous step that follows this hook when it does not suspend)."""
    await ctx.trace_request_ctx.fire()


_TRACE = aiohttp.TraceConfig()
_TRACE.on_request_chunk_sent.append(_on_chunk_sent)


_BUILD_KEY = object()
"""Held by ``workers.runner.resources`` alone (and the client's own tests): a job's calls must go through the
runner's metered path (state check, tally at send, budget, replay, drain refusal), never a client of its own."""


class NotTheRunner(SkillmixError, TypeError):
    """Someone other than the runner's resources tried to build an endpoint client."""


class LLMClient:
    """Chat completions against one endpoint; ``stats`` accumulates usage over the client's life.

    Built only by ``workers.runner.Resources`` (it passes ``_key``): what a job sends goes through the metered
    path the runner wraps around this client, so no code can reach an endpoint another way.
    """

    def __init__(
        self,
        name: str,
        endpoint: EndpointSettings,
        *,
        _key: object = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        adaptive: AdaptiveConcurrency | None = None,
    ) -> None:
        if _key is not _BUILD_KEY:
            raise NotTheRunner("LLMClient is built by workers.runner.Resources only; ask it for a job's client")
        self.name = name
        self.endpoint = endpoint
        self.stats = Usage()
        self._retry = retry or RetryPolicy()
        self._rng = random.Random()
        self._limiter: Limiter = limiter or EndpointLimiter.from_settings(endpoint)
        self._adaptive = adaptive  # ``concurrency: adaptive``: AIMD on latency and errors, shared by the fleet
        self._url = endpoint.chat_url
        self._metrics = RequestMetrics(name)  # labelled once: a call only observes (workers.metrics)
        self._headers = {"content-type": "application/json"}
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise LLMMissingKey(endpoint.api_key_env)
            self._headers["authorization"] = f"Bearer {key}"
        # per-operation timeouts; _post adds an overall deadline on top
        connect = min(endpoint.timeout_s, CONNECT_TIMEOUT_S)
        self._http: httpx.AsyncClient | None = None
        if transport is not None:
            timeout = httpx.Timeout(endpoint.timeout_s, connect=connect)
            self._http = httpx.AsyncClient(transport=transport, timeout=timeout)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=endpoint.timeout_s)
        self._session: aiohttp.ClientSession | None = None  # made in the running loop, on first use

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._session is not None:
            await self._session.close()

    def _aiohttp(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.endpoint.max_concurrency, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trace_configs=[_TRACE], skip_auto_headers=("User-Agent",)
            )
        return self._session

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
        gate: str | None = None,
    ) -> ChatResult:
        """One completion, retried per ``RetryPolicy``; raises an ``LLMError`` carrying ``usage``.

        ``usage.calls`` counts requests whose bytes left (a call cancelled or refused by ``on_send`` before
        that is not counted), so it equals what the endpoint saw. ``gate`` (a job's meta key) lets a limiter that
        can see Redis refuse the call with ``JobStopped`` when the job is no longer queued or running.
        """
        body = orjson.dumps(
            self.request_body(
                messages, max_tokens, temperature, top_p, seed, frequency_penalty, json_schema, schema_name
            )
        )
        estimate = estimate_tokens(messages, max_tokens)
        usage = Usage()
        try:
            result = await self._with_retries(body, estimate, usage, on_send, gate)
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

    def request_body(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
        frequency_penalty: float = 0.0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
    ) -> dict[str, Any]:
        """The chat completion request's JSON body: sent online, or as a batch file's line (``workers.batch``)."""
        payload: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
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
        return payload

    @property
    def gates(self) -> bool:
        """Whether this client's limiter checks a job's state itself (then ``on_send`` need not)."""
        return bool(getattr(self._limiter, "gates", False))

    async def _with_retries(
        self, body: bytes, estimate: int, usage: Usage, on_send: SendHook | None, gate: str | None
    ) -> ChatResult:
        max_retries = self.endpoint.max_retries
        max_rate_limited = max_retries * self._retry.rate_limit_factor
        failures = 0
        while True:
            try:
                async with self._limiter.slot(estimate, gate):
                    if self._adaptive is None:
                        response = await self._post(body, usage, on_send)
                    else:
                        response = await self._post_adaptive(self._adaptive, body, usage, on_send)
                self._limiter.observe(response.headers)
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

    async def _post_adaptive(
        self, adaptive: AdaptiveConcurrency, body: bytes, usage: Usage, on_send: SendHook | None
    ) -> Answer:
        """One attempt under the fleet's adaptive concurrency: its latency or overload teaches the shared limit."""
        async with adaptive.hold() as lease:
            try:
                response = await self._post(body, usage, on_send)
            except (LLMTimeout, LLMConnectionError, LLMRateLimited):
                lease.overloaded()
                raise
            except LLMStatusError as exc:
                if exc.status_code >= 500:
                    lease.overloaded()
                raise
            lease.ok()
            return response

    async def _post(self, body: bytes, usage: Usage, on_send: SendHook | None) -> Answer:
        """The only place HTTP libraries' errors exist: every failure leaves here as an ``LLMError``.

        The call is counted (and ``on_send`` awaited) from the library's hook right before the request's bytes
        are written: not while it waits for a pooled connection, never after its bytes left.
        """
        send = _Send(usage, on_send)
        metrics, started, timed = self._metrics, time.perf_counter(), self._metrics.error  # until known; cancels too
        metrics.in_flight.inc()  # requests that left are timed by outcome (workers.metrics)
        try:
            async with asyncio.timeout(self.endpoint.timeout_s):
                if self._http is None:
                    answer = await self._send_aiohttp(body, send)
                else:
                    answer = await self._send_httpx(body, send)
            timed = metrics.outcome(answer.status)
        except (httpx.TimeoutException, TimeoutError) as exc:
            timed = metrics.timeout
            raise LLMTimeout(f"{self.name}: no answer within {self.endpoint.timeout_s}s") from exc
        except (httpx.DecodingError, aiohttp.ClientPayloadError) as exc:
            raise LLMMalformedResponse(f"{self.name}: undecodable body: {exc}") from exc
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            if send.refused is not None:  # on_send refused the call: nothing was written
                raise send.refused from None
            raise LLMConnectionError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            metrics.in_flight.dec()
            if send.sent:
                timed.observe(time.perf_counter() - started)
        if answer.status != 200:
            raise self._status_error(answer)
        return answer

    async def _send_aiohttp(self, body: bytes, send: _Send) -> Answer:
        session = self._aiohttp()
        try:
            async with session.post(self._url, data=body, headers=self._headers, trace_request_ctx=send) as response:
                content = await response.read()
                return Answer(response.status, response.headers, content)
        except BaseException:
            if send.refused is not None:
                raise send.refused from None
            raise

    async def _send_httpx(self, body: bytes, send: _Send) -> Answer:
        async def trace(event: str, info: dict[str, Any]) -> None:
            if event in SEND_EVENTS:
                await send.fire()

        assert self._http is not None
        response = await self._http.post(self._url, content=body, headers=self._headers, extensions={"trace": trace})
        await send.fire()  # a transport that is not httpcore (tests inject them) fires no trace: count it now
        return Answer(response.status_code, response.headers, response.content)

    def _status_error(self, response: Answer) -> LLMError:
        status, text = response.status, response.content.decode(errors="replace")
        if status == 429:
            if _error_code(response.content) in FATAL_429_CODES:
                return LLMFatal(status, text)
            return LLMRateLimited(self._retry_after(response.headers), f"{self.name}: HTTP 429")
        if status in BAD_REQUEST_STATUSES:
            return LLMBadRequest(status, text)
        if status in FATAL_STATUSES:
            return LLMFatal(status, text)
        return LLMStatusError(status, text)

    def _retry_after(self, headers: Mapping[str, str]) -> float:
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

    def _parse(self, response: Answer, usage: Usage) -> ChatResult:
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise LLMMalformedResponse(f"{self.name}: not a chat completion: {exc}") from exc
        return completion(data, self.name, self.endpoint.model, usage)


def completion(data: Any, name: str, model: str, usage: Usage) -> ChatResult:
    """A chat completion's decoded JSON as a ``ChatResult`` (its tokens added to ``usage``), online or from a
    batch output line; ``LLMMalformedResponse`` for anything else."""
    try:
        wire = _fast_wire(data)  # the usual shape, read without building models (this runs per call)
        if wire is None:
            wire = WireResponse.model_validate(data)
    except ValidationError as exc:
        raise LLMMalformedResponse(f"{name}: not a chat completion: {exc}") from exc
    choice = wire.choices[0]
    content = choice.message.get("content")
    if not isinstance(content, str):
        raise LLMMalformedResponse(f"{name}: choice without text content")
    if wire.usage is not None:
        usage.prompt_tokens += wire.usage.prompt_tokens
        usage.completion_tokens += wire.usage.completion_tokens
    return ChatResult.model_construct(  # every field checked above
        content=content,
        finish_reason=choice.finish_reason,
        model=wire.model or model,
        usage=usage,
    )


def _fast_wire(data: Any) -> WireResponse | None:
    """``WireResponse`` of a well-formed completion without validation (the types are checked here); None for
    anything unusual, which then goes through ``WireResponse.model_validate`` and its errors."""
    if not isinstance(data, dict):
        return None
    choices, usage, model = data.get("choices"), data.get("usage"), data.get("model", "")
    if not (isinstance(choices, list) and choices and isinstance(model, str)):
        return None
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        return None
    finish = first.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        return None
    wire_usage = None
    if usage is not None:
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        if type(prompt) is not int or type(completion) is not int:
            return None
        wire_usage = WireUsage.model_construct(prompt_tokens=prompt, completion_tokens=completion)
    choice = WireChoice.model_construct(message=first["message"], finish_reason=finish)
    return WireResponse.model_construct(model=model, choices=[choice], usage=wire_usage)


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
    gate: str | None


class ChatClient(Protocol):
    """What recipes need from an endpoint: ``LLMClient`` and wrappers such as ``MeteredClient``."""

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult: ...


class MeteredClient:
    """The job's view of an endpoint: each call is counted (and may be refused) as it is sent, by ``on_send``;
    its tokens and 429s are reported by ``on_usage`` when it returns, success or error. ``on_usage`` is
    synchronous (a fire-and-forget write): a cancel arriving meanwhile cannot lose it.

    Counting at send time (not per finished item) keeps accounting right when items are cancelled, fail
    part-way through a multi-turn conversation, or their worker is killed with calls in flight.
    """

    def __init__(
        self,
        inner: ChatClient,
        on_send: SendHook,
        on_usage: Callable[[Usage], None],
        gate: str | None = None,
    ) -> None:
        self.inner, self.on_send, self.on_usage, self.gate = inner, on_send, on_usage, gate

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        options["on_send"] = self.on_send
        if self.gate is not None:
            options["gate"] = self.gate
        try:
            result = await self.inner.chat(messages, **options)
        except BaseException as exc:  # an LLMError, a cancel or a refusal by on_send: report what it cost
            if (usage := getattr(exc, "usage", None)) is not None:
                self.on_usage(usage)
            raise
        self.on_usage(result.usage)
        return result

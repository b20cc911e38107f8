"""Never pay twice: every answer an endpoint gives a job is kept the moment it arrives, and a rerun replays it.

A chunk that runs again (its worker was killed, it timed out, the endpoint went down) rebuilds each item
from the same seed, so it sends the same requests in the same order; each one already answered is taken from
this cache instead of the endpoint. The layering (``workers.generate.run_chunk``):

    ReplayClient(metered(Recorder(endpoint client)))    # ReplayCache.replaying(metered, recorder)

- ``Recorder`` (innermost) keeps a fresh answer right after the endpoint's response is parsed, with one
  fire-and-forget EVAL on the tally connection (``Tally.eval``): no round trip, and written before metering's
  own round trip, so an answer that reached the worker is kept even if the worker dies a moment later.
- ``ReplayClient`` (outermost) answers from the cache without touching metering: a replayed answer is not a
  call (``llm_calls`` stays what the endpoint saw) and adds no tokens to the job; the result carries the usage
  it cost when it was paid, so the record's ``usage`` is still what its conversation cost.

Key: the chunk's hash ``job:{id}:replay:{start}`` (read once, with one HGETALL, when the chunk starts), field
``{index}:{attempt}:{digest}:{n}``: the item scope comes from a context variable set per item attempt
(``item_scope``; each item is its own asyncio task), ``digest`` hashes endpoint name, model, every generation
parameter and the messages, and ``n`` counts identical requests the item attempt made before, so requests
sent identical on purpose (majority votes) stay distinct samples and replay in order.

Bounds: each write refreshes a TTL (``replay_ttl_s``) and is refused once the job's cache holds
``replay_max_mb``; a chunk's hash is dropped when all its items are generated, and what is left of a job's
cache when the job is retired (``workers.watchdog``).
"""

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Unpack

import orjson
from redis.asyncio import Redis

from schemas.llm import ChatMessage, ChatResult
from schemas.settings import Settings
from store import keys, stats
from store.batches import FAILED_MARK  # a kept value starting with it: a batch line that failed for good
from workers import metrics
from workers.llm.client import ChatClient, ChatOptions
from workers.llm.errors import BatchLineFailed
from workers.tally import Tally

# KEYS: chunk hash, job index hash. ARGV: field, value, cap bytes, ttl s, index field of the chunk.
# Keep the answer unless the job's cache would pass its cap (then count the refusal) or it is already kept.
_KEEP = """
local size = #ARGV[1] + #ARGV[2]
local used = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if used + size > tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[2], 'refused', 1)
  return 0
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'bytes', size)
redis.call('HINCRBY', KEYS[2], ARGV[5], size)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: chunk hash, job index hash. ARGV: index field of the chunk. Drop one chunk's answers, give back its bytes.
_DROP_CHUNK = """
local size = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('UNLINK', KEYS[1])
if size > 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'bytes', -size)
end
return size
"""

# KEYS: job counters, fleet stats. ARGV: the stats field. One replayed answer, counted for the job and the fleet.
_HIT = """
redis.call('HINCRBY', KEYS[1], 'replayed', 1)
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[1], 1)
"""

_HOOKS = frozenset({"on_send", "gate"})  # metering's options, not generation parameters
CHUNK_FIELD = "chunk:"  # index hash field prefix: chunk start -> bytes its hash holds


@dataclass
class _Scope:
    """One item attempt: where its answers are filed, and how often it sent each request so far."""

    index: int
    attempt: int | str
    seen: Counter[str] = field(default_factory=Counter)

    def field(self, digest: str) -> str:
        n = self.seen[digest]
        self.seen[digest] += 1
        return f"{self.index}:{self.attempt}:{digest}:{n}"


_scope: ContextVar[_Scope | None] = ContextVar("replay_scope", default=None)
# Set by ReplayClient around a call it could not answer: where Recorder files the fresh answer.
_pending: ContextVar[tuple["ReplayCache", str] | None] = ContextVar("replay_pending", default=None)


@contextmanager
def item_scope(index: int, attempt: int | str) -> Iterator[None]:
    """Calls made inside belong to this item attempt (``attempt`` may be a label, e.g. "judge")."""
    token = _scope.set(_Scope(index, attempt))
    try:
        yield
    finally:
        _scope.reset(token)


def pending_place() -> tuple[int | str, str] | None:
    """Where the answer to the call being made now will be kept: (unit scope, field), inside ``ReplayClient``."""
    pending = _pending.get()
    return None if pending is None else (pending[0].start, pending[1])


def kept_answer(raw: bytes | str) -> ChatResult:
    """A kept answer; a batch line that failed for good raises ``BatchLineFailed`` with the provider's message."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.startswith(FAILED_MARK):
        raise BatchLineFailed(400, text[len(FAILED_MARK) :], text[len(FAILED_MARK) :])
    return ChatResult.model_validate_json(text)


def request_digest(name: str, model: str, messages: list[ChatMessage], options: ChatOptions) -> str:
    """sha256 over endpoint name, model, every generation parameter (json_schema too) and the messages."""
    params = {k: v for k, v in options.items() if k not in _HOOKS}
    payload = [name, model, params, [(m.role, m.content) for m in messages]]
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class ReplayCache:
    """One chunk run's view of its job's cache: the answers already kept (read once), and the writer."""

    def __init__(
        self, tally: Tally, job_id: str, start: int | str, entries: dict[str, bytes], max_bytes: int, ttl_s: int
    ) -> None:
        self.tally, self.job_id, self.start = tally, job_id, start
        self.entries, self.max_bytes, self.ttl_s = entries, max_bytes, ttl_s
        self.key, self.index_key = keys.replay(job_id, start), keys.replay_index(job_id)
        self.hits = 0

    @classmethod
    async def load(cls, redis: Redis, tally: Tally, job_id: str, start: int | str, settings: Settings) -> "ReplayCache":
        """The unit's kept answers (``start``: a chunk's first item, or a unit's name such as ``extract``), in
        one HGETALL (empty on a first run, and when the cache is off)."""
        max_bytes = int(settings.replay_max_mb * 1024 * 1024)
        raw = await redis.hgetall(keys.replay(job_id, start)) if max_bytes > 0 else {}
        entries = {k.decode(): v for k, v in raw.items()}
        return cls(tally, job_id, start, entries, max_bytes, settings.replay_ttl_s)

    def replaying(self, paid: ChatClient, base: ChatClient) -> "ReplayClient":
        """``paid`` (the metered view of ``Recorder(base)``) answering from this cache first."""
        name = str(getattr(base, "name", ""))
        model = str(getattr(getattr(base, "endpoint", None), "model", ""))
        return ReplayClient(paid, self, name, model)

    def replay(self, field_name: str, endpoint: str) -> ChatResult | None:
        """The kept answer, counted (job's ``replayed``, fleet and process ``replay_hits``), or None."""
        raw = self.entries.get(field_name)
        if raw is None:
            return None
        self.hits += 1
        args: list[str | int | float] = [stats.stat_field(stats.REPLAY_HITS, endpoint)]
        self.tally.eval(_HIT, [keys.counters(self.job_id), keys.STATS], args)
        metrics.replay_hit(endpoint)
        return kept_answer(raw)

    def keep(self, field_name: str, result: ChatResult) -> None:
        """Written now, no reply awaited (see ``Tally.eval``); the script applies the cap."""
        if self.max_bytes <= 0:
            return
        value = result.model_dump_json()
        args: list[str | int | float] = [field_name, value, self.max_bytes, self.ttl_s, f"{CHUNK_FIELD}{self.start}"]
        self.tally.eval(_KEEP, [self.key, self.index_key], args)

    def drop(self) -> None:
        """The chunk's items are all generated: nothing of it will be asked again (fire-and-forget)."""
        if self.max_bytes > 0:
            self.tally.eval(_DROP_CHUNK, [self.key, self.index_key], [f"{CHUNK_FIELD}{self.start}"])


class ReplayClient:
    """Answers a request from the cache when this item attempt already got an answer for it."""

    def __init__(self, inner: ChatClient, cache: ReplayCache, name: str, model: str) -> None:
        self.inner, self.cache, self.name, self.model = inner, cache, name, model

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        scope = _scope.get()
        if scope is None:  # not an item's call (nothing to file it under): straight through
            return await self.inner.chat(messages, **options)
        field_name = scope.field(request_digest(self.name, self.model, messages, options))  # before any await
        replayed = self.cache.replay(field_name, self.name)
        if replayed is not None:
            return replayed
        token = _pending.set((self.cache, field_name))
        try:
            return await self.inner.chat(messages, **options)
        finally:
            _pending.reset(token)


class Recorder:
    """Keeps each fresh answer the moment the endpoint client returns it (before anything else awaits)."""

    def __init__(self, inner: ChatClient) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # the endpoint client's name, endpoint, ... for whoever asks
        return getattr(self.inner, name)

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        result = await self.inner.chat(messages, **options)
        pending = _pending.get()
        if pending is not None:
            cache, field_name = pending
            cache.keep(field_name, result)
        return result


async def drop_job(redis: Redis, job_id: str) -> int:
    """Delete what is left of a finished job's cache (its chunks' hashes and the index); returns keys dropped."""
    index_key = keys.replay_index(job_id)
    fields = [f.decode() for f in await redis.hkeys(index_key)]
    starts = [f[len(CHUNK_FIELD) :] for f in fields if f.startswith(CHUNK_FIELD)]
    doomed = [keys.replay(job_id, s) for s in starts if s] + [index_key]
    return int(await redis.unlink(*doomed))

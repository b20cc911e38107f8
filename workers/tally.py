"""Counter increments that reach Redis in the same instant as the LLM request they count.

A job's ``llm_calls`` must equal what the endpoint saw, even when a worker is SIGKILLed mid-call. An awaited
HINCRBY cannot promise that: between it and the request's bytes lie a Redis round trip and an event-loop
turn, and a kill there leaves the two apart. Here the increment is written to a raw Redis connection with
replies switched off (``CLIENT REPLY OFF``) by a plain socket write, in the same synchronous step that
follows the request's headers into the kernel (see ``LLMClient._post``): both are in the kernel's send
buffers before the event loop can switch tasks, and a process killed after that still has both delivered.

When the connection is down (Redis restarting), increments fall back to an awaited command on the pool.
"""

import asyncio
import contextlib
import functools
import hashlib
import logging

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url

log = logging.getLogger(__name__)


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _resp(*parts: str | int | float) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Tally:
    def __init__(self, redis_url: str, pool: Redis, timeout_s: float) -> None:
        self._params = parse_url(redis_url)
        self._pool, self._timeout_s = pool, timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._drain: asyncio.Task[None] | None = None
        self._fallbacks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        # script calls waiting for the end of this loop turn (one write for all); the call kept for a fallback
        self._pending: list[bytes] = []
        self._calls: list[tuple[str, list[str], list[str | int | float]]] = []
        self._flush_scheduled = False
        self._loaded: set[str] = set()  # script SHAs this connection has sent SCRIPT LOAD for

    async def ensure(self) -> None:
        """Connect if not connected (awaited before a call, so the increment itself never waits)."""
        if self._writer is not None and not self._writer.is_closing():
            return
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self._connect(), self._timeout_s)

    async def _connect(self) -> None:
        host, port = self._params.get("host", "127.0.0.1"), self._params.get("port", 6379)
        reader, writer = await asyncio.open_connection(host, port)
        hello = [_resp("SELECT", self._params.get("db", 0))]
        if password := self._params.get("password"):
            user = self._params.get("username")
            hello.insert(0, _resp("AUTH", user, password) if user else _resp("AUTH", password))
        writer.write(b"".join(hello))
        for _ in hello:
            line = await reader.readline()
            if not line.startswith(b"+"):
                writer.close()
                raise OSError(f"Redis refused the tally connection: {line!r}")
        writer.write(_resp("CLIENT", "REPLY", "OFF"))
        self._loaded = set()
        self._writer = writer
        self._drain = asyncio.create_task(self._watch(reader, writer))

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Nothing is answered on this connection: reading only notices when Redis closes it."""
        with contextlib.suppress(Exception):
            while await reader.read(4096):
                pass
        writer.close()

    def incr(self, key: str, *fields: str) -> None:
        """HINCRBY key field 1 for each field, written now (with any script calls waiting); never awaits."""
        writer = self._writer
        if writer is not None and not writer.is_closing():
            try:
                writer.write(b"".join([*self._pending, *(_resp("HINCRBY", key, f, 1) for f in fields)]))
                self._pending.clear()
                self._calls.clear()
                return
            except (OSError, RuntimeError):
                pass
        task = asyncio.create_task(self._incr_awaited(key, fields))
        self._fallbacks.add(task)
        task.add_done_callback(self._fallbacks.discard)

    def eval(self, script: str, keys: list[str], args: list[str | int | float]) -> None:
        """Run ``script`` with no reply, written at the end of this event-loop turn together with every other
        script call of the turn (a socket write costs more than the command); never awaits. For writes whose
        outcome nobody waits for (settling a limiter, charging a budget, keeping a response): the script
        itself does any checking. EVALSHA once this connection has loaded the script (SCRIPT LOAD goes
        first, on the same connection, so it is there when the EVALSHA runs)."""
        writer = self._writer
        if writer is not None and not writer.is_closing():
            sha = _sha(script)
            if sha not in self._loaded:
                self._pending.append(_resp("SCRIPT", "LOAD", script))
                self._loaded.add(sha)
            self._pending.append(_resp("EVALSHA", sha, len(keys), *keys, *args))
            self._calls.append((script, keys, args))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            return
        task = asyncio.create_task(self._eval_awaited(script, keys, args))
        self._fallbacks.add(task)
        task.add_done_callback(self._fallbacks.discard)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        batch, calls = b"".join(self._pending), self._calls
        self._pending, self._calls = [], []
        writer = self._writer
        try:
            if writer is None or writer.is_closing():
                raise OSError("tally connection closed")
            writer.write(batch)
        except (OSError, RuntimeError):  # the connection went meanwhile: each call is sent on the pool
            self._loaded = set()
            for script, keys, args in calls:
                task = asyncio.create_task(self._eval_awaited(script, keys, args))
                self._fallbacks.add(task)
                task.add_done_callback(self._fallbacks.discard)

    async def _eval_awaited(self, script: str, keys: list[str], args: list[str | int | float]) -> None:
        try:
            await self._pool.eval(script, len(keys), *keys, *args)
        except Exception as exc:  # Redis away: the write is lost, and the log says so
            log.warning("could not run a tally script on %s: %s", keys, exc)

    async def _incr_awaited(self, key: str, fields: tuple[str, ...]) -> None:
        try:
            async with self._pool.pipeline(transaction=True) as pipe:
                for f in fields:
                    pipe.hincrby(key, f, 1)
                await pipe.execute()
        except Exception as exc:  # Redis away: the count is lost, and the log says so
            log.warning("could not count %s %s: %s", key, fields, exc)

    async def aclose(self) -> None:
        self._flush()
        if self._fallbacks:
            await asyncio.wait(self._fallbacks, timeout=self._timeout_s)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._drain is not None:
            self._drain.cancel()

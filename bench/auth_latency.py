"""What a key costs per request: median and p99 latency of ``GET /v1/jobs/{id}`` with and without auth, same run.

Two uvicorn servers of the same app, in separate processes started the same way (this script's ``--serve``):
one as shipped, one whose ``authenticate`` dependency is replaced by FastAPI's ``app.dependency_overrides`` with
a fixed admin ``Caller`` (here only, never in the product). Any override makes FastAPI rebuild every dependency
per request, so the shipped side overrides ``authenticate`` with itself (see ``serve``); ``--calibrate`` runs
two shipped servers to show the method's own bias. One keep-alive client per server; requests are
sent one at a time, alternating between the servers (and which goes first), so both see the same machine.

    python bench/auth_latency.py [--requests 2000] [--redis-url redis://127.0.0.1:6379/14]

Writes bench/results/auth_latency.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._stack import RESULTS, flush_db  # noqa: E402
from service.deps import RedisDep, SettingsDep  # noqa: E402
from service.ports import free_port, wait_http  # noqa: E402

ENDPOINTS = '{"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}}'  # no worker: nothing calls it


def serve(port: int, open_: bool) -> None:
    """One server, as ``skillmix serve`` runs it; ``open_``: every request is a fixed admin's, no key read."""
    import uvicorn

    from schemas.settings import get_settings
    from schemas.teams import Caller, Role
    from service.app import create_app
    from service.auth import BEARER, authenticate
    from workers import logs

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)
    app = create_app(settings)
    # Any override makes FastAPI rebuild every dependency of a route on each request (signature introspection,
    # about a millisecond here). So both servers override ``authenticate``, with functions of the same
    # parameters (the same rebuilding): the shipped one with itself, the open one with a fixed admin that reads
    # nothing. The difference is what the key costs: the failure-counter read, the key lookup, the hash check.
    if open_:
        admin = Caller(key_id="bench", team="bench", role=Role.ADMIN, name="bench")

        async def fixed_admin(
            request: Request,
            redis: RedisDep,
            settings: SettingsDep,
            _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
        ) -> Caller:
            return admin

        app.dependency_overrides[authenticate] = fixed_admin
    else:
        app.dependency_overrides[authenticate] = authenticate
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)


async def _make_key(redis_url: str) -> str:
    from redis.asyncio import Redis

    from schemas.teams import Role, TeamCreate
    from store import teams

    client = Redis.from_url(redis_url)
    try:
        await teams.create_team(client, TeamCreate(name="bench"))
        return (await teams.create_key(client, "bench", Role.MEMBER, "auth latency bench", "cli")).key
    finally:
        await client.aclose()


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per server first")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--force", action="store_true", help="allow flushing db 0")
    parser.add_argument(
        "--calibrate", action="store_true", help="both servers with auth: the difference is the method's own bias"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--open", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.open)
        return

    flush_db(args.redis_url, args.force).close()
    key = asyncio.run(_make_key(args.redis_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLMIX_")}
    env.update(
        SKILLMIX_REDIS_URL=args.redis_url,
        SKILLMIX_ENDPOINTS=ENDPOINTS,
        SKILLMIX_DEFAULT_ENDPOINT="fake",
        SKILLMIX_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls: dict[str, str] = {}
        for name, flags in (("auth", []), ("open", [] if args.calibrate else ["--open"])):
            port = free_port()
            cmd = [sys.executable, __file__, "--serve", str(port), *flags]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True))
            urls[name] = f"http://127.0.0.1:{port}"
            wait_http(urls[name] + "/healthz", procs[-1])
        headers = {"Authorization": f"Bearer {key}"}
        submitted = httpx.post(
            f"{urls['auth']}/v1/jobs",
            json={"recipe": "instruct", "skill_set": "starter@1", "count": 1},
            headers=headers,
        )
        submitted.raise_for_status()
        job_id = submitted.json()["id"]
        clients = {
            "auth": httpx.Client(base_url=urls["auth"], headers=headers, timeout=10),
            "open": httpx.Client(base_url=urls["open"], headers=headers if args.calibrate else {}, timeout=10),
        }
        times: dict[str, list[float]] = {"auth": [], "open": []}
        for i in range(args.warmup + args.requests):
            order = ("auth", "open") if i % 2 == 0 else ("open", "auth")
            for name in order:
                start = time.perf_counter()
                response = clients[name].get(f"/v1/jobs/{job_id}")
                elapsed = time.perf_counter() - start
                assert response.status_code == 200, (name, response.status_code, response.text)
                if i >= args.warmup:
                    times[name].append(elapsed * 1000)
        for client in clients.values():
            client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    stats = {n: (statistics.median(t), _percentile(t, 99)) for n, t in times.items()}
    (auth_median, auth_p99), (open_median, open_p99) = stats["auth"], stats["open"]
    lines = [
        f"GET /v1/jobs/{{id}}: {args.requests} timed requests per server after {args.warmup} warm-up, sequential,",
        "one keep-alive client per server, alternating; same app, same run; the 'without' server's authenticate",
        "dependency replaced (dependency_overrides) by a fixed admin caller.",
        f"machine: {platform.platform()}, {os.cpu_count()} cores; Redis {args.redis_url}; "
        f"load average at the end {os.getloadavg()[0]:.2f} (other work on the machine widens both)",
        "",
        f"with auth    median {auth_median:.3f} ms   p99 {auth_p99:.3f} ms",
        f"without auth median {open_median:.3f} ms   p99 {open_p99:.3f} ms",
        f"overhead     median {auth_median - open_median:+.3f} ms   p99 {auth_p99 - open_p99:+.3f} ms",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.calibrate:
        (RESULTS / "auth_latency.txt").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

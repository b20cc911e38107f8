"""Racing the running-jobs quota: many concurrent submits against a team limited to a few unfinished jobs.

    python bench/quota_race.py [--runs 20] [--concurrent 50] [--limit 3] [--apis 2]

Starts ``--apis`` API processes (no worker, so admitted jobs stay queued and hold their slots) on a Redis db of
its own (flushed first; db 0 only with --force). Each run creates a fresh team with ``max_running_jobs=--limit``
and a member key (``store.teams``, as the operator CLI does), then fires ``--concurrent`` ``POST /v1/jobs`` at
once (httpx.AsyncClient, asyncio.gather; requests dealt round-robin over the API processes) and counts the
answers. Checks per run: never more than ``--limit`` admitted (201), every other answer a 429 with Retry-After
naming ``max_running_jobs``, and Redis holds exactly the admitted jobs (the team's running set and job listing,
no job keys of refused submits). Writes a table to bench/results/quota_race.txt (``--out``) and exits 1 when
any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _stack import RESULTS, Stack, flush_db, loadavg, service_env, source_info

from schemas.teams import Role, TeamCreate
from store import keys, teams

# no worker runs, so no call is ever sent: the endpoint only has to resolve at submit
ENDPOINTS = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}}
BODY = {"recipe": "prompts", "prompts": ["Say one thing about quotas."] * 4, "chunk_size": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=50)
    p.add_argument("--limit", type=int, default=3, help="the team's max_running_jobs")
    p.add_argument("--apis", type=int, default=2, help="API processes the submits are dealt over")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--out", type=Path, default=RESULTS / "quota_race.txt")
    return p.parse_args(argv)


async def one_run(redis: Redis, apis: list[str], team: str, args: argparse.Namespace) -> dict[str, Any]:
    await teams.create_team(redis, TeamCreate(name=team, max_running_jobs=args.limit))
    key = (await teams.create_key(redis, team, Role.MEMBER, "quota race", "cli")).key
    limits = httpx.Limits(max_connections=args.concurrent, max_keepalive_connections=args.concurrent)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(client.post(f"{apis[i % len(apis)]}/v1/jobs", json=BODY) for i in range(args.concurrent))
        )
        wall = time.perf_counter() - started
    admitted = [a.json()["id"] for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code == 429]
    others = sorted({a.status_code for a in answers} - {201, 429})
    well_formed = all(
        a.headers.get("retry-after")
        and a.json().get("quota") == "max_running_jobs"
        and a.json().get("limit") == args.limit
        for a in refused
    )
    running = {m.decode() for m in await redis.zrange(keys.team_running(team), 0, -1)}
    listed = {m.decode() for m in await redis.zrange(keys.team_jobs(team), 0, -1)}
    stored = running == listed == set(admitted)
    ok = len(admitted) <= args.limit and len(admitted) + len(refused) == args.concurrent and well_formed and stored
    return {
        "team": team,
        "admitted": len(admitted),
        "refused_429": len(refused),
        "other": others,
        "wall_s": wall,
        "stored_ok": stored,
        "ok": ok,
    }


async def race(apis: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    redis = Redis.from_url(args.redis_url)
    try:
        return [await one_run(redis, apis, f"race{i:02d}", args) for i in range(args.runs)]
    finally:
        await redis.aclose()


def write(results: list[dict[str, Any]], args: argparse.Namespace, load: tuple[float, float]) -> str:
    admitted = [r["admitted"] for r in results]
    walls = sorted(r["wall_s"] for r in results)
    lines = [
        f"# bench/quota_race.py: {args.concurrent} concurrent POST /v1/jobs against max_running_jobs={args.limit}, "
        f"{args.runs} runs (a fresh team each), {args.apis} API process(es), one Redis ({args.redis_url})",
        f"# source: {source_info(Path(__file__).resolve().parent.parent)}; load average before/after: "
        f"{load[0]:.2f}/{load[1]:.2f}",
        "run  team     admitted  429s  other  stored_ok  wall_s",
    ]
    for i, r in enumerate(results):
        lines.append(
            f"{i:>3}  {r['team']:<7}  {r['admitted']:>8}  {r['refused_429']:>4}  {r['other']!s:>5}  "
            f"{r['stored_ok']!s:>9}  {r['wall_s']:.3f}"
        )
    lines += [
        f"max admitted in a run: {max(admitted)} (limit {args.limit}); runs with exactly {args.limit}: "
        f"{sum(a == args.limit for a in admitted)} of {args.runs}; a 4th admitted: "
        f"{'NEVER' if max(admitted) <= args.limit else 'YES'}",
        f"429s: {sum(r['refused_429'] for r in results)} of {args.runs * args.concurrent}; other statuses: "
        f"{sorted({s for r in results for s in r['other']})}",
        f"wall per run ({args.concurrent} submits): median {walls[len(walls) // 2]:.3f} s, max {walls[-1]:.3f} s",
        f"all checks passed: {all(r['ok'] for r in results)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flush_db(args.redis_url, args.force).close()
    stack = Stack("quota-race")
    stack.guard()
    try:
        env = service_env(args.redis_url, ENDPOINTS, "fake")
        apis = [stack.api(env) for _ in range(args.apis)]
        load_before = loadavg()
        results = asyncio.run(race(apis, args))
        text = write(results, args, (load_before, loadavg()))
    finally:
        stack.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

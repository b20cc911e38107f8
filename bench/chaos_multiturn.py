"""Chaos on multi-turn items: SIGKILL a random worker every 2-6 s, restart it, and count what was paid twice.

    python bench/chaos_multiturn.py [--count 150] [--workers 3] [--redis-url redis://127.0.0.1:6379/11]

Starts ``python -m tests.fake_llm`` (``--rpm``, 300-500 ms latency), an API and ``--workers`` workers on a
Redis db of its own (flushed first), posts the starter skill set and submits an ``instruct`` job (write,
critique, refine: 3+ calls per item) of ``--count`` examples in chunks of 8. Every 2-6 s a random worker is
frozen (SIGSTOP), the fake's stats are read, and it is SIGKILLed and replaced. The fake counts a request as
``repaid`` when it had already answered the identical request (model, messages, every parameter) with 200.

Prints one JSON line: ``accepted`` (stored), ``duplicates`` (indexes or instructions stored twice),
``requests`` and ``repaid`` at the fake, ``in_flight_at_kills`` (the fake's in-flight calls, all workers',
summed over the kills), ``answered_before_kills`` (answers the fake sent in the 250 ms before each kill,
which may not have reached the worker yet), ``kills``, ``seconds``, the job's ``llm_calls`` and ``replayed``.
Exit status 0 only when exactly ``count`` were accepted, none twice, ``llm_calls`` equals the fake's request
count and ``repaid <= in_flight_at_kills + answered_before_kills``. ``--no-replay`` turns the cache off
(``SKILLMIX_REPLAY_MAX_MB=0``) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import REPO, Stack, fake_stats, flush_db, loadavg, save, service_env, source_info

STARTER = REPO / "service" / "data" / "starter-skills.json"
ENDPOINT = "fake"
TRANSIT_S = 0.25
FAST = {"SKILLMIX_HEARTBEAT_S": "1", "SKILLMIX_STALL_S": "1", "SKILLMIX_CLAIM_IDLE_MS": "2000"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=150)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rpm", type=int, default=1200, help="the fake's limit and the endpoint's (fleet-wide) rpm")
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--jitter-ms", type=float, default=200.0)
    p.add_argument("--min-gap-s", type=float, default=2.0)
    p.add_argument("--max-gap-s", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=None, help="job seed and kill schedule (default: random)")
    p.add_argument("--no-replay", action="store_true", help="run with the replay cache off, for comparison")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on the job, seconds")
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def status(api: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def stored(api: str, job_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/v1/jobs/{job_id}/examples", params={"status": "accepted"}, timeout=60)
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line]


def stats(base_url: str) -> dict[str, Any]:
    data = fake_stats(base_url)
    assert data is not None, "the fake endpoint stopped answering"
    return data


def run(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    rng = random.Random(seed)
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("chaos-multiturn")
    stack.guard()
    try:
        base_url = stack.fake(rpm=args.rpm, latency_ms=args.latency_ms, latency_jitter_ms=args.jitter_ms)
        endpoint = {"base_url": base_url, "model": "fake-model", "rpm": args.rpm, "tpm": 1_000_000_000,
                    "timeout_s": 30.0, "json_schema": True}  # fmt: skip
        extra = {**FAST, **({"SKILLMIX_REPLAY_MAX_MB": "0"} if args.no_replay else {})}
        env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT, **extra)
        api = stack.api(env)
        for _ in range(args.workers):
            stack.worker(env)
        stack.wait_workers(redis)
        httpx.post(f"{api}/v1/skill-sets", json=json.loads(STARTER.read_text()), timeout=30).raise_for_status()
        started = time.monotonic()
        spec = {"recipe": "instruct", "skill_set": "starter@1", "count": args.count, "chunk_size": 8, "seed": seed}
        response = httpx.post(f"{api}/v1/jobs", json=spec, timeout=30)
        response.raise_for_status()
        job_id = response.json()["id"]
        kills = in_flight = transit = 0
        while time.monotonic() - started < args.timeout:
            wake = time.monotonic() + rng.uniform(args.min_gap_s, args.max_gap_s)
            while time.monotonic() < wake and status(api, job_id)["state"] not in ("completed", "failed", "cancelled"):
                time.sleep(0.1)
            if status(api, job_id)["state"] in ("completed", "failed", "cancelled"):
                break
            victim = stack.workers.pop(rng.randrange(len(stack.workers)))
            before = stats(base_url)
            time.sleep(TRANSIT_S)
            os.kill(victim.pid, signal.SIGSTOP)  # frozen: sends nothing more, keeps nothing more
            at_kill = stats(base_url)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            in_flight += at_kill["in_flight"]
            transit += at_kill["ok"] - before["ok"]
            kills += 1
            stack.worker(env)
        final = status(api, job_id)
        seconds = round(time.monotonic() - started, 1)
        examples = stored(api, job_id)
        fake = stats(base_url)
        indexes = [e["index"] for e in examples]
        instructions = [e["instruction"] for e in examples]
        duplicates = (len(indexes) - len(set(indexes))) + (len(instructions) - len(set(instructions)))
        counters = final["counters"]
        result = {
            "bench": "chaos_multiturn",
            "replay": not args.no_replay,
            "seed": seed,
            "state": final["state"],
            "count": args.count,
            "accepted": len(examples),
            "duplicates": duplicates,
            "requests": fake["requests"],
            "repaid": fake["repaid"],
            "in_flight_at_kills": in_flight,
            "answered_before_kills": transit,
            "kills": kills,
            "seconds": seconds,
            "llm_calls": counters["llm_calls"],
            "replayed": counters.get("replayed", 0),
            "rate_limited_at_fake": fake["rate_limited"],
            "loadavg": loadavg(),
            **source_info(REPO),
        }
        result["ok"] = (
            final["state"] == "completed"
            and len(examples) == args.count
            and duplicates == 0
            and counters["llm_calls"] == fake["requests"]
            and (args.no_replay or fake["repaid"] <= in_flight + transit)
        )
        return result
    finally:
        stack.stop()


def main() -> None:
    args = parse_args()
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.save:
        save(args.save, line)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()

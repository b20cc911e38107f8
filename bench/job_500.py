"""A whole 500-example ``instruct`` job against the fake endpoint with planted faults, checked end to end.

    python bench/job_500.py [--rpm 600] [--latency-ms 300]

Starts ``python -m tests.fake_llm`` (the given rpm and latency; 3% exact duplicates, 3% near duplicates,
3% shirkers planted), an API and one worker on a Redis db of its own (flushed first), posts the starter
skill set, submits an instruct job of 500 examples with the endpoint's rpm equal to the fake's, waits, and
checks the accepted examples: exactly 500, no exact duplicates (``normalise_text`` of the instruction), no
near duplicates (pairwise ``jaccard`` < 0.7), and under 1% of the calls answered 429 (fake /admin/stats).
Prints one JSON line; exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import REPO, Stack, cpu_seconds, fake_stats, flush_db, loadavg, report, service_env, source_info

STARTER = REPO / "service" / "data" / "starter-skills.json"
NEAR = 0.7
ENDPOINT = "fake"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rpm", type=int, default=600, help="the fake's limit and the endpoint's rpm")
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=0.03, help="each planted fault rate (exact, near, shirker)")
    p.add_argument(
        "--json-schema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="endpoint supports response_format json_schema (as the tests configure the fake)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--timeout", type=float, default=1200.0, help="bound on the whole run, seconds")
    p.add_argument("--src", type=Path, default=REPO, help="product tree to run (default: this checkout)")
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("job500", args.src)
    stack.guard()
    try:
        base_url = stack.fake(
            rpm=args.rpm,
            latency_ms=args.latency_ms,
            exact_dup_rate=args.rate,
            near_dup_rate=args.rate,
            shirker_rate=args.rate,
        )
        endpoint = {
            "base_url": base_url,
            "model": "fake-model",
            "rpm": args.rpm,
            "tpm": 1_000_000_000,
            "timeout_s": 30.0,
            "json_schema": args.json_schema,
        }
        env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT)
        api = stack.api(env)
        worker = stack.worker(env)
        stack.wait_workers(redis)
        httpx.post(f"{api}/v1/skill-sets", json=json.loads(STARTER.read_text()), timeout=30).raise_for_status()
        cpu0 = cpu_seconds(worker.pid)

        started, load0 = time.monotonic(), loadavg()
        spec = {"recipe": "instruct", "skill_set": "starter@1", "count": args.count, "seed": args.seed}
        response = httpx.post(f"{api}/v1/jobs", json=spec, timeout=30)
        if response.status_code != 201:
            raise RuntimeError(f"submit failed: {response.status_code} {response.text[:500]}")
        job_id = response.json()["id"]
        while True:
            stack.check_alive()
            status = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
            if status["state"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished within {args.timeout:.0f}s: {status['counters']}")
            time.sleep(1.0)
        seconds, load1 = time.monotonic() - started, loadavg()
        worker_cpu = cpu_seconds(worker.pid) - cpu0
        stats = fake_stats(base_url) or {}
        body = httpx.get(f"{api}/v1/jobs/{job_id}/examples", params={"status": "accepted"}, timeout=120)
        body.raise_for_status()
        accepted = [json.loads(line) for line in body.text.splitlines() if line]
    finally:
        stack.stop()

    sys.path.insert(1, str(args.src))  # the checks use the product's own normalisation and Jaccard
    from workers.curate.dedup import jaccard
    from workers.curate.quality import normalise_text

    texts = [normalise_text(e["instruction"]) for e in accepted]
    exact_dups = len(texts) - len(set(texts))
    worst, near_pairs = 0.0, 0
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            j = jaccard(a, b)
            worst = max(worst, j)
            near_pairs += j >= NEAR
    c = status["counters"]
    requests, limited = int(stats.get("requests", 0)), int(stats.get("rate_limited", 0))
    pct = 100 * limited / requests if requests else 0.0
    checks = {
        "completed": status["state"] == "completed",
        "exactly_count_accepted": c["accepted"] == args.count and len(accepted) == args.count,
        "distinct_indexes": len({e["index"] for e in accepted}) == len(accepted),
        "no_exact_duplicates": exact_dups == 0,
        "no_near_duplicates": near_pairs == 0,
        "rate_limited_under_1pct": pct < 1.0,
    }
    return {
        "ok": all(checks.values()),
        "accepted": len(accepted),
        "exact_duplicates": exact_dups,
        "near_duplicate_pairs": near_pairs,
        "max_jaccard": round(worst, 3),
        "calls": requests,
        "rate_limited": limited,
        "rate_limited_pct": round(pct, 3),
        "seconds": round(seconds, 1),
        "calls_per_s": round(requests / seconds, 2) if seconds else None,
        "allowed_calls_per_s": round(args.rpm / 60, 2),
        "rpm": args.rpm,
        "latency_ms": args.latency_ms,
        "state": status["state"],
        "message": status["message"],
        "processed": c["processed"],
        "rejected_by_reason": c["rejected_by_reason"],
        "job_llm_calls": c["llm_calls"],
        "job_rate_limited": c["rate_limited"],
        "planted": stats.get("planted"),
        "fake_max_rps_1s": stats.get("max_rps_1s"),
        "worker_cpu_s": round(worker_cpu, 1),
        "loadavg_1m": [load0, load1],
        "checks": checks,
        **source_info(args.src),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: run(args), args.save, lambda r: bool(r["ok"]))


if __name__ == "__main__":
    raise SystemExit(main())

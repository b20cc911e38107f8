"""Many worker processes under ONE endpoint limit: the fleet limiter, measured at the endpoint.

    python bench/fleet.py --workers 8 --rpm 6000

Starts its own fake endpoint (``tests.fake_llm``, rpm enforced with 429s, --latency-ms) unless --base-url is
given, an API process and W worker processes on a Redis db of its own (flushed first), then submits ONE prompts
job (quality and dedup off). EVERY worker is configured with the endpoint's FULL rpm: the fleet limiter in Redis
splits it. Prints one JSON line:

  endpoint_ok_per_s       calls the endpoint admitted per second in the steady window (fake: its own counts,
                          sampled every second; other endpoints: the job's llm_calls - rate_limited)
  allowed_per_s, ratio    rpm / 60 and endpoint_ok_per_s / allowed_per_s
  rate_limited_pct        429s / all requests the endpoint saw, whole run
  steady window           from 10 s after the first call to the last second before the job's last 5% of calls
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import REPO, Stack, cpu_seconds, fake_stats, flush_db, loadavg, report, service_env, source_info

ENDPOINT = "fleet"
SETTLE_S = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--rpm", type=int, default=6000, help="the endpoint's requests/min (fake: enforced)")
    p.add_argument("--calls", type=int, default=None, help="prompts in the job (default: 90 s worth of rpm)")
    p.add_argument("--base-url", default=None, help="an endpoint of your own instead of the fake")
    p.add_argument("--model", default="fake-model")
    p.add_argument("--api-key-env", default=None)
    p.add_argument("--latency-ms", type=float, default=300.0, help="fake endpoint latency")
    p.add_argument("--max-tokens", type=int, default=128, help="above the fake's 80-word answers (no cut-offs)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--src", type=Path, default=REPO)
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    allowed = args.rpm / 60
    calls = args.calls or int(allowed * 90)
    deadline = time.monotonic() + max(180.0, 3 * calls / allowed + 90)
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("fleet", args.src)
    stack.guard()
    samples: list[tuple[float, int, int, int]] = []  # (t, endpoint requests, endpoint 429s, job llm_calls)
    try:
        base_url = args.base_url or stack.fake(rpm=args.rpm, latency_ms=args.latency_ms)
        endpoint = {
            "base_url": base_url,
            "model": args.model,
            "api_key_env": args.api_key_env,
            "rpm": args.rpm,  # the full limit in every worker: the fleet limiter shares it
            "tpm": 1_000_000_000,
            "timeout_s": 60.0,
        }
        env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT)
        api = stack.api(env)
        for _ in range(args.workers):
            stack.worker(env)
        stack.wait_workers(redis)
        before = fake_stats(base_url)
        spec = {
            "recipe": "prompts",
            "prompts": [f"Fleet prompt {i}: one short sentence about {i}." for i in range(calls)],
            "dedup": {"exact": False, "near": False},
            "quality": {"enabled": False},
            "params": {"max_tokens": args.max_tokens, "temperature": 0.7},
        }
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in stack.workers}
        response = httpx.post(f"{api}/v1/jobs", json=spec, timeout=120)
        if response.status_code != 201:
            raise RuntimeError(f"submit failed: {response.status_code} {response.text[:300]}")
        job_id = response.json()["id"]
        counters, meta = f"skillmix:job:{job_id}:counters", f"skillmix:job:{job_id}:meta"
        state = "queued"
        while state not in ("completed", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished (state {state}); logs in {stack.logdir}")
            stats = fake_stats(base_url) if before is not None else None
            job_calls = int(redis.hget(counters, "llm_calls") or 0)
            job_429 = int(redis.hget(counters, "rate_limited") or 0)
            if stats is not None and before is not None:
                requests = stats["requests"] - before["requests"]
                limited = stats["rate_limited"] - before["rate_limited"]
            else:
                requests, limited = job_calls, job_429
            samples.append((time.monotonic(), requests, limited, job_calls))
            stack.check_alive()
            state = (redis.hget(meta, "state") or b"queued").decode()
            time.sleep(1.0)
        cpu = sum(cpu_seconds(pid) - c0 for pid, c0 in cpu0.items())
        status = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
        after = fake_stats(base_url)
    finally:
        stack.stop()

    if after is not None and before is not None:
        total_requests = after["requests"] - before["requests"]
        total_limited = after["rate_limited"] - before["rate_limited"]
    else:
        total_requests, total_limited = samples[-1][1], samples[-1][2]
    started = next(t for t, req, _, _ in samples if req > 0)
    final_ok = total_requests - total_limited
    window = [(t, req - lim) for t, req, lim, _ in samples if t >= started + SETTLE_S and req - lim <= 0.95 * final_ok]
    if len(window) >= 2:
        (t0, ok0), (t1, ok1) = window[0], window[-1]
        ok_per_s = (ok1 - ok0) / (t1 - t0)
    else:
        ok_per_s = float("nan")
    c = status["counters"]
    result: dict[str, Any] = {
        "workers": args.workers,
        "rpm": args.rpm,
        "allowed_per_s": round(allowed, 2),
        "endpoint_ok_per_s": round(ok_per_s, 2),
        "ratio": round(ok_per_s / allowed, 3),
        "endpoint_requests": total_requests,
        "endpoint_rate_limited": total_limited,
        "rate_limited_pct": round(100 * total_limited / total_requests, 3) if total_requests else 0.0,
        "steady_window_s": round(window[-1][0] - window[0][0], 1) if len(window) >= 2 else 0.0,
        "state": status["state"],
        "accepted": c["accepted"],
        "message": status["message"],
        "llm_calls": c["llm_calls"],
        "job_rate_limited": c["rate_limited"],
        "worker_cpu_ms_per_call": round(1000 * cpu / max(1, c["llm_calls"]), 2),
        "fake_max_rps_1s": after.get("max_rps_1s") if after else None,
        "measured_at": "endpoint" if after is not None else "job counters",
        "loadavg_1m": loadavg(),
    }
    result.update(source_info(args.src))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: run(args), args.save, lambda r: r["state"] == "completed")


if __name__ == "__main__":
    raise SystemExit(main())

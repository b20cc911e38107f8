"""Throughput of one ``prompts`` job against any OpenAI-compatible endpoint, under its rate limit.

    python bench/throughput.py --base-url http://127.0.0.1:PORT/v1 --rpm 6000 --calls 6000

Starts its own API process and W worker processes on a Redis db of its own (flushed first; db 0 is
refused without --force), submits ONE prompts job of M distinct prompts through the API (dedup and
quality off, small max_tokens), samples the job's counters in Redis every 50 ms and prints one JSON line:

  seconds               t_last - t_first: t_first = first sample with llm_calls > 0, t_last = first
                        sample where llm_calls reached its final value (both from the job's counters)
  achieved_calls_per_s  (calls - calls already counted at t_first) / seconds
  allowed_calls_per_s   rpm / 60;  ratio = achieved / allowed
  rate_limited(_pct)    429s the job's client saw (counter rate_limited), share of calls (HTTP attempts)
  worker_cpu_s_per_1k_calls  user+system CPU of all worker processes from "ready" to "job done", per 1,000 calls
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import (
    REPO,
    Stack,
    cpu_seconds,
    fake_stats,
    flush_db,
    loadavg,
    machine_busy,
    report,
    service_env,
    source_info,
)

POLL_S = 0.05
ENDPOINT = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="endpoint root, up to and including /v1")
    p.add_argument("--rpm", type=int, required=True, help="the endpoint's requests/min limit")
    p.add_argument("--calls", type=int, required=True, help="prompts in the job (= LLM calls without 429s)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--model", default=None, help="model name (default: first of GET /models, else fake-model)")
    p.add_argument("--api-key-env", default=None, help="env var holding the API key (passed to the workers)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="endpoint max_concurrency per worker process (default 0: the product derives it from the rpm)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument(
        "--max-tokens", type=int, default=128, help="per call; above the fake's 80-word answers (cut-offs are rejected)"
    )
    p.add_argument("--chunk-size", type=int, default=None, help="SKILLMIX_CHUNK_SIZE (default: product default)")
    p.add_argument("--worker-max-jobs", type=int, default=None, help="SKILLMIX_WORKER_MAX_JOBS")
    p.add_argument("--curate-batch", type=int, default=None, help="SKILLMIX_CURATE_BATCH")
    p.add_argument(
        "--rpm-split",
        choices=("split", "full"),
        default="split",
        help="each worker's limiter gets rpm/W (split, default) or the full rpm: limiters are per process",
    )
    p.add_argument("--timeout", type=float, default=None, help="bound on the whole run (default from calls/rpm)")
    p.add_argument("--trace", default=None, help="write the (seconds, llm_calls) samples as CSV here")
    p.add_argument("--src", type=Path, default=REPO, help="product tree to run (default: this checkout)")
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def pick_model(base_url: str, api_key_env: str | None) -> str:
    import os

    key = os.environ.get(api_key_env) if api_key_env else None
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        data = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=10).json()
        return str(data["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return "fake-model"


def product_concurrency(src: Path, endpoint: dict[str, Any]) -> int:
    """The max_concurrency the workers will use: the product's own EndpointSettings resolves 0 (derived)."""
    sys.path.insert(1, str(src))
    from schemas.settings import EndpointSettings

    return EndpointSettings.model_validate(endpoint).max_concurrency


def steady_rate(samples: list[tuple[float, int]], lo: float, hi: float) -> float | None:
    """Least-squares slope of llm_calls over time, using only samples between the lo and hi fractions."""
    final = samples[-1][1]
    pts = [(t, c) for t, c in samples if lo * final <= c <= hi * final]
    if len(pts) < 3:
        return None
    mt = sum(t for t, _ in pts) / len(pts)
    mc = sum(c for _, c in pts) / len(pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (c - mc) for t, c in pts) / den if den else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    allowed = args.rpm / 60
    timeout = args.timeout or max(120.0, 3 * args.calls / allowed + 90)
    deadline = time.monotonic() + timeout
    redis = flush_db(args.redis_url, args.force)
    model = args.model or pick_model(args.base_url, args.api_key_env)
    worker_rpm = max(1, args.rpm // args.workers) if args.rpm_split == "split" else args.rpm
    endpoint = {
        "base_url": args.base_url,
        "model": model,
        "api_key_env": args.api_key_env,
        "rpm": worker_rpm,
        "tpm": 1_000_000_000,
        "max_concurrency": args.concurrency,
        "timeout_s": 60.0,
    }
    extra = {
        "SKILLMIX_CHUNK_SIZE": None if args.chunk_size is None else str(args.chunk_size),
        "SKILLMIX_WORKER_MAX_JOBS": None if args.worker_max_jobs is None else str(args.worker_max_jobs),
        "SKILLMIX_CURATE_BATCH": None if args.curate_batch is None else str(args.curate_batch),
    }
    env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT, **extra)  # type: ignore[arg-type]
    effective_concurrency = product_concurrency(args.src, endpoint)

    stack = Stack("throughput", args.src)
    stack.guard()
    try:
        api = stack.api(env)
        for _ in range(args.workers):
            stack.worker(env)
        stack.wait_workers(redis)
        fake_before = fake_stats(args.base_url)

        prompts = [f"Bench prompt {i}: write one short sentence about the number {i}." for i in range(args.calls)]
        spec = {
            "recipe": "prompts",
            "prompts": prompts,
            "dedup": {"exact": False, "near": False},
            "quality": {"enabled": False},
            "params": {"max_tokens": args.max_tokens, "temperature": 0.7},
        }
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in stack.workers}
        api_cpu0 = cpu_seconds(stack.api_proc.pid) if stack.api_proc else 0.0
        busy0, load0 = machine_busy(), loadavg()
        response = httpx.post(f"{api}/v1/jobs", json=spec, timeout=60)
        if response.status_code != 201:
            raise RuntimeError(f"submit failed: {response.status_code} {response.text[:500]}")
        job_id = response.json()["id"]
        counters_key = f"skillmix:job:{job_id}:counters"
        meta_key = f"skillmix:job:{job_id}:meta"

        samples: list[tuple[float, int]] = []
        state = "queued"
        last_check = 0.0
        while True:
            now = time.monotonic()
            calls = int(redis.hget(counters_key, "llm_calls") or 0)
            samples.append((now, calls))
            if now - last_check > 1.0:
                last_check = now
                stack.check_alive()
                state = (redis.hget(meta_key, "state") or b"queued").decode()
                if state in ("completed", "failed", "cancelled"):
                    break
            if now > deadline:
                raise TimeoutError(f"job {job_id} not finished within {timeout:.0f}s (state {state}, calls {calls})")
            time.sleep(POLL_S)

        busy1, load1 = machine_busy(), loadavg()
        cpu1 = {pid: cpu_seconds(pid) for pid in cpu0}
        api_cpu1 = cpu_seconds(stack.api_proc.pid) if stack.api_proc else 0.0
        status = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
        fake_after = fake_stats(args.base_url)
    finally:
        stack.stop()

    if args.trace:
        t0 = samples[0][0]
        Path(args.trace).write_text("".join(f"{t - t0:.3f},{n}\n" for t, n in samples))
    c = status["counters"]
    calls = int(c["llm_calls"])
    first = next(i for i, (_, n) in enumerate(samples) if n > 0)
    last = next(i for i, (_, n) in enumerate(samples) if n >= calls)
    t_first, c_first = samples[first]
    t_last = samples[last][0]
    seconds = t_last - t_first
    achieved = (calls - c_first) / seconds if seconds > 0 else float("nan")
    steady = steady_rate(samples[: last + 1], 0.1, 0.9)
    worker_cpu = sum(cpu1[pid] - cpu0[pid] for pid in cpu0)
    rate_limited = int(c["rate_limited"])
    result: dict[str, Any] = {
        "calls": calls,
        "seconds": round(seconds, 2),
        "achieved_calls_per_s": round(achieved, 2),
        "allowed_calls_per_s": round(allowed, 2),
        "ratio": round(achieved / allowed, 3),
        "rate_limited": rate_limited,
        "rate_limited_pct": round(100 * rate_limited / calls, 3) if calls else 0.0,
        "worker_cpu_s_per_1k_calls": round(1000 * worker_cpu / calls, 2) if calls else None,
        "workers": args.workers,
        "rpm": args.rpm,
        # extras
        "state": status["state"],
        "accepted": c["accepted"],
        "rejected_by_reason": c["rejected_by_reason"],
        "message": status["message"],
        "steady_calls_per_s": None if steady is None else round(steady, 2),
        "calls_at_t_first": c_first,
        "ok_calls_per_s": round((calls - rate_limited - c_first) / seconds, 2) if seconds > 0 else None,
        "concurrency": effective_concurrency,
        "concurrency_arg": args.concurrency,
        "rpm_per_worker": worker_rpm,
        "chunk_size": args.chunk_size,
        "worker_max_jobs": args.worker_max_jobs,
        "api_cpu_s": round(api_cpu1 - api_cpu0, 2),
        "loadavg_1m": [load0, load1],
        "machine_cpu_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]), 1),
    }
    result.update(source_info(args.src))
    if fake_before is not None and fake_after is not None:
        result["fake_requests"] = fake_after["requests"] - fake_before["requests"]
        result["fake_rate_limited"] = fake_after["rate_limited"] - fake_before["rate_limited"]
        result["fake_max_rps_1s"] = fake_after.get("max_rps_1s")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: run(args), args.save, lambda r: r["state"] == "completed")


if __name__ == "__main__":
    raise SystemExit(main())

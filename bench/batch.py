"""Provider batch mode (issue 17): a 10,000-prompt job and a 500-item instruct job in batch mode, each beside the
same job online, against one fake endpoint with a 3-second batch latency.

    python bench/batch.py [--prompts 10000] [--instruct 500] [--workers 2]

Starts ``python -m tests.fake_llm`` (Files + Batch API, ``--batch-latency-s 3``; online route at ``--rpm`` and
``--latency-ms``) unless ``--base-url`` is given, an API and W worker processes on a Redis db of its own (flushed
first), posts the starter skill set, and runs, one after the other:

1. ``prompts``: N distinct prompts (dedup and quality off, as ``throughput.py``) with ``"mode": "batch"``, then the
   same spec with ``"mode": "online"`` (same prompts, same params: the fake answers the same tokens);
2. ``instruct`` on ``starter@1``: N items (seed 7) in batch mode, then online (``--online-instruct M``: the first
   M items of the same seed; M < N scales the online cost per processed item, and the JSON says so).

The endpoint has prices, so ``cost_usd`` is real; the instruct jobs run with ``--cutoff-rate`` of cut-off answers
(rewrite turns: 3 to 5 turns per conversation). Worker CPU is user+system of every worker process from submit to
the job's completion. Prints one JSON line (keys: bench/README.md, "batch.py"); exit status 0 only when every
check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis as sync_redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import (
    REPO,
    Stack,
    cpu_seconds,
    fake_stats,
    flush_db,
    loadavg,
    member_key,
    report,
    service_env,
    source_info,
)

STARTER = REPO / "service" / "data" / "starter-skills.json"
ENDPOINT = "bench"
POLL_S = 0.25
# the fake's counters a job moves (deltas between before and after each job)
FAKE_KEYS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "batch_lines_billed",
    "batch_rebilled",
    "batch_prompt_tokens",
    "batch_completion_tokens",
    "batches_created",
    "batch_lines_failed",
    "files_uploaded",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=10_000, help="items of the prompts job (0: skip it)")
    p.add_argument("--instruct", type=int, default=500, help="items of the instruct job (0: skip it)")
    p.add_argument(
        "--online-instruct",
        type=int,
        default=None,
        help="items of the online instruct job (default: as --instruct; fewer: its cost is scaled per item)",
    )
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True, help="run the online twins")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--batch-latency-s", type=float, default=3.0, help="the fake's batch creation to completed")
    p.add_argument("--rpm", type=int, default=6000, help="the fake's online limit and the endpoint's rpm")
    p.add_argument("--latency-ms", type=float, default=300.0, help="the fake's online latency")
    p.add_argument("--cutoff-rate", type=float, default=0.1, help="the fake's cut-off answers, instruct jobs only")
    p.add_argument("--gather-s", type=float, default=None, help="SKILLMIX_BATCH_GATHER_S (default: product's)")
    p.add_argument("--poll-s", type=float, default=1.0, help="endpoint batch_poll_s")
    p.add_argument("--chunk-size", type=int, default=None, help="job chunk_size (default: product's)")
    p.add_argument("--max-tokens", type=int, default=128, help="prompts job max_tokens (above the fake's 80 words)")
    p.add_argument("--usd-per-mtok-prompt", type=float, default=2.0)
    p.add_argument("--usd-per-mtok-completion", type=float, default=8.0)
    p.add_argument("--base-url", default=None, help="a real endpoint (…/v1) serving /v1/batches, instead of the fake")
    p.add_argument("--model", default="fake-model")
    p.add_argument("--api-key-env", default=None, help="env var holding the endpoint's API key")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--idle-s", type=float, default=10.0, help="worker CPU measured idle this long first")
    p.add_argument("--timeout", type=float, default=900.0, help="bound on each job, seconds")
    p.add_argument("--src", type=Path, default=REPO, help="product tree to run (default: this checkout)")
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        stack: Stack,
        api: str,
        base_url: str,
        fake: bool,
        client: httpx.Client,
        redis: sync_redis.Redis,
    ) -> None:
        self.args, self.stack, self.api, self.base_url, self.fake = args, stack, api, base_url, fake
        self.client, self.redis = client, redis
        self.idle_cpu_per_s = 0.0

    def measure_idle(self, seconds: float) -> None:
        """Worker CPU per second with nothing to do (arq's poll, heartbeats, the batch manager's tick)."""
        cpu0, t0 = {p.pid: cpu_seconds(p.pid) for p in self.stack.workers}, time.monotonic()
        time.sleep(seconds)
        self.idle_cpu_per_s = sum(cpu_seconds(pid) - c for pid, c in cpu0.items()) / (time.monotonic() - t0)

    def configure(self, **config: Any) -> None:
        if self.fake:
            root = self.base_url.removesuffix("/v1")
            httpx.post(root + "/admin/config", json=config, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return (fake_stats(self.base_url) or {}) if self.fake else {}

    def run_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Submit, wait for completion (and settled counters), and measure wall time and worker CPU."""
        before = self.stats()
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in self.stack.workers}
        started = time.monotonic()
        response = self.client.post(f"{self.api}/v1/jobs", json=spec, timeout=120)
        if response.status_code != 201:
            raise RuntimeError(f"submit failed: {response.status_code} {response.text[:500]}")
        job_id = response.json()["id"]
        deadline = started + self.args.timeout
        wall = None
        while True:
            self.stack.check_alive()
            status = self.client.get(f"{self.api}/v1/jobs/{job_id}", timeout=30).json()
            if status["state"] in ("completed", "failed", "cancelled"):
                wall = wall or time.monotonic() - started
                cpu = sum(cpu_seconds(pid) - c for pid, c in cpu0.items())  # to completion, not to settled
                if status.get("settled", True):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not done in {self.args.timeout:.0f}s: {status['counters']}")
            time.sleep(POLL_S)
        after = self.stats()
        counters = {k.decode(): v.decode() for k, v in self.redis.hgetall(f"skillmix:job:{job_id}:counters").items()}
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in FAKE_KEYS} if self.fake else {}
        return {
            "id": job_id,
            "status": status,
            "counters": counters,
            "wall_s": wall,
            "worker_cpu_s": cpu,
            "fake": delta,
        }

    def batch_files(self, job_id: str) -> list[int]:
        """Lines of each of the job's batch files, in the order they were cut (records stay after they apply)."""
        records = []
        for key in self.redis.scan_iter("skillmix:batch:*", count=1000):
            if key.count(b":") != 2:  # batch:{bid} only, not :file / :lock / submit leases
                continue
            raw = self.redis.get(key)
            record = json.loads(raw) if raw and raw.startswith(b"{") else None
            if record and record.get("job_id") == job_id:
                records.append((record["created_ms"], record["lines"]))
        return [lines for _, lines in sorted(records)]

    def examples(self, job_id: str, which: str) -> list[dict[str, Any]]:
        body = self.client.get(f"{self.api}/v1/jobs/{job_id}/examples", params={"status": which}, timeout=300)
        body.raise_for_status()
        return [json.loads(line) for line in body.text.splitlines() if line]

    def expected_cost(self, prompt: int, completion: int, factor: float) -> float:
        a = self.args
        return (prompt * a.usd_per_mtok_prompt + completion * a.usd_per_mtok_completion) * factor / 1e6


def cpu_figures(bench: Bench, run: dict[str, Any], n: int) -> tuple[float | None, float | None]:
    """Worker CPU-ms per line (or call), raw and net of what the idle workers burn over the same wall time."""
    if not n:
        return None, None
    cpu = run["worker_cpu_s"]
    net = max(0.0, cpu - bench.idle_cpu_per_s * run["wall_s"])
    return round(1000 * cpu / n, 3), round(1000 * net / n, 3)


def summarise(
    bench: Bench, batch: dict[str, Any], online: dict[str, Any] | None, items: int, online_items: int
) -> dict[str, Any]:
    """One job's figures: the batch run, and beside it the online run of the same spec."""
    c, f, raw = batch["status"]["counters"], batch["fake"], batch["counters"]
    processed = int(c["processed"])
    billed = int(f["batch_lines_billed"]) if bench.fake else int(c["llm_calls"])
    per_line, per_line_net = cpu_figures(bench, batch, billed)
    out: dict[str, Any] = {
        "state": batch["status"]["state"],
        "accepted": c["accepted"],
        "processed": processed,
        "planned": int(raw.get("planned", 0)),
        "rejected_by_reason": c["rejected_by_reason"],
        "lines_billed": billed,
        "lines_billed_per_item": round(billed / processed, 4) if processed else None,
        "rebilled": f.get("batch_rebilled") if bench.fake else None,
        "online_requests": f.get("requests") if bench.fake else None,
        "llm_calls": c["llm_calls"],
        "lines_submitted": int(raw.get("batch_lines", 0)),
        "rounds": int(raw.get("batch_rounds", 0)),
        "batches": int(raw.get("batches_done", 0)),
        "fake_batches_created": f.get("batches_created"),
        "lines_per_file": bench.batch_files(batch["id"]),
        "cost_usd": round(c["cost_usd"], 6),
        "wall_s": round(batch["wall_s"], 1),
        "worker_cpu_s": round(batch["worker_cpu_s"], 2),
        "worker_cpu_ms_per_line": per_line,
        "worker_cpu_ms_per_line_net_of_idle": per_line_net,
    }
    if bench.fake:
        out["cost_from_fake_usd"] = round(
            bench.expected_cost(f["batch_prompt_tokens"], f["batch_completion_tokens"], 0.5), 6
        )
    if online is None:
        return out
    oc, of = online["status"]["counters"], online["fake"]
    calls = int(oc["llm_calls"])
    o_processed = int(oc["processed"])
    per_call, per_call_net = cpu_figures(bench, online, calls)
    scaled = online_items != items
    online_cost = oc["cost_usd"] * (processed / o_processed if scaled and o_processed else 1.0)
    out["online"] = {
        "state": online["status"]["state"],
        "items": online_items,
        "accepted": oc["accepted"],
        "processed": o_processed,
        "calls": calls,
        "calls_per_item": round(calls / o_processed, 4) if o_processed else None,
        "cost_usd": round(oc["cost_usd"], 6),
        "cost_scaled_to_batch_items": scaled,
        "wall_s": round(online["wall_s"], 1),
        "worker_cpu_s": round(online["worker_cpu_s"], 2),
        "worker_cpu_ms_per_call": per_call,
        "worker_cpu_ms_per_call_net_of_idle": per_call_net,
    }
    if bench.fake:
        out["online"]["fake_requests"] = of["requests"]
        out["online"]["same_tokens"] = (of["prompt_tokens"], of["completion_tokens"]) == (
            f["batch_prompt_tokens"],
            f["batch_completion_tokens"],
        )
    out["cost_ratio_vs_online"] = round(c["cost_usd"] / online_cost, 4) if online_cost else None
    if processed and o_processed and oc["cost_usd"]:
        out["cost_per_item_ratio_vs_online"] = round((c["cost_usd"] / processed) / (oc["cost_usd"] / o_processed), 4)
    if per_call and per_line is not None:
        out["cpu_per_line_vs_online_call"] = round(per_line / per_call, 3)
    return out


def prompts_spec(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    prompts = [f"Bench prompt {i}: write one short sentence about the number {i}." for i in range(args.prompts)]
    spec: dict[str, Any] = {
        "recipe": "prompts",
        "prompts": prompts,
        "mode": mode,
        "dedup": {"exact": False, "near": False},
        "quality": {"enabled": False},
        "params": {"max_tokens": args.max_tokens, "temperature": 0.7},
    }
    if args.chunk_size:
        spec["chunk_size"] = args.chunk_size
    return spec


def instruct_spec(args: argparse.Namespace, mode: str, count: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"recipe": "instruct", "skill_set": "starter@1", "count": count, "seed": 7, "mode": mode}
    if args.chunk_size:
        spec["chunk_size"] = args.chunk_size
    return spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("batch", args.src)
    stack.guard()
    result: dict[str, Any] = {}
    try:
        fake = args.base_url is None
        if fake:
            base_url = stack.fake(rpm=args.rpm, latency_ms=args.latency_ms, batch_latency_s=args.batch_latency_s)
        else:
            base_url = args.base_url
        endpoint = {
            "base_url": base_url,
            "model": args.model,
            "api_key_env": args.api_key_env,
            "rpm": args.rpm,
            "tpm": 1_000_000_000,
            "timeout_s": 60.0,
            "json_schema": fake,  # the fake supports it, as the tests configure it
            "usd_per_mtok_prompt": args.usd_per_mtok_prompt,
            "usd_per_mtok_completion": args.usd_per_mtok_completion,
            "batch": True,
            "batch_poll_s": args.poll_s,
        }
        gather = None if args.gather_s is None else str(args.gather_s)
        env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT, SKILLMIX_BATCH_GATHER_S=gather)  # type: ignore[arg-type]
        api = stack.api(env)
        for _ in range(args.workers):
            stack.worker(env)
        stack.wait_workers(redis)
        client = httpx.Client(
            headers={"Authorization": f"Bearer {member_key(args.redis_url, args.src, 'batch bench')}"}
        )
        client.post(f"{api}/v1/skill-sets", json=json.loads(STARTER.read_text()), timeout=30).raise_for_status()
        bench = Bench(args, stack, api, base_url, fake, client, redis)
        bench.measure_idle(args.idle_s)
        load0, started = loadavg(), time.monotonic()

        if args.prompts:
            bench.configure(cutoff_rate=0.0)
            batch = bench.run_job(prompts_spec(args, "batch"))
            online = bench.run_job(prompts_spec(args, "online")) if args.online else None
            result["prompts"] = summarise(bench, batch, online, args.prompts, args.prompts)
        if args.instruct:
            bench.configure(cutoff_rate=args.cutoff_rate)
            batch = bench.run_job(instruct_spec(args, "batch", args.instruct))
            decided = bench.examples(batch["id"], "accepted") + bench.examples(batch["id"], "rejected")
            online_items = args.online_instruct or args.instruct
            online = bench.run_job(instruct_spec(args, "online", online_items)) if args.online else None
            out = summarise(bench, batch, online, args.instruct, online_items)
            turns = [sum(m["role"] == "assistant" for m in e["conversation"]) for e in decided]
            out["examples_listed"] = len(decided)
            out["turns_counted"] = sum(turns)
            out["turns_per_item"] = round(sum(turns) / len(turns), 4) if turns else None
            out["turns_histogram"] = {str(n): turns.count(n) for n in sorted(set(turns))}
            out["parse_failures"] = batch["status"]["counters"].get("parse_failures", 0)
            out["items_not_listed"] = out["planned"] - len(decided)
            out["lines_not_in_listed_conversations"] = out["lines_billed"] - sum(turns)
            result["instruct"] = out
        result["total_s"] = round(time.monotonic() - started, 1)
        result["loadavg_1m"] = [load0, loadavg()]
    except BaseException:
        print(f"logs in {stack.logdir}", file=sys.stderr)
        raise
    finally:
        stack.stop()

    result["checks"] = checks(result, args, fake)
    result["ok"] = all(result["checks"].values())
    result.update(
        {
            "workers": args.workers,
            "batch_latency_s": args.batch_latency_s if fake else None,
            "endpoint": "fake" if fake else args.base_url,
            "rpm": args.rpm,
            "latency_ms": args.latency_ms if fake else None,
            "cutoff_rate": args.cutoff_rate if fake else None,
            "gather_s": args.gather_s,
            "poll_s": args.poll_s,
            "cpus": os.cpu_count(),
        }
    )
    result.update(source_info(args.src))
    return result


def checks(result: dict[str, Any], args: argparse.Namespace, fake: bool) -> dict[str, bool]:
    out: dict[str, bool] = {}
    p, i = result.get("prompts"), result.get("instruct")
    if p is not None:
        out["prompts_completed"] = p["state"] == "completed" and p["accepted"] == args.prompts
        out["prompts_one_line_per_item"] = p["lines_billed_per_item"] == 1.0
    if i is not None:
        out["instruct_completed"] = i["state"] == "completed" and i["accepted"] == args.instruct
        # every line billed is a turn of a listed conversation, except the turns of an attempt whose last answer
        # did not parse (redrawn) and of items in flight when the job reached its count: at most 5 turns each
        extra = i["lines_not_in_listed_conversations"]
        out["instruct_lines_are_turns"] = 0 <= extra <= 5 * (i["items_not_listed"] + i["parse_failures"])
    for name, job in (("prompts", p), ("instruct", i)):
        if job is None:
            continue
        if fake:
            out[f"{name}_nothing_rebilled"] = job["rebilled"] == 0 and job["online_requests"] == 0
            out[f"{name}_cost_is_billed_tokens"] = abs(job["cost_usd"] - job["cost_from_fake_usd"]) < 1e-5
        if job.get("cost_ratio_vs_online") is None:
            continue
        if fake and job["online"]["same_tokens"]:  # the same calls: the same tokens at half the price
            out[f"{name}_half_price"] = abs(job["cost_ratio_vs_online"] - 0.5) < 1e-4
        else:  # not the same items (surplus, redraws): per processed item
            out[f"{name}_half_price"] = abs(job["cost_per_item_ratio_vs_online"] - 0.5) < 0.03
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: run(args), args.save, lambda r: bool(r.get("ok")))


if __name__ == "__main__":
    raise SystemExit(main())

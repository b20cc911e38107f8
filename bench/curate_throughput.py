"""Throughput of the curate stage on a brought dataset, through the real API and ONE worker process, no judge.

    python bench/curate_throughput.py [--rows 20000] [--format jsonl|json|parquet] [--save NAME]

Writes a synthetic Alpaca dataset of ``--rows`` rows (distinct instructions of 8-14 words, responses of 50-90
words, a few planted exact duplicates and refusals), starts an API process and one worker process on a
Redis db of its own (flushed first; db 0 is refused without --force), uploads the file to ``POST /v1/curate``
with the default quality checks and dedup (exact + near), and samples the job's counters every 50 ms. Prints
one JSON line:

  records_per_s       rows / (t_done - t_submit): upload, survey, queueing, reading, curation, storage
  upload_s            t_accepted - t_submit: the POST (upload, survey, job creation) until the API answered
  after_upload_records_per_s  rows / (t_done - t_accepted): everything the workers do, none of the upload
  curate_records_per_s  rows / (t_done - t_first), from the first curated row to the last
  worker_cpu_s        user+system CPU of the worker process over the run (one process = one core at most)
  worker_cpu_us_per_row, redis_cpu_s (the Redis server's CPU over the run: all its clients, other dbs too)
  accepted, rejected_by_reason
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import REPO, Stack, cpu_seconds, flush_db, loadavg, save, service_env, source_info

POLL_S = 0.05
WORDS = (
    "system data model river garden engine market signal theory protein window budget castle harbor "
    "voltage poem recipe planet crystal ledger orbit canyon violin enzyme tariff glacier compiler turbine "
    "sonnet mortgage lantern quartz reactor meadow bishop parcel tunnel magnet falcon cipher ballot "
    "furnace satellite lagoon archive spindle mineral tempo verdict pigment beacon thermal vector canal"
).split()
VERBS = ("Explain", "Describe", "Compare", "Summarise", "Outline", "Evaluate", "Analyse", "Illustrate")


def dataset(rows: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(rows):
        topic = " ".join(rng.sample(WORDS, rng.randint(6, 12)))
        instruction = f"{rng.choice(VERBS)} the {topic} case number {i}."
        sentences = []
        for _ in range(rng.randint(5, 8)):
            sentences.append(
                " ".join(rng.sample(WORDS, rng.randint(8, 12))).capitalize() + f" in step {rng.randint(1, 99)}."
            )
        output = " ".join(sentences)
        if i % 100 == 37:
            output = "I'm sorry, but I can't help with that request."
        row = {"id": i, "instruction": instruction, "input": "", "output": output, "source": "bench"}
        if i % 100 == 71 and out:
            row = out[-5] | {"id": i}  # an exact duplicate of an earlier row
        out.append(row)
    return out


def write(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


def redis_cpu(redis: Any) -> float:
    """The Redis server's user + system CPU seconds so far (all its clients)."""
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--format", choices=("jsonl", "json", "parquet"), default="jsonl")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--curate-batch", type=int, default=None, help="SKILLMIX_CURATE_BATCH (default: product default)")
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("curate")
    stack.guard()
    data_dir = stack.logdir / "data"
    data_dir.mkdir()
    src = stack.logdir / f"bench.{args.format}"
    write(src, dataset(args.rows), args.format)
    extra = {"SKILLMIX_CURATE_BATCH": str(args.curate_batch)} if args.curate_batch else {}
    env = service_env(args.redis_url, {}, "none", SKILLMIX_DATA_DIR=str(data_dir), **extra)
    try:
        api = stack.api(env)
        worker = stack.worker(env)
        stack.wait_workers(redis)
        cpu0, redis_cpu0 = cpu_seconds(worker.pid), redis_cpu(redis)
        t_submit = time.monotonic()
        with src.open("rb") as fh:
            response = httpx.post(
                f"{api}/v1/curate", files={"file": (src.name, fh), "spec": (None, "{}")}, timeout=args.timeout
            )
        response.raise_for_status()
        t_accepted = time.monotonic()
        job_id = response.json()["id"]
        t_first: float | None = None
        deadline = t_submit + args.timeout
        status: dict[str, Any] = {}
        with httpx.Client(base_url=api, timeout=30) as client:
            while time.monotonic() < deadline:
                status = client.get(f"/v1/jobs/{job_id}").json()
                if t_first is None and status["counters"]["processed"] > 0:
                    t_first = time.monotonic()
                if status["state"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(POLL_S)
        t_done = time.monotonic()
        cpu = cpu_seconds(worker.pid) - cpu0
        redis_cpu_s = redis_cpu(redis) - redis_cpu0
        stack.check_alive()
    finally:
        stack.stop()
    c = status.get("counters", {})
    result = {
        "bench": "curate_throughput",
        "rows": args.rows,
        "format": args.format,
        "state": status.get("state"),
        "seconds": round(t_done - t_submit, 2),
        "records_per_s": round(args.rows / (t_done - t_submit)),
        "upload_s": round(t_accepted - t_submit, 2),
        "after_upload_records_per_s": round(args.rows / (t_done - t_accepted)),
        "curate_records_per_s": round(args.rows / (t_done - (t_first or t_submit))),
        "worker_cpu_s": round(cpu, 2),
        "worker_cpu_share": round(cpu / (t_done - t_submit), 2),
        "worker_cpu_us_per_row": round(1e6 * cpu / args.rows),
        "redis_cpu_s": round(redis_cpu_s, 2),
        "accepted": c.get("accepted"),
        "rejected_by_reason": c.get("rejected_by_reason"),
        "loadavg": loadavg(),
        **source_info(REPO),
    }
    line = json.dumps(result)
    print(line)
    if args.save:
        print(f"saved {save(args.save, line)}", file=sys.stderr)
    return 0 if status.get("state") == "completed" and c.get("processed") == args.rows else 1


if __name__ == "__main__":
    raise SystemExit(main())

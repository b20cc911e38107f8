"""Memory of dataset extraction on N and on 10·N rows: the peak RSS must stay flat (10x within 1.2x of 1x).

    python bench/extract_memory.py [--rows 10000] [--format jsonl|parquet]

For each size, in fresh processes: starts the fake endpoint (no rate limit, no latency), an API and one
worker on a Redis db of its own (flushed first), writes a generated seed dataset into a temporary data
dir (streamed; distinct labels grow with the rows, rows/10 of them, so 10·N rows also means 10x the
labels to merge), submits ``extract-from-dataset`` by path, waits, checks that every row ended mapped or
reported unlabelled, and reads the peak RSS (``VmHWM`` in /proc/<pid>/status) of the API (which checks
the whole dataset at submit) and of the worker (which extracts). ``peak_mb_*`` is their sum.
Prints one JSON line and saves it to bench/results/extract_memory.json; exit status 0 only when every
check passed and ``peak_mb_10x <= 1.2 * peak_mb_1x``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import Stack, flush_db, loadavg, save, service_env, source_info

ENDPOINT = "fake"
FLAT_RATIO = 1.2
WORDS = "customer order refund invoice account password shipping delay billing error upgrade plan".split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000, help="N; the second run has 10·N rows")
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    p.add_argument("--rows-per-call", type=int, default=50)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each run, seconds")
    p.add_argument("--save", default="extract_memory", help="write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def label(i: int, n: int) -> str:
    return f"area{i % 5}_topic{i // 5 % 4}_sub{i // 20 % 5}_v{i // 100 % max(1, n // 1000)}"


def row(i: int, n: int, rng: random.Random) -> dict[str, str]:
    filler = " ".join(rng.choices(WORDS, k=40))
    return {"instruction": f"Ticket {i}: {filler}. This needs {label(i, n)}.", "input": "", "output": filler}


def write_dataset(path: Path, n: int, fmt: str) -> None:
    """Streamed to disk, so the benchmark itself never holds the dataset."""
    rng = random.Random(n)
    if fmt == "jsonl":
        with path.open("w") as fh:
            for i in range(n):
                fh.write(json.dumps(row(i, n, rng)) + "\n")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, 5000):
            batch = [row(i, n, rng) for i in range(start, min(n, start + 5000))]
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def run_once(args: argparse.Namespace, n: int) -> dict[str, Any]:
    flush_db(args.redis_url, args.force)
    data_dir = Path(tempfile.mkdtemp(prefix="skillmix-extract-bench-"))
    name = f"seed.{args.format}"
    write_dataset(data_dir / name, n, args.format)
    stack = Stack(f"extract{n}")
    stack.guard()
    try:
        base_url = stack.fake()
        endpoint = {"base_url": base_url, "model": "fake-model", "rpm": 1_000_000, "tpm": 1_000_000_000}
        env = service_env(
            args.redis_url, {ENDPOINT: endpoint | {"json_schema": True}}, ENDPOINT, SKILLMIX_DATA_DIR=str(data_dir)
        )
        api = stack.api(env)
        worker = stack.worker(env)
        spec = {
            "recipe": "extract-from-dataset",
            "skill_set_name": f"bench-{n}",
            "source": {"path": name},
            "max_rows": max(n, 1),
            "rows_per_call": args.rows_per_call,
        }
        started = time.monotonic()
        response = httpx.post(f"{api}/v1/skill-sets/extract", json=spec, timeout=120)
        response.raise_for_status()
        job_id = response.json()["id"]
        deadline = started + args.timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stack.check_alive()
            status = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
            if status["state"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.5)
        seconds = time.monotonic() - started
        assert stack.api_proc is not None
        worker_mb, api_mb = peak_mb(worker.pid), peak_mb(stack.api_proc.pid)
        c = status.get("counters", {})
        skills = 0
        if status.get("result"):
            set_name, _, version = status["result"].partition("@")
            skills = len(httpx.get(f"{api}/v1/skill-sets/{set_name}/{version}", timeout=30).json()["skills"])
        return {
            "rows": n,
            "state": status.get("state"),
            "message": status.get("message", ""),
            "seconds": round(seconds, 1),
            "accepted": c.get("accepted", 0),
            "unlabelled": c.get("rejected", 0),
            "llm_calls": c.get("llm_calls", 0),
            "skills": skills,
            "worker_peak_mb": round(worker_mb, 1),
            "api_peak_mb": round(api_mb, 1),
            "peak_mb": round(worker_mb + api_mb, 1),
            "all_rows_accounted": c.get("accepted", 0) + c.get("rejected", 0) == n,
        }
    finally:
        stack.stop()
        for path in data_dir.iterdir():
            path.unlink()
        data_dir.rmdir()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    small = run_once(args, args.rows)
    large = run_once(args, args.rows * args.factor)
    ok = all(r["state"] == "completed" and r["all_rows_accounted"] for r in (small, large))
    ratio = large["peak_mb"] / small["peak_mb"] if small["peak_mb"] else float("inf")
    result = {
        "bench": "extract_memory",
        "format": args.format,
        "rows_1x": args.rows,
        "rows_10x": args.rows * args.factor,
        "peak_mb_1x": small["peak_mb"],
        "peak_mb_10x": large["peak_mb"],
        "ratio": round(ratio, 3),
        "flat": ratio <= FLAT_RATIO,
        "ok": ok and ratio <= FLAT_RATIO,
        "run_1x": small,
        "run_10x": large,
        "rows_per_call": args.rows_per_call,
        "loadavg": loadavg(),
        **source_info(Path(__file__).resolve().parent.parent),
    }
    line = json.dumps(result)
    print(line)
    if args.save:
        save(args.save, line)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

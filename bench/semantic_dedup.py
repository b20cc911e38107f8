"""Semantic dedup: embed + check throughput (records/s) on real instructions, and what the threshold catches.

    python bench/semantic_dedup.py [--data /work/shared/data/ism_sda_k2_1000.json] [--workers 1] \
        [--threshold 0.85] [--redis-url redis://127.0.0.1:6379/6] [--save NAME]

Reads the 1,000 real Instruct-SkillMix instructions from ``--data`` (never copied into the repository). Each
of ``--workers`` processes loads the model (not timed), then runs the product's path,
``SemanticDeduper.check_and_add`` one record at a time, over its share of the records (record i goes to
worker i mod W) against one shared job in Redis; the wall time from the moment every worker is ready to
the last one finishing gives ``records_per_s``. The distinct real instructions should all be kept: any
rejected is a false positive at ``--threshold``.

Then, in this process: the nearest-neighbour cosine of every real instruction to the other 999 (how many
would be rejected at each threshold), and the cosine of hand-written paraphrase pairs (how many would be
caught). Prints one JSON line (``--save NAME`` also writes ``bench/results/NAME.json``) and a table.
Needs the ``[embed]`` extra and Redis; uses its own db (default 6), flushed first; db 0 needs ``--force``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from redis.asyncio import Redis

from schemas.curation import DedupSettings
from store import keys
from workers.curate import semantic

DATA = Path("/work/shared/data/ism_sda_k2_1000.json")
JOB = "bench-semantic"
THRESHOLDS = (0.8, 0.85, 0.9, 0.95)

# Hand-written paraphrases: same request, other words. Used only to show what a threshold catches.
PARAPHRASES = [
    ("How do I bake sourdough bread at home?", "What is the way to make sourdough bread in my kitchen?"),
    ("Explain how a TCP three-way handshake works.", "Describe the steps of the TCP three-way handshake."),
    ("Write a short poem about the sea at night.", "Compose a brief poem about the ocean at nighttime."),
    ("What are the health benefits of regular exercise?", "How does exercising regularly benefit your health?"),
    ("Give me tips for improving my public speaking skills.", "How can I become a better public speaker?"),
    ("Summarize the causes of the French Revolution.", "What were the main causes of the French Revolution?"),
    ("How can I reduce my household's energy consumption?", "What are ways to use less energy at home?"),
    ("Explain the difference between a virus and a bacterium.", "How do viruses differ from bacteria?"),
    (
        "Suggest a weekly meal plan for a vegetarian athlete.",
        "Create a seven-day meal plan for a vegetarian who trains hard.",
    ),
    (
        "What should I consider when buying a used car?",
        "What are the key things to check before purchasing a second-hand car?",
    ),
    (
        "How do I write a good cover letter for a software engineering job?",
        "Give advice on a strong cover letter for a software developer post.",
    ),
    (
        "Explain photosynthesis to a ten-year-old.",
        "Describe how photosynthesis works in a way a child of ten would understand.",
    ),
    (
        "Using historical linguistics, interpret the botanical illustrations in the Voynich Manuscript.",
        "Drawing on historical linguistics, analyse the plant drawings of the Voynich Manuscript.",
    ),
    (
        "Design a marketing strategy for a small coffee shop that wants to attract students.",
        "How should a small café market itself to draw in university students?",
    ),
    (
        "What are the pros and cons of remote work for employees?",
        "Discuss the advantages and disadvantages of working from home for staff.",
    ),
    (
        "Write a Python function that checks whether a string is a palindrome.",
        "Implement a Python function to determine if a given string reads the same backwards.",
    ),
]


def _worker(args: tuple[str, list[tuple[int, str]], float, Barrier, Any]) -> None:
    url, records, threshold, barrier, out = args
    semantic.load_model()
    semantic.embed(["warm up"])
    settings = DedupSettings(semantic=True, semantic_threshold=threshold)

    async def run() -> dict[str, Any]:
        redis = Redis.from_url(url)
        deduper = semantic.SemanticDeduper()
        rejected: list[tuple[int, str | None]] = []
        barrier.wait()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for index, text in records:
            result = await deduper.check_and_add(redis, JOB, f"{JOB}-{index}", text, settings)
            if result.is_duplicate:
                rejected.append((index, result.duplicate_of))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await redis.aclose()
        return {"n": len(records), "seconds": seconds, "cpu_s": cpu, "rejected": rejected}

    out.put(asyncio.run(run()))


def run_workers(url: str, texts: list[str], workers: int, threshold: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # no fork after the BLAS threads started
    barrier, out = ctx.Barrier(workers + 1), ctx.Queue()
    shares = [[(i, t) for i, t in enumerate(texts) if i % workers == w] for w in range(workers)]
    procs = [ctx.Process(target=_worker, args=((url, share, threshold, barrier, out),)) for share in shares]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise SystemExit(f"a worker failed: exit codes {[p.exitcode for p in procs]}") from None
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    rejected = [r for res in results for r in res["rejected"]]
    return {
        "records": len(texts),
        "seconds": round(wall, 2),
        "records_per_s": round(len(texts) / wall, 1),
        "worker_cpu_s_per_record": round(sum(r["cpu_s"] for r in results) / len(texts), 4),
        "kept": len(texts) - len(rejected),
        "rejected": len(rejected),
        "rejected_pairs": rejected[:10],
    }


def embed_sorted(texts: list[str], batch: int = 16) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Embeddings in input order, batched by length (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), semantic.DIM), dtype=np.float32)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        out[idx] = semantic.embed([texts[i] for i in idx])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=0, help="first N records only (0: all)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=DedupSettings().semantic_threshold)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--force", action="store_true", help="allow db 0")
    parser.add_argument("--no-quality", action="store_true", help="skip the threshold analysis")
    parser.add_argument("--save", metavar="NAME")
    args = parser.parse_args()
    if args.redis_url.rstrip("/").endswith("/0") and not args.force:
        parser.error("refusing to flush db 0 without --force")
    if not semantic.available():
        parser.error("the [embed] extra is not installed: pip install -e '.[embed]'")

    records = json.loads(args.data.read_text())
    texts = [r["instruction"] for r in records][: args.limit or None]
    t0 = time.perf_counter()
    model = semantic.load_model()
    load_s = time.perf_counter() - t0
    tokens = [len(e.ids) for e in model.tokenizer.encode_batch(texts)]

    import redis as sync_redis

    client = sync_redis.Redis.from_url(args.redis_url)
    client.flushdb()
    result: dict[str, Any] = {
        "bench": "semantic_dedup",
        "threshold": args.threshold,
        "workers": args.workers,
        "model_load_s": round(load_s, 2),
        "tokens_mean": round(float(np.mean(tokens)), 1),
        "tokens_max": int(max(tokens)),
        **run_workers(args.redis_url, texts, args.workers, args.threshold),
    }
    result["stored_embeddings"] = int(client.hlen(keys.embeddings(JOB)))
    client.flushdb()
    client.close()

    # Embedding alone, one record at a time (the product's path) and in batches of 16, in this process.
    sample = texts[:100]
    t0 = time.perf_counter()
    for text in sample:
        semantic.embed([text])
    result["embed_only_single_per_s"] = round(len(sample) / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    embed_sorted(sample)
    result["embed_only_batch16_per_s"] = round(len(sample) / (time.perf_counter() - t0), 1)

    if not args.no_quality:
        emb = embed_sorted(texts)
        sims = emb @ emb.T
        np.fill_diagonal(sims, -1.0)
        nearest = sims.max(axis=1)
        pairs = np.array([float(semantic.embed([a])[0] @ semantic.embed([b])[0]) for a, b in PARAPHRASES])
        result["real_nearest_cosine"] = {
            "max": round(float(nearest.max()), 3),
            "p99": round(float(np.quantile(nearest, 0.99)), 3),
            "median": round(float(np.median(nearest)), 3),
        }
        result["paraphrase_cosine"] = {"min": round(float(pairs.min()), 3), "median": round(float(np.median(pairs)), 3)}
        result["by_threshold"] = {
            str(t): {
                "real_flagged": int((nearest >= t).sum()),  # real instructions with a neighbour this close
                "paraphrases_caught": f"{int((pairs >= t).sum())}/{len(pairs)}",
            }
            for t in THRESHOLDS
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.update({"bench_peak_rss_mb": round(rss, 1), "cpus": os.cpu_count(), "python": platform.python_version()})

    line = json.dumps(result)
    print(line)
    if args.save:
        path = Path(__file__).resolve().parent / "results" / f"{args.save}.json"
        path.write_text(line + "\n")
    if "by_threshold" in result:
        print("\n| threshold | real instructions with a neighbour at or above it | paraphrases caught |")
        print("|---|---|---|")
        for t, row in result["by_threshold"].items():
            print(f"| {t} | {row['real_flagged']} / {len(texts)} | {row['paraphrases_caught']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

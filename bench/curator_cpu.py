"""Client CPU per LLM call of the curator library (PyPI `bespokelabs-curator`), for comparison with throughput.py.

Makes N distinct single-turn chat calls ("Write a short note about topic {i}", max_tokens 128) through
`curator.LLM`'s online OpenAI backend against an OpenAI-compatible endpoint, paced by curator's own rate limiter
(`max_requests_per_minute` = --rpm, a tokens-per-minute limit too large to bind). Curator's cache, the HF datasets
cache and curator's `~/.cache` files go to a fresh temp dir (HOME is pointed there) and CURATOR_DISABLE_CACHE=1,
so no call is served from a cache. Curator's telemetry is off; litellm's bundled cost map and tiktoken file are used
(no network).

Prints ONE JSON line. `cpu_s` is user+sys CPU of this process (all its threads) plus its reaped children
(resource.getrusage), from just before `llm(dataset)` to just after it: imports, the endpoint probe curator makes
when the LLM is built, and building the input dataset are excluded; writing curator's request/response files and
building its output dataset are included (curator does that on every run). `calls` is what curator reports as
succeeded; `fake_requests` / `fake_rate_limited` are deltas of our fake's /admin/stats (HTTP attempts, 429s).

Run with curator's own venv, not the project's:

    python -m venv /tmp/curator-venv && /tmp/curator-venv/bin/pip install bespokelabs-curator==0.1.31
    python -m tests.fake_llm --port 0 --rpm 6000 --latency-ms 300      # prints http://127.0.0.1:PORT/v1
    /tmp/curator-venv/bin/python bench/curator_cpu.py --base-url http://127.0.0.1:PORT/v1 --rpm 6000 --calls 6000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
import urllib.request
from typing import Any


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _os_threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _fake_stats(base_url: str) -> dict[str, Any] | None:
    """Our fake's counters (None for another endpoint)."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/").removesuffix("/v1") + "/admin/stats", timeout=5) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--api-key", default="sk-fake")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--plain", action="store_true", help="tqdm progress instead of curator's default rich display")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="curator-cpu-")
    os.environ.update(
        HOME=work,  # curator writes ~/.cache/.curator_config and defaults its caches under ~
        CURATOR_CACHE_DIR=os.path.join(work, "curator"),
        CURATOR_DISABLE_CACHE="1",
        HF_HOME=os.path.join(work, "hf"),
        TELEMETRY_ENABLED="false",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    # curator loads tiktoken's cl100k_base, which tiktoken downloads; litellm ships a copy of it
    litellm = importlib.util.find_spec("litellm")
    if litellm is None or litellm.origin is None:
        sys.exit("curator is not installed here: run this with the curator venv's python (see the docstring)")
    tokenizers = os.path.join(os.path.dirname(litellm.origin), "litellm_core_utils", "tokenizers")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", tokenizers)
    if args.plain:
        os.environ["CURATOR_DISABLE_RICH_DISPLAY"] = "1"

    from bespokelabs import curator
    from datasets import Dataset

    class Notes(curator.LLM):
        def prompt(self, row: dict[str, Any]) -> str:
            return str(row["prompt"])

    llm = Notes(
        model_name=args.model,
        backend="openai",
        generation_params={"max_tokens": args.max_tokens},
        backend_params={
            "base_url": args.base_url,
            "api_key": args.api_key,
            "max_requests_per_minute": args.rpm,
            "max_tokens_per_minute": 10**10,  # curator estimates 4096 output tokens a call for an unknown model
        },
    )
    dataset = Dataset.from_dict({"prompt": [f"Write a short note about topic {i}" for i in range(args.calls)]})

    before = _fake_stats(args.base_url)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    response = llm(dataset)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    after = _fake_stats(args.base_url)

    calls = response.request_stats.succeeded
    calls_per_s = calls / seconds
    delta = {k: after[k] - before[k] for k in ("requests", "rate_limited", "repaid")} if before and after else {}
    result = {
        "tool": "curator",
        "curator_version": curator.__version__,
        "python": sys.version.split()[0],
        "rpm": args.rpm,
        "calls": calls,
        "failed": response.request_stats.failed,
        "rows": len(response.dataset),
        "fake_requests": delta.get("requests"),
        "fake_rate_limited": delta.get("rate_limited"),
        "fake_repaid": delta.get("repaid"),
        "seconds": round(seconds, 2),
        "calls_per_s": round(calls_per_s, 2),
        "ratio": round(calls_per_s / (args.rpm / 60), 3),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_call": round(1000 * cpu / max(calls, 1), 3),
        "os_threads_after": _os_threads(),
        "display": "tqdm" if args.plain else "rich",
        "loadavg_1m": os.getloadavg()[0],
        "cache_dir": response.cache_dir,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

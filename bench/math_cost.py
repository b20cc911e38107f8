"""What a delivered MATH^2 question costs: a ``math`` job against the fake endpoint, calls and tokens per question.

    python bench/math_cost.py [--count 30] [--invalid 0.1 --rubric 0.1 --disagree 0.1 --wrong 0.05]

Starts ``python -m tests.fake_llm`` (its math stages answer deterministically; the rates plant invalid pairs,
rubric "No"s, disagreeing solves and questions stating a wrong answer), an API and one worker on a Redis db
of its own (flushed first), posts a small math skill set with exemplars and submits a ``math`` job of
``--count`` questions (defaults: 3 validations, 5 solves, 2 review turns). Reports the job's LLM calls and
tokens in total and per delivered (accepted) question, the calls per stage (the fake counts them), the
rejections by reason, and checks every accepted question's majority answer matched its own. Prints one JSON
line; exit status 0 only when every check passed. Token counts are the fake's: words, not real tokens.
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
from _stack import REPO, Stack, fake_stats, flush_db, loadavg, report, service_env, source_info

ENDPOINT = "fake"
SKILLS = [
    ("modular_arithmetic", "work with remainders and congruences", "Find the remainder of 7^100 modulo 13."),
    ("quadratic_equations", "solve and reason about quadratics", "For which k does x^2+kx+9=0 have a double root?"),
    ("counting_principles", "count arrangements and selections", "How many 4-letter strings use ABCDEF once each?"),
    ("probability", "compute probabilities of events", "Two dice are rolled; what is P(sum = 7)?"),
    ("geometry_of_circles", "inscribed angles, chords, tangents", "A chord of length 6 is 4 from the centre: radius?"),
    ("sequences_and_series", "arithmetic and geometric sums", "Sum the first 20 odd numbers."),
    ("number_theory_divisors", "divisor counts and sums", "How many positive divisors does 360 have?"),
    ("functional_equations", "solve for unknown functions", "Find f if f(x+y) = f(x) + f(y) and f(1) = 3."),
    ("inequalities", "AM-GM, Cauchy-Schwarz and bounding", "Minimise x + 4/x for x > 0."),
    ("polynomial_roots", "Vieta's formulas and root relations", "The roots of x^3-6x^2+11x-6: sum of squares?"),
]
MATH_SET: dict[str, Any] = {
    "name": "mathbench",
    "description": "MATH-style skills with an exemplar each",
    "skills": [{"name": n, "description": d, "examples": [e]} for n, d, e in SKILLS],
    "query_types": [{"name": "problem", "definition": "a competition-style problem"}],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--invalid", type=float, default=0.1, help="fake: math_invalid_pair_rate")
    p.add_argument("--rubric", type=float, default=0.1, help="fake: math_rubric_fail_rate")
    p.add_argument("--disagree", type=float, default=0.1, help="fake: math_solve_disagree_rate")
    p.add_argument("--wrong", type=float, default=0.05, help="fake: math_wrong_answer_rate")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--force", action="store_true", help="allow flushing db 0")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run, seconds")
    p.add_argument("--src", type=Path, default=REPO, help="product tree to run (default: this checkout)")
    p.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("mathcost", args.src)
    stack.guard()
    try:
        base_url = stack.fake(
            latency_ms=args.latency_ms,
            math_invalid_pair_rate=args.invalid,
            math_rubric_fail_rate=args.rubric,
            math_solve_disagree_rate=args.disagree,
            math_wrong_answer_rate=args.wrong,
        )
        endpoint = {
            "base_url": base_url,
            "model": "fake-model",
            "rpm": 1_000_000,
            "tpm": 1_000_000_000,
            "timeout_s": 30.0,
            "json_schema": True,
        }
        env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT)
        api = stack.api(env)
        stack.worker(env)
        stack.wait_workers(redis)
        httpx.post(f"{api}/v1/skill-sets", json=MATH_SET, timeout=30).raise_for_status()
        started, load0 = time.monotonic(), loadavg()
        spec = {"recipe": "math", "skill_set": "mathbench@1", "count": args.count, "seed": args.seed}
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
            time.sleep(0.5)
        seconds, load1 = time.monotonic() - started, loadavg()
        stats = fake_stats(base_url) or {}
        body = httpx.get(f"{api}/v1/jobs/{job_id}/examples", params={"status": "accepted"}, timeout=120)
        body.raise_for_status()
        accepted = [json.loads(line) for line in body.text.splitlines() if line]
    finally:
        stack.stop()

    c = status["counters"]
    delivered = c["accepted"]

    def per(value: float) -> float | None:
        return round(value / delivered, 1) if delivered else None

    checks = {
        "completed": status["state"] == "completed",
        "count_delivered": delivered == args.count and len(accepted) == args.count,
        "answers_verified": all(e["math"]["vote"]["matches_question"] is True for e in accepted),
        "full_history": all(
            e["math"]["pair_check"]
            and e["math"]["question_turns"]
            and e["math"]["sceptic"]
            and e["math"]["validations"]
            and e["math"]["solves"]
            for e in accepted
        ),
    }
    total_tokens = c["prompt_tokens"] + c["completion_tokens"]
    return {
        "ok": all(checks.values()),
        "delivered": delivered,
        "items": c["processed"],
        "llm_calls": c["llm_calls"],
        "prompt_tokens": c["prompt_tokens"],
        "completion_tokens": c["completion_tokens"],
        "calls_per_question": per(c["llm_calls"]),
        "prompt_tokens_per_question": per(c["prompt_tokens"]),
        "completion_tokens_per_question": per(c["completion_tokens"]),
        "tokens_per_question": per(total_tokens),
        "calls_by_stage": stats.get("math_stages"),
        "rejected_by_reason": c["rejected_by_reason"],
        "planted": stats.get("planted"),
        "rates": {"invalid": args.invalid, "rubric": args.rubric, "disagree": args.disagree, "wrong": args.wrong},
        "seconds": round(seconds, 1),
        "latency_ms": args.latency_ms,
        "loadavg_1m": [load0, load1],
        "checks": checks,
        **source_info(args.src),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: run(args), args.save, lambda r: bool(r["ok"]))


if __name__ == "__main__":
    raise SystemExit(main())

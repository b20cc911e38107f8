"""Judge calibration benchmark: does the min_score chosen on one half of a labelled set hold on the other?

(a) Builds the labelled set: the hand-written bad examples of ``bench/judge_set/bad.jsonl`` (eight kinds a
    fluent answer can fail in while passing the heuristics, six each) mixed with good examples drawn at run
    time from the real Instruct-SkillMix data in ``--data`` (never copied into the repository), as LABELLED
    JSONL: ``{instruction, input, output, skills, label: good|bad, kind}`` (good ones: kind ``real``).
(b) For the fake endpoint's scripted judge at three noise levels, splits the set in two halves stratified by
    label and kind, runs ``skillmix judge-eval HALF -o DIR --judge fake --max-false-reject 0.03`` on each,
    chooses the threshold on the calibration half and checks the false-reject bound on the held-back half.

What it expects of ``skillmix judge-eval`` (built on another branch; ``--build-only`` needs none of it):

- ``DIR/report.json`` with ``examples``: one object per LABELLED line, in order, each with ``scores`` (the
  judge's verdict scores: criterion -> 1-5, as ``JudgeVerdict.scores``) or a single number ``score``, and
  ``error`` true for an answer that could not be read (counted as a reject, never a pass); optionally
  ``chosen`` with ``min_score`` (the command's own choice, printed beside ours).
- the fake (``python -m tests.fake_llm``) taking ``--judge-noise X`` and ``--judge-script LABELLED`` (hidden
  labels: scores drawn from each example's label with noise X). Both names live in ``fake_knobs`` only.

An example's score is the lowest of its criteria (the judge passes it at ``min_score`` t when every criterion
scores at least t, as ``quality.judge.min_score``); it is rejected at t when its score is below t. The chosen
t catches the most bad examples with at most ``--max-false-reject`` of the good ones rejected (the lowest
such t on a tie). The split and threshold arithmetic are plain functions, tested in
``tests/test_bench_judge_eval.py``.

    python bench/judge_eval.py [--data PATH] [--good 200] [--seed 0] [--out DIR] [--build-only]
        [--redis-url redis://127.0.0.1:6379/13] [--force]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = Path("/work/shared/data/ism_sda_k2_1000.json")
BAD = Path(__file__).resolve().parent / "judge_set" / "bad.jsonl"
KINDS = (
    "generic",
    "drops_skill",
    "wrong_facts",
    "neighbouring_question",
    "padding",
    "breaks_constraint",
    "vague_template",
    "self_contradiction",
)
FIELDS = ("instruction", "input", "output", "skills", "label", "kind")
NOISE_LEVELS = (0.0, 0.15, 0.3)
MAX_FALSE_REJECT = 0.03
ENDPOINT = "fake"


# --- (a) the labelled set ---------------------------------------------------------------------------


def load_bad(path: Path = BAD) -> list[dict[str, Any]]:
    """The hand-written bad examples, each checked for the LABELLED fields."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, row in enumerate(rows, 1):
        missing = [f for f in FIELDS if f not in row]
        if missing or row["label"] != "bad" or row["kind"] not in KINDS or not row["output"].strip():
            raise ValueError(f"{path} line {n}: missing {missing} or not a bad example of a known kind")
    return rows


def skills_of(record: dict[str, Any]) -> list[str]:
    return [s.strip() for s in str(record.get("skills_joined_str", "")).split(",") if s.strip()]


def load_good(data: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` real examples drawn at random (by ``seed``) from the Instruct-SkillMix file, labelled good."""
    records = json.loads(data.read_text(encoding="utf-8"))
    chosen = random.Random(seed).sample(range(len(records)), min(n, len(records)))
    return [
        {
            "instruction": records[i]["instruction"],
            "input": records[i].get("input", ""),
            "output": records[i]["output"],
            "skills": skills_of(records[i]),
            "label": "good",
            "kind": "real",
        }
        for i in chosen
    ]


def build_labelled(bad: Sequence[dict[str, Any]], good: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Good and bad shuffled together, each row with exactly the LABELLED fields."""
    rows = [{f: row[f] for f in FIELDS} for row in [*bad, *good]]
    random.Random(seed).shuffle(rows)
    return rows


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --- (b) split and threshold arithmetic ---------------------------------------------------------------


def split_halves(rows: Sequence[dict[str, Any]], seed: int) -> tuple[list[int], list[int]]:
    """Indexes of (calibration, held-back) halves, stratified by (label, kind): each stratum is shuffled and
    dealt alternately, starting with the half that is behind, so every kind is in both halves."""
    strata: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        strata[(row["label"], row.get("kind") or "")].append(i)
    rng = random.Random(seed)
    halves: tuple[list[int], list[int]] = ([], [])
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        first = 0 if len(halves[0]) <= len(halves[1]) else 1
        for j, i in enumerate(members):
            halves[(first + j) % 2].append(i)
    return sorted(halves[0]), sorted(halves[1])


def example_score(entry: dict[str, Any]) -> float:
    """One number per judged example: the lowest criterion score; an unreadable answer is -inf (rejected
    at every threshold)."""
    if entry.get("error"):
        return -math.inf
    scores = entry.get("scores")
    if isinstance(scores, dict) and scores:
        return float(min(scores.values()))
    if entry.get("score") is not None:
        return float(entry["score"])
    return -math.inf


@dataclass(frozen=True)
class Rates:
    threshold: float
    false_reject: float  # share of good examples rejected (score < threshold)
    catch: float  # share of bad examples rejected
    goods: int
    bads: int


def rates(labels: Sequence[str], scores: Sequence[float], threshold: float) -> Rates:
    good = [s for lab, s in zip(labels, scores, strict=True) if lab == "good"]
    bad = [s for lab, s in zip(labels, scores, strict=True) if lab == "bad"]
    false_reject = sum(s < threshold for s in good) / len(good) if good else 0.0
    catch = sum(s < threshold for s in bad) / len(bad) if bad else 0.0
    return Rates(threshold, false_reject, catch, len(good), len(bad))


def choose_threshold(labels: Sequence[str], scores: Sequence[float], max_false_reject: float) -> Rates:
    """The threshold catching the most bad examples with a false-reject rate of at most ``max_false_reject``;
    the lowest such threshold on a tie. Candidates: every score seen and one above them all; the lowest
    finite score (rejects only unreadable answers) always qualifies unless those alone break the bound."""
    finite = sorted({s for s in scores if math.isfinite(s)})
    candidates = [*finite, (finite[-1] + 1.0) if finite else 1.0]
    best: Rates | None = None
    for t in candidates:
        found = rates(labels, scores, t)
        if found.false_reject <= max_false_reject and (best is None or found.catch > best.catch):
            best = found
    return best if best is not None else rates(labels, scores, -math.inf)


def held_back_check(
    labels: Sequence[str], scores: Sequence[float], calibration: Sequence[int], held: Sequence[int], bound: float
) -> dict[str, Any]:
    """Choose on ``calibration``, measure on ``held``: does the false-reject rate stay within ``bound``?"""
    chosen = choose_threshold([labels[i] for i in calibration], [scores[i] for i in calibration], bound)
    measured = rates([labels[i] for i in held], [scores[i] for i in held], chosen.threshold)
    return {
        "threshold": chosen.threshold,
        "calibration": asdict(chosen),
        "held_back": asdict(measured),
        "meets_bound": measured.false_reject <= bound,
    }


def catch_by_kind(
    rows: Sequence[dict[str, Any]], scores: Sequence[float], idx: Sequence[int], t: float
) -> dict[str, float]:
    seen: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    for i in idx:
        if rows[i]["label"] == "bad":
            seen[rows[i]["kind"]] += 1
            caught[rows[i]["kind"]] += scores[i] < t
    return {k: round(caught[k] / seen[k], 3) for k in sorted(seen)}


# --- running judge-eval against the fake --------------------------------------------------------------


def fake_knobs(noise: float, labelled: Path) -> dict[str, Any]:
    """The fake's scripted judge (flags added on the judge-eval branch): the one place their names live."""
    return {"judge_noise": noise, "judge_script": str(labelled), "rpm": 0}


def judge_eval(labelled: Path, out: Path, env: dict[str, str], bound: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "service.cli", "judge-eval", str(labelled), "-o", str(out), "--judge", ENDPOINT]
    argv += ["--max-false-reject", str(bound)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"judge-eval failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return dict(json.loads((out / "report.json").read_text()))


def run_level(args: argparse.Namespace, rows: list[dict[str, Any]], noise: float, workdir: Path) -> dict[str, Any]:
    from bench._stack import Stack, flush_db, service_env

    calibration, held = split_halves(rows, args.seed)
    halves = {"calibration": calibration, "held_back": held}
    labelled = write_jsonl(rows, workdir / "labelled.jsonl")
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("judge-eval")
    stack.guard()
    try:
        base_url = stack.fake(**fake_knobs(noise, labelled))
        endpoint = {"base_url": base_url, "model": "fake-model", "rpm": 0, "json_schema": True}
        env = service_env(args.redis_url, {ENDPOINT: endpoint}, ENDPOINT)
        api = stack.api(env)
        stack.worker(env)
        stack.wait_workers(redis)
        port = api.rsplit(":", 1)[1]
        env = env | {
            "SKILLMIX_API_PORT": port,
            "SKILLMIX_API_KEY": args.api_key or os.environ.get("SKILLMIX_API_KEY", ""),
        }
        scores = [-math.inf] * len(rows)
        chosen_by_command: dict[str, Any] = {}
        for name, idx in halves.items():
            half = write_jsonl([rows[i] for i in idx], workdir / f"{name}-{noise}.jsonl")
            report = judge_eval(half, workdir / f"report-{name}-{noise}", env, args.max_false_reject)
            for i, entry in zip(idx, report["examples"], strict=True):
                scores[i] = example_score(entry)
            chosen_by_command[name] = (report.get("chosen") or {}).get("min_score")
    finally:
        stack.stop()
    labels = [r["label"] for r in rows]
    result = held_back_check(labels, scores, calibration, held, args.max_false_reject)
    result |= {
        "noise": noise,
        "command_chose": chosen_by_command,
        "held_back_catch_by_kind": catch_by_kind(rows, scores, held, result["threshold"]),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--good", type=int, default=200, help="real (good) examples drawn from --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where LABELLED and the reports go (default: a tmp dir)")
    parser.add_argument("--max-false-reject", type=float, default=MAX_FALSE_REJECT)
    parser.add_argument("--build-only", action="store_true", help="write LABELLED and stop")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument(
        "--api-key", default=None, help="an API key of the bench's Redis db (default: SKILLMIX_API_KEY)"
    )
    parser.add_argument("--force", action="store_true", help="allow flushing Redis db 0")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"no real data at {args.data}: the good examples are read from there at run time")
    workdir = args.out or Path(tempfile.mkdtemp(prefix="skillmix-judge-eval-"))
    rows = build_labelled(load_bad(), load_good(args.data, args.good, args.seed), args.seed)
    labelled = write_jsonl(rows, workdir / "labelled.jsonl")
    kinds = Counter(r["kind"] for r in rows)
    print(f"LABELLED: {labelled} ({len(rows)} examples: {dict(sorted(kinds.items()))})")
    if args.build_only:
        return 0
    results = []
    for noise in NOISE_LEVELS:
        found = run_level(args, rows, noise, workdir)
        results.append(found)
        held = found["held_back"]
        print(
            f"noise {noise:.2f}: min_score {found['threshold']:g} chosen on the calibration half "
            f"(catch {found['calibration']['catch']:.0%}); held-back half: false reject {held['false_reject']:.1%} "
            f"({'meets' if found['meets_bound'] else 'BREAKS'} {args.max_false_reject:.0%}), catch {held['catch']:.0%}"
        )
    write_jsonl(results, workdir / "results.jsonl")
    return 0 if all(r["meets_bound"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

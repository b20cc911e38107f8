"""Judge calibration benchmark: does the min_score chosen on one half of a labelled set hold on the other?

(a) Builds the labelled set: the hand-written bad examples of ``bench/judge_set/bad.jsonl`` (eight kinds a
    fluent answer can fail in while passing the heuristics, six each) mixed with good examples drawn at run
    time from the real Instruct-SkillMix data in ``--data`` (never copied into the repository), as LABELLED
    JSONL: ``{instruction, input, output, skills, label: good|bad, kind}`` (good ones: kind ``real``). It is
    split in two halves stratified by label and kind: A (calibration) and B (held back).
(b) Starts its own fake endpoint (``python -m tests.fake_llm``) playing a scripted judge that knows every
    label (``judge_script``: the sha256 of each response -> good / bad), an API and a worker on a Redis db of
    its own (flushed first), and a team with a member key in it. For each noise level (``judge_noise``, set
    through the fake's ``/admin/config``: that share of the responses is graded as if its label were the
    other one) it runs the real command on each half:
    ``skillmix judge-eval HALF -o DIR --judge fake --max-false-reject 0.03 [--save-profile NAME] --api URL``.
(c) The threshold is the command's own ``chosen.min_score`` on half A (what ``--save-profile`` saves; none
    when no min_score meets the bound there). It is applied to half B's per-example verdicts, read from the
    job's records (``GET /v1/jobs/{id}/examples``: ``judge`` scores and verdict, ``judge_eval`` label, kind and
    criteria); the bound holds when half B's false-reject rate is within it. Two cross-checks: half B's rates
    at that min_score equal its own report's curve point, and the plain threshold arithmetic below, run on the
    same per-example scores, makes the same choice on A (same catch and false-reject rates).

An example's score is the lowest of its criteria; a fail verdict or an unreadable answer is -inf: the judge
rejects it at every min_score, as ``quality.judge`` does in a job. It is rejected at t when its score is
below t. The chosen t catches the most bad examples with at most ``--max-false-reject`` of the good ones
rejected (the lowest such t on a tie). The split and threshold arithmetic are plain functions, tested in
``tests/test_bench_judge_eval.py``. Prints one JSON line (keys: bench/README.md, "judge_eval.py"); exit status
0 when the cross-checks agree, whether or not the bound held (that is the finding, not a failure).

    python bench/judge_eval.py [--data PATH] [--good 200] [--seed 0] [--out DIR] [--build-only]
        [--redis-url redis://127.0.0.1:6379/13] [--force] [--save judge_eval]
"""

from __future__ import annotations

import argparse
import json
import math
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
    """One number per judged example: the lowest criterion score; an unreadable answer or a fail verdict is
    -inf (rejected at every threshold, as ``quality.judge`` rejects a fail verdict whatever its scores)."""
    if entry.get("error") or entry.get("verdict") is False:
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


def rejected(score: float, threshold: float) -> bool:
    """Below the threshold; -inf (fail verdict, unreadable) at every threshold, -inf included."""
    return score < threshold or score == -math.inf


def rates(labels: Sequence[str], scores: Sequence[float], threshold: float) -> Rates:
    good = [s for lab, s in zip(labels, scores, strict=True) if lab == "good"]
    bad = [s for lab, s in zip(labels, scores, strict=True) if lab == "bad"]
    false_reject = sum(rejected(s, threshold) for s in good) / len(good) if good else 0.0
    catch = sum(rejected(s, threshold) for s in bad) / len(bad) if bad else 0.0
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
    """Choose on ``calibration``, measure on ``held``: does the false-reject rate stay within ``bound``? It
    cannot when no threshold met it on ``calibration`` already (the judge fails too many good ones itself)."""
    chosen = choose_threshold([labels[i] for i in calibration], [scores[i] for i in calibration], bound)
    measured = rates([labels[i] for i in held], [scores[i] for i in held], chosen.threshold)
    chose = chosen.false_reject <= bound
    return {
        "threshold": chosen.threshold,
        "calibration": asdict(chosen),
        "calibration_meets_bound": chose,
        "held_back": asdict(measured),
        "meets_bound": chose and measured.false_reject <= bound,
    }


def catch_by_kind(
    rows: Sequence[dict[str, Any]], scores: Sequence[float], idx: Sequence[int], t: float
) -> dict[str, float]:
    seen: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    for i in idx:
        if rows[i]["label"] == "bad":
            seen[rows[i]["kind"]] += 1
            caught[rows[i]["kind"]] += rejected(scores[i], t)
    return {k: round(caught[k] / seen[k], 3) for k in sorted(seen)}


# --- running judge-eval against the fake --------------------------------------------------------------


def fake_script(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The fake's scripted judge: every response's label, keyed as the fake keys it."""
    from tests.fake_llm import response_sha

    return {response_sha(r["output"]): r["label"] for r in rows}


def entry_of(example: dict[str, Any]) -> dict[str, Any]:
    """One job record as ``example_score`` reads it: the judge's scores on the criteria its rubric named (as
    the report reads them), its verdict; ``error`` when it gave no readable verdict."""
    judge = example.get("judge") or {}
    scores = judge.get("scores") or {}
    criteria = (example.get("judge_eval") or {}).get("criteria") or list(scores)
    if not scores or any(c not in scores for c in criteria):
        return {"error": True}
    return {"scores": {c: scores[c] for c in criteria}, "verdict": bool(judge.get("verdict"))}


def json_safe(value: Any) -> Any:
    """-inf (no threshold met the bound: the most lenient) as None, so the line is plain JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def half_rates(rates_: dict[str, Any]) -> dict[str, Any]:
    """A report's ``Rates`` as the table shows them."""
    keys = ("caught", "bad", "catch_rate", "false_rejects", "good", "false_reject_rate")
    return {k: rates_.get(k) for k in keys}


class Runner:
    """The running stack and a client of its API: one judge-eval per half and noise level."""

    def __init__(self, args: argparse.Namespace, api: str, env: dict[str, str], key: str, fake_url: str) -> None:
        import httpx

        self.args, self.api, self.fake_url = args, api, fake_url
        self.env = env | {"SKILLMIX_API_KEY": key, "COLUMNS": "200"}
        self.client = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def set_noise(self, noise: float) -> None:
        root = self.fake_url.removesuffix("/v1")
        self.client.post(root + "/admin/config", json={"judge_noise": noise}).raise_for_status()

    def judge_eval(self, labelled: Path, out: Path, profile: str | None) -> tuple[dict[str, Any], int, str]:
        """Run the command; (report.json, exit status, its output). Exit 1 is a refused profile."""
        argv = [sys.executable, "-m", "service.cli", "judge-eval", str(labelled), "-o", str(out), "--judge", ENDPOINT]
        argv += ["--max-false-reject", str(self.args.max_false_reject), "--api", self.api]
        argv += ["--save-profile", profile] if profile else []
        done = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=1800)
        text = done.stdout + done.stderr
        if done.returncode not in (0, 1) or not (out / "report.json").exists():
            raise RuntimeError(f"judge-eval failed ({done.returncode}): {text[-2000:]}")
        return dict(json.loads((out / "report.json").read_text())), done.returncode, text

    def examples(self, job_id: str, n: int) -> list[dict[str, Any]]:
        """The job's records by labelled index (accepted and rejected alike); every one must be there."""
        found: dict[int, dict[str, Any]] = {}
        for status in ("accepted", "rejected"):
            body = self.client.get(f"/v1/jobs/{job_id}/examples", params={"status": status}, timeout=300)
            body.raise_for_status()
            for line in body.text.splitlines():
                if line.strip():
                    record = json.loads(line)
                    found[int(record["index"])] = record
        if sorted(found) != list(range(n)):
            raise RuntimeError(f"job {job_id}: records for {len(found)} of {n} examples")
        return [found[i] for i in range(n)]

    def profile(self, name: str) -> dict[str, Any] | None:
        response = self.client.get(f"/v1/quality-profiles/{name}")
        return dict(response.json()) if response.status_code == 200 else None


def run_level(
    runner: Runner, rows: list[dict[str, Any]], halves: dict[str, list[int]], noise: float, workdir: Path
) -> dict[str, Any]:
    """Both halves through the command at one noise level; the threshold from A, measured on B."""
    runner.set_noise(noise)
    bound = runner.args.max_false_reject
    scores = [-math.inf] * len(rows)
    reports: dict[str, dict[str, Any]] = {}
    profile = f"bench-noise-{round(noise * 100):02d}"
    profile_exit = None
    for name, idx in halves.items():
        half = write_jsonl([rows[i] for i in idx], workdir / f"{name}-{noise}.jsonl")
        saving = profile if name == "calibration" else None
        report, code, _ = runner.judge_eval(half, workdir / f"report-{name}-{noise}", saving)
        if saving:
            profile_exit = code
        elif code:
            raise RuntimeError(f"judge-eval on {name} exited {code}")
        for i, record in zip(idx, runner.examples(report["job_id"], len(idx)), strict=True):
            if record.get("judge_eval", {}).get("label") != rows[i]["label"]:
                raise RuntimeError(f"job {report['job_id']}: record {record['index']} is not labelled example {i}")
            scores[i] = example_score(entry_of(record))
        reports[name] = report
    a, b = reports["calibration"], reports["held_back"]
    chosen = a["chosen"]
    # the command's choice on A, else the most lenient min_score (what forcing a judge in would give)
    t = chosen["min_score"] if chosen else 1
    held = halves["held_back"]
    labels = [r["label"] for r in rows]
    measured = rates([labels[i] for i in held], [scores[i] for i in held], t)
    point_b = b["curve"][t - 1]
    assert point_b["min_score"] == t
    ours = held_back_check(labels, scores, halves["calibration"], held, bound)
    saved = runner.profile(profile)
    result: dict[str, Any] = {
        "noise": noise,
        "half_a": {
            "job_id": a["job_id"],
            "examples": a["examples"],
            "chosen_min_score": chosen["min_score"] if chosen else None,
            "chosen": half_rates(chosen["judge"]) if chosen else None,
            "note": a["chosen_note"],
            "lowest_false_reject": min(p["judge"]["false_reject_rate"] for p in a["curve"]),
            "auc": a["bias"]["auc"],
            "errors": a["errors"]["total"],
            "profile": profile,
            "profile_exit": profile_exit,
            "profile_saved_min_score": saved["judge"]["min_score"] if saved else None,
        },
        "half_b": {
            "job_id": b["job_id"],
            "examples": b["examples"],
            "min_score": t,
            "judge": half_rates(point_b["judge"]),
            "combined": half_rates(point_b["combined"]),
            "heuristics": half_rates(b["heuristics"]["overall"]),
            "auc": b["bias"]["auc"],
            "errors": b["errors"]["total"],
            "catch_by_kind": catch_by_kind(rows, scores, held, t),
        },
        "bound_held": chosen is not None and point_b["judge"]["false_reject_rate"] <= bound,
        "bench_arithmetic": json_safe(ours),
    }
    pj = point_b["judge"]
    agree_a = (chosen is None) is (not ours["calibration_meets_bound"])
    if chosen:
        agree_a = agree_a and (ours["calibration"]["catch"], ours["calibration"]["false_reject"]) == (
            chosen["judge"]["catch_rate"],
            chosen["judge"]["false_reject_rate"],
        )
    result["checks"] = {
        "records_match_report_b": (measured.catch, measured.false_reject, measured.bads, measured.goods)
        == (pj["catch_rate"], pj["false_reject_rate"], pj["bad"], pj["good"]),
        "bench_arithmetic_agrees_on_a": agree_a,
        "no_errors": a["errors"]["total"] == 0 and b["errors"]["total"] == 0,
        # a profile is saved exactly when a threshold was chosen, at that threshold
        "profile_as_chosen": (profile_exit == 0 and saved is not None and saved["judge"]["min_score"] == t)
        if chosen
        else (profile_exit == 1 and saved is None),
    }
    return result


def run(args: argparse.Namespace, rows: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    from bench._stack import Stack, flush_db, loadavg, member_key, service_env, source_info

    calibration, held = split_halves(rows, args.seed)
    halves = {"calibration": calibration, "held_back": held}
    redis = flush_db(args.redis_url, args.force)
    stack = Stack("judge-eval")
    stack.guard()
    levels = []
    load0 = loadavg()
    try:
        fake_url = stack.fake(judge_script=json.dumps(fake_script(rows)))
        endpoint = {"base_url": fake_url, "model": "fake-model", "rpm": 60_000, "tpm": 1_000_000_000}
        env = service_env(args.redis_url, {ENDPOINT: endpoint | {"json_schema": True}}, ENDPOINT)
        api = stack.api(env)
        stack.worker(env)
        stack.wait_workers(redis)
        runner = Runner(args, api, env, member_key(args.redis_url, REPO, "judge-eval bench"), fake_url)
        for noise in NOISE_LEVELS:
            found = run_level(runner, rows, halves, noise, workdir)
            levels.append(found)
            a, b = found["half_a"], found["half_b"]
            print(
                f"noise {noise:.2f}: half A chose min_score {a['chosen_min_score']} ({a['note']}); half B at "
                f"min_score {b['min_score']}: catch {b['judge']['catch_rate']:.1%}, false reject "
                f"{b['judge']['false_reject_rate']:.1%} ({'held' if found['bound_held'] else 'NOT held'}), "
                f"AUC {b['auc']:.3f}",
                file=sys.stderr,
            )
    except BaseException:
        print(f"logs in {stack.logdir}", file=sys.stderr)
        raise
    finally:
        stack.stop()
    kinds = Counter(r["kind"] for r in rows)
    result: dict[str, Any] = {
        "examples": len(rows),
        "good": kinds["real"],
        "bad": len(rows) - kinds["real"],
        "half_sizes": [len(calibration), len(held)],
        "seed": args.seed,
        "max_false_reject": args.max_false_reject,
        "endpoint": "fake (scripted judge)",
        "levels": levels,
        "loadavg_1m": [load0, loadavg()],
    }
    result["ok"] = all(all(level["checks"].values()) for level in levels)
    result.update(source_info(REPO))
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
    parser.add_argument("--force", action="store_true", help="allow flushing Redis db 0")
    parser.add_argument("--save", default=None, help="also write the JSON line to bench/results/NAME.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"no real data at {args.data}: the good examples are read from there at run time")
    workdir = args.out or Path(tempfile.mkdtemp(prefix="skillmix-judge-eval-"))
    rows = build_labelled(load_bad(), load_good(args.data, args.good, args.seed), args.seed)
    labelled = write_jsonl(rows, workdir / "labelled.jsonl")
    kinds = Counter(r["kind"] for r in rows)
    print(f"LABELLED: {labelled} ({len(rows)} examples: {dict(sorted(kinds.items()))})", file=sys.stderr)
    if args.build_only:
        return 0
    from bench._stack import report

    return report(lambda: run(args, rows, workdir), args.save, lambda r: bool(r.get("ok")))


if __name__ == "__main__":
    raise SystemExit(main())

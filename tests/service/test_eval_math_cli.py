"""`skillmix eval-math` end to end: the real CLI, API and worker processes on real Redis, against the fake
endpoint, whose eval answers are right in the reference's notation, right in another notation (decimal, p/q,
\\dfrac, unboxed "The final answer is ..."), right through a wrong step, or wrong, by the question's hash.
The reported accuracy must be the truth exactly; with a judge, right answers through wrong steps are wrong.
Then `skillmix square-law` on summaries writes the fit and the PNG."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis

from tests.conftest import REPO, Processes, service_env
from tests.fake_llm import EVAL_BAD_REASON, FakeConfig, eval_plan, eval_reference

KNOBS = {"eval_wrong_rate": 0.25, "eval_notation_rate": 0.5, "eval_bad_steps_rate": 0.2}
SKILLS = ["algebra", "geometry", "counting", "number_theory"]


def skillmix(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=240,
    )


def question_file(path: Path, n: int) -> list[dict[str, Any]]:
    """MATH-style rows: half give ``answer``, half a ``solution`` with the answer in its last \\boxed{}."""
    rows = []
    for i in range(n):
        problem = f"Problem {i}: find the exact value of the quantity described in part {i * 7 % 13}."
        skills = [SKILLS[i % 4], SKILLS[(i + 1) % 4]] if i % 3 else [SKILLS[i % 4]]
        row: dict[str, Any] = {"id": f"p{i}", "problem": problem, "skills": skills}
        if i % 2:
            row["answer"] = eval_reference(problem)
        else:
            row["solution"] = f"First $\\boxed{{0}}$ is wrong; in the end $\\boxed{{{eval_reference(problem)}}}$."
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_math_reports_the_true_accuracy(
    tmp_path: Path, processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(**KNOBS)
    env = service_env({"fake": fake.endpoint_settings(), "judge": fake.endpoint_settings()})
    api = processes.api(env)
    processes.worker(env)
    rows = question_file(tmp_path / "questions.jsonl", 48)
    config = FakeConfig(**KNOBS)
    plans = [eval_plan(r["problem"], config) for r in rows]
    assert {"wrong", "notation", "bad_steps", "plain"} <= set(plans)

    # --judge none: only the final answer counts (a right answer through a wrong step is right)
    out = tmp_path / "none"
    done = skillmix("eval-math", "--endpoint", "fake", "--questions", str(tmp_path / "questions.jsonl"),
                    "-o", str(out), "--judge", "none", "--api", api, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = read_jsonl(out / "results.jsonl")
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    truth = [plan != "wrong" for plan in plans]
    assert [r["correct"] for r in results] == truth
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == {"n": 48, "correct": sum(truth), "accuracy": sum(truth) / 48}
    assert summary["kind"] == "mixed" and summary["model"] and summary["judge"] is None
    for skill in SKILLS:
        mine = [t for r, t in zip(rows, truth, strict=True) if skill in r["skills"]]
        assert summary["per_skill"][skill] == {"n": len(mine), "correct": sum(mine), "accuracy": sum(mine) / len(mine)}
    pair = "|".join(sorted(rows[1]["skills"]))
    mine = [
        t for r, t in zip(rows, truth, strict=True) if len(r["skills"]) == 2 and "|".join(sorted(r["skills"])) == pair
    ]
    assert summary["per_pair"][pair]["correct"] == sum(mine) and summary["per_pair"][pair]["n"] == len(mine)
    assert all(r["judge_verdict"] is None for r in results)

    # with a judge: its verdict and reason are kept, and right answers through wrong steps count as wrong
    out = tmp_path / "judged"
    done = skillmix("eval-math", "--endpoint", "fake", "--questions", str(tmp_path / "questions.jsonl"),
                    "-o", str(out), "--judge", "judge", "--api", api, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = read_jsonl(out / "results.jsonl")
    assert [r["correct"] for r in results] == [plan in ("plain", "notation") for plan in plans]
    for result, plan in zip(results, plans, strict=True):
        assert result["judge_verdict"] is (plan != "bad_steps")
        if plan == "bad_steps":
            assert result["equivalent"] and result["judge_reason"] == EVAL_BAD_REASON
    summary = json.loads((out / "summary.json").read_text())
    judge = summary["judge_summary"]
    assert judge["right_answer_wrong_steps"] == plans.count("bad_steps") == judge["steps_invalid"]
    assert judge["reasons"][0]["reason"] == EVAL_BAD_REASON


def test_eval_math_refuses_a_file_without_answers(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"problem": "2+2?", "solution": "four"}) + "\n")
    done = skillmix("eval-math", "--endpoint", "x", "--questions", str(path), "-o", str(tmp_path / "o"),
                    "--api", "http://127.0.0.1:9", env=service_env())  # fmt: skip
    assert done.returncode == 2 and "no 'answer'" in done.stdout


def test_square_law_command_writes_fit_and_png(tmp_path: Path) -> None:
    paths = []
    for model, x in (("small", 0.35), ("mid", 0.55), ("large", 0.7), ("huge", 0.9)):
        for kind, accuracy in (("single", x), ("pair", x**2 * 1.02)):
            path = tmp_path / f"{model}-{kind}.json"
            path.write_text(json.dumps({"model": model, "kind": kind, "overall": {"n": 100, "accuracy": accuracy}}))
            paths.append(str(path))
    done = skillmix("square-law", *paths, "-o", str(tmp_path / "plot.png"), env=service_env())
    assert done.returncode == 0, done.stdout + done.stderr
    data = (tmp_path / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    fit = json.loads((tmp_path / "plot.json").read_text())["fit"]
    assert abs(fit["a"] - 2) < 0.1 and fit["n"] == 4 and fit["ci_low"] < fit["a"] < fit["ci_high"]
    missing = skillmix("square-law", paths[0], "-o", str(tmp_path / "p2.png"), env=service_env())
    assert missing.returncode == 2 and "incomplete: small" in missing.stdout

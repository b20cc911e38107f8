"""``skillmix eval-math`` and ``skillmix square-law``: evaluate endpoints on math questions (papers.md §B).

``eval-math --endpoint NAME --questions FILE -o DIR [--judge ENDPOINT|none]`` reads a question file (a MATH^2
export or MATH-style JSON/JSONL: ``problem``, and ``answer`` or a ``solution`` whose last ``\\boxed{}`` is the
answer; optional ``skills`` and ``id``), runs it as an ``eval-math`` job on the ordinary queue (same limits,
retries, cost accounting), and writes ``DIR/results.jsonl`` (one line per question, in input order) and
``DIR/summary.json`` (accuracy overall, per skill and per skill pair, the judge's verdicts and reasons).

``square-law SUMMARY... -o plot.png`` takes eval-math summaries, one ``kind: single`` (MATH-style questions)
and one ``kind: pair`` (MATH^2) per model (matched by ``model``), fits Y = X^a and draws the plot.
"""

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import typer
from rich.table import Table

from schemas.answers import reference_answer
from schemas.evaluation import EvalQuestion
from schemas.examples import Example, extras_of
from schemas.jobs import EvalExtras
from service.cli_common import API_OPTION, api_client, api_errors, api_url, console, fail, submit_and_follow
from service.square_law import ModelPoint, fit_power_law, plot

MAX_REASONS = 200  # judge reasons kept in summary.json (all of them are in results.jsonl)


def read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            fail(f"{path}: a .json question file must hold a list of objects")
        return data
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                fail(f"{path}:{n}: not JSON ({exc})")
    return rows


def load_questions(path: Path) -> list[EvalQuestion]:
    """The file's questions in order; fails naming every row without a problem or a reference answer."""
    questions: list[EvalQuestion] = []
    bad: list[str] = []
    seen: set[str] = set()
    for i, row in enumerate(read_rows(path)):
        if not isinstance(row, dict):
            bad.append(f"row {i}: not an object")
            continue
        problem = row.get("problem") or row.get("question")
        answer = reference_answer(row)
        if not isinstance(problem, str) or not problem.strip():
            bad.append(f"row {i}: no 'problem'")
            continue
        if not answer:
            bad.append(f"row {i}: no 'answer' and no \\boxed{{}} in 'solution'")
            continue
        qid = str(row.get("id") or row.get("unique_id") or f"q{i}")
        if qid in seen:
            qid = f"{qid}#{i}"
        seen.add(qid)
        skills = row.get("skills") or ([row["skill"]] if isinstance(row.get("skill"), str) else [])
        questions.append(EvalQuestion(id=qid, problem=problem, answer=answer, skills=[str(s) for s in skills]))
    if bad:
        fail(f"{path}: {len(bad)} unusable row(s): " + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    if not questions:
        fail(f"{path}: no questions")
    return questions


def kind_of(questions: list[EvalQuestion]) -> str:
    sizes = {len(q.skills) for q in questions}
    return "pair" if sizes == {2} else "single" if sizes <= {0, 1} else "mixed"


def result_row(question: EvalQuestion, example: Example | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": question.id, "skills": question.skills, "reference": question.answer}
    grading = extras_of(example, EvalExtras).eval if example is not None else None
    if grading is None:
        error = "no record" if example is None else ", ".join(example.verdict.reasons) or "no grading"
        detail = example.verdict.detail if example is not None else ""
        return {
            **row,
            "correct": False,
            "extracted": "",
            "equivalent": False,
            "judge_verdict": None,
            "judge_reason": "",
            "error": error,
            "error_detail": detail,
            "response": "",
        }
    return {
        **row,
        "correct": grading.correct,
        "extracted": grading.extracted,
        "equivalent": grading.equivalent,
        "judge_verdict": grading.judge_verdict,
        "judge_reason": grading.judge_reason,
        "finish_reason": grading.finish_reason,
        "response": example.output if example is not None else "",
    }


def _rate(correct: int, n: int) -> dict[str, Any]:
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None}


def summarize(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    per_skill: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_pair: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        for skill in dict.fromkeys(row["skills"]):
            per_skill[skill][0] += row["correct"]
            per_skill[skill][1] += 1
        if len(row["skills"]) == 2:
            key = "|".join(sorted(row["skills"]))
            per_pair[key][0] += row["correct"]
            per_pair[key][1] += 1
    judged = [r for r in rows if r["judge_verdict"] is not None or r["judge_reason"]]
    summary: dict[str, Any] = {
        **meta,
        "overall": _rate(sum(r["correct"] for r in rows), len(rows)),
        "equivalent": _rate(sum(r["equivalent"] for r in rows), len(rows)),
        "errors": sum("error" in r for r in rows),
        "no_final_answer": sum(not r["extracted"] and "error" not in r for r in rows),
        "per_skill": {k: _rate(*v) for k, v in sorted(per_skill.items())},
        "per_pair": {k: _rate(*v) for k, v in sorted(per_pair.items())},
    }
    if meta.get("judge"):
        invalid = [r for r in judged if r["judge_verdict"] is False]
        summary["judge_summary"] = {
            "judged": len(judged),
            "steps_valid": sum(r["judge_verdict"] is True for r in judged),
            "steps_invalid": len(invalid),
            "unreadable": sum(r["judge_verdict"] is None for r in judged),
            "right_answer_wrong_steps": sum(r["equivalent"] and r["judge_verdict"] is False for r in rows),
            "reasons": [
                {
                    "id": r["id"],
                    "equivalent": r["equivalent"],
                    "steps_valid": r["judge_verdict"],
                    "reason": r["judge_reason"],
                }
                for r in (invalid + [r for r in judged if r["judge_verdict"] is not False])[:MAX_REASONS]
            ],
        }
    return summary


async def _examples(client: httpx.AsyncClient, job_id: str) -> dict[int, Example]:
    found: dict[int, Example] = {}
    for status in ("rejected", "accepted"):  # accepted last: it wins if an index were in both
        async with client.stream("GET", f"/v1/jobs/{job_id}/examples", params={"status": status}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.strip():
                    example = Example.model_validate(orjson.loads(line))
                    found[example.index] = example
    return found


def write_outputs(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


async def run_eval(
    api: str, spec: dict[str, Any], questions: list[EvalQuestion], out: Path, meta: dict[str, Any]
) -> int:
    async with api_client(api, 120) as client:
        run = await submit_and_follow(
            client,
            api,
            lambda: client.post("/v1/jobs", json=spec),
            "eval-math job",
            detail=lambda _: f" ({len(questions)} questions)",
        )
        if run.code or run.job_id is None:
            return run.code
        job_id = run.job_id
        with api_errors(api):
            examples = await _examples(client, job_id)
    rows = [result_row(q, examples.get(i)) for i, q in enumerate(questions)]
    model = next((e.model for e in examples.values() if e.model), "")
    meta = {**meta, "job_id": job_id, "model": meta.get("model") or model}
    summary = summarize(rows, meta)
    await asyncio.to_thread(write_outputs, out, rows, summary)
    console.print(report(summary, out))
    return 0


def report(summary: dict[str, Any], out: Path) -> Table:
    overall = summary["overall"]
    table = Table(
        title=f"{summary['model'] or summary['endpoint']}: {overall['correct']} of {overall['n']} correct "
        f"({overall['accuracy']:.1%})"
    )
    table.add_column("skill")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    for name, rate in list(summary["per_skill"].items())[:30]:
        table.add_row(name, str(rate["n"]), f"{rate['accuracy']:.1%}")
    judge = summary.get("judge_summary")
    extra = f"; judge: {judge['right_answer_wrong_steps']} right answers with wrong steps" if judge else ""
    table.caption = f"{out / 'results.jsonl'}, {out / 'summary.json'}{extra}"
    return table


def eval_math(
    endpoint: str = typer.Option(..., help="the endpoint (model) to evaluate"),
    questions_file: Path = typer.Option(..., "--questions", help="MATH^2 export or MATH-style JSON/JSONL"),
    output: Path = typer.Option(..., "--output", "-o", help="directory for results.jsonl and summary.json"),
    judge: str = typer.Option("none", help="endpoint of an LLM judge that checks the steps, or 'none'"),
    kind: str | None = typer.Option(None, help="single or pair, for square-law (default: from the skills)"),
    label: str | None = typer.Option(None, help="model name in the summary (default: the endpoint's model)"),
    max_tokens: int = typer.Option(2048, help="of each solution"),
    seed: int = typer.Option(0),
    api: str | None = API_OPTION,
) -> None:
    """Evaluate an endpoint on math questions: final answers by math-verify, steps by an optional judge."""
    if output.exists() and not output.is_dir():
        fail(f"{output} exists and is not a directory")
    if not questions_file.is_file():
        fail(f"{questions_file}: no such file")
    if kind is not None and kind not in ("single", "pair"):
        fail("--kind is single or pair")
    questions = load_questions(questions_file)
    judge_endpoint = None if judge.lower() == "none" else judge
    spec: dict[str, Any] = {
        "recipe": "eval-math",
        "endpoint": endpoint,
        "questions": [q.model_dump() for q in questions],
        "judge_endpoint": judge_endpoint,
        "seed": seed,
        "params": {"max_tokens": max_tokens, "temperature": 0.0},
    }
    meta = {
        "endpoint": endpoint,
        "model": label or "",
        "questions": str(questions_file),
        "kind": kind or kind_of(questions),
        "judge": judge_endpoint,
    }
    raise typer.Exit(asyncio.run(run_eval(api_url(api), spec, questions, output, meta)))


def points_from_summaries(summaries: list[dict[str, Any]]) -> list[ModelPoint]:
    """One point per model: X from its ``kind: single`` summary, Y from its ``kind: pair`` one."""
    by_model: dict[str, dict[str, float]] = defaultdict(dict)
    for s in summaries:
        name = s.get("model") or s.get("endpoint") or "?"
        kind = s.get("kind")
        accuracy = (s.get("overall") or {}).get("accuracy")
        if kind not in ("single", "pair") or accuracy is None:
            fail(f"summary of {name!r}: needs kind single or pair and overall.accuracy (re-run with --kind)")
        by_model[name][kind] = float(accuracy)
    missing = [m for m, k in by_model.items() if len(k) < 2]
    if missing:
        fail(f"each model needs one single and one pair summary; incomplete: {', '.join(missing)}")
    return [ModelPoint(m, k["single"], k["pair"]) for m, k in sorted(by_model.items())]


def square_law(
    summaries: list[Path] = typer.Argument(..., help="eval-math summary.json files (single and pair per model)"),
    output: Path = typer.Option(..., "--output", "-o", help="the PNG plot; the fit goes next to it as .json"),
) -> None:
    """Fit Y = X^a across models (X: single-skill accuracy, Y: pair accuracy) and plot it with Y = X²."""
    loaded = []
    for path in summaries:
        try:
            loaded.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"{path}: {exc}")
    models = points_from_summaries(loaded)
    try:
        fit = fit_power_law([(m.x, m.y) for m in models])
    except ValueError as exc:
        fail(str(exc))
    plot(models, fit, output)
    result = {"fit": fit.as_dict(), "models": [{"model": m.model, "x": m.x, "y": m.y} for m in models]}
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ci = (
        f" (95% CI {fit.ci_low:.3f} to {fit.ci_high:.3f})" if fit.ci_low is not None and fit.ci_high is not None else ""
    )
    r2 = f", R² {fit.r2:.3f}" if fit.r2 is not None else ""
    console.print(f"Y = X^a with a = {fit.a:.3f}{ci}{r2} over {fit.n} model(s); plot: {output}")

"""``skillmix judge-eval LABELLED -o DIR --judge ENDPOINT``: calibrate a judge before trusting it with a run.

LABELLED is JSONL, one example a line: ``instruction``, ``input`` (optional), ``output``, ``skills`` (optional),
``label`` good|bad and ``kind`` (optional, e.g. what is wrong with a bad one). Every line is checked here first
(a bad line fails naming its line number and field), then the set runs as a ``judge-eval`` job on the
ordinary queue (``POST /v1/judge-evals``: the same limits, retries and cost accounting as any job). The API
computes the report; this command writes it to ``DIR/report.json`` and draws ``DIR/report.png`` itself
(client-side, from the JSON: the API process never loads matplotlib). A judge whose scores do not separate
good from bad (AUC near 0.5) or that follows length is announced in red before anything else.

``--save-profile NAME`` saves the chosen threshold as the team's quality profile NAME (``quality.profile`` in
any job spec), unless the judge does not separate good from bad or no threshold met the bound.
"""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from pydantic import ValidationError
from rich.table import Table

from schemas.judge_eval import JudgeEvalReport, LabelledExample, Rates
from service.cli_common import (
    API_OPTION,
    api_client,
    api_errors,
    api_url,
    console,
    fail,
    print_validation_errors,
    submit_and_follow,
)
from service.judge_plot import plot

MAX_SHOWN_ERRORS = 20
SETTLE_TIMEOUT_S = 60.0


def load_labelled(path: Path) -> list[LabelledExample]:
    """The file's examples in order; fails naming every bad line (its number and field)."""
    examples: list[LabelledExample] = []
    bad: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"line {n}: not JSON ({exc.msg})")
            continue
        try:
            examples.append(LabelledExample.model_validate(row))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                field = ".".join(str(p) for p in error["loc"]) or "(line)"
                bad.append(f"line {n}: {field}: {error['msg']}")
    if bad:
        shown = "\n  ".join(bad[:MAX_SHOWN_ERRORS])
        more = f"\n  ... and {len(bad) - MAX_SHOWN_ERRORS} more" if len(bad) > MAX_SHOWN_ERRORS else ""
        fail(f"{path}: {len(bad)} unusable line(s):\n  {shown}{more}")
    if not examples:
        fail(f"{path}: no examples")
    labels = {e.label for e in examples}
    if labels != {"good", "bad"}:
        console.print(f"[yellow]{path} has only {labels.pop()} examples: rates on the other side are not measured")
    return examples


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _row(name: str, rates: Rates) -> list[str]:
    return [
        name,
        f"{rates.caught}/{rates.bad}",
        _rate(rates.catch_rate),
        f"{rates.false_rejects}/{rates.good}",
        _rate(rates.false_reject_rate),
    ]


def summary_table(report: JudgeEvalReport, out: Path) -> Table:
    table = Table(title=f"judge {report.endpoint} ({report.model}) on {report.examples} labelled examples")
    for column in ("", "caught", "catch rate", "false rejects", "false-reject rate"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row(*_row("heuristics", report.heuristics.overall))
    table.add_row(*_row(f"judge (min_score {report.judge_min_score})", report.judge.overall))
    table.add_row(*_row("both", report.combined.overall))
    for kind, rates in report.judge.per_kind.items():
        if rates.bad:
            table.add_row(*_row(f"  judge, kind {kind}", rates))
    auc = f"{report.bias.auc:.2f}" if report.bias.auc is not None else "n/a"
    table.caption = (
        f"AUC {auc}; errors {report.errors.total}; {report.cost.llm_calls} calls, ${report.cost.cost_usd:.4f}\n"
        f"{report.chosen_note}\n{out / 'report.json'}, {out / 'report.png'}"
    )
    return table


def warn(report: JudgeEvalReport) -> None:
    """The bias checks, loud, before the numbers: nobody should take this judge's threshold without reading them."""
    for warning in report.bias.warnings:
        console.print(f"[bold red]WARNING[/bold red]: {warning}")


async def settled(client: httpx.AsyncClient, job_id: str, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Finished is not yet settled: the last items may still be curating. Wait for every record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await client.get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        if response.json().get("settled"):
            return
        await asyncio.sleep(0.2)
    console.print(f"[yellow]job {job_id} is not settled after {timeout_s:.0f} s: the report may miss records")


def write_report(out: Path, body: dict[str, Any], report: JudgeEvalReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    plot(report, out / "report.png")


async def run(api: str, spec: dict[str, Any], out: Path, save_profile: str | None) -> int:
    async with api_client(api, 120) as client:
        done = await submit_and_follow(
            client,
            api,
            lambda: client.post("/v1/judge-evals", json=spec),
            "judge-eval job",
            detail=lambda _: f" ({len(spec['examples'])} examples, judge {spec['judge']})",
        )
        if done.code or done.job_id is None:
            return done.code
        with api_errors(api):
            await settled(client, done.job_id)
            response = await client.get(f"/v1/judge-evals/{done.job_id}/report")
            response.raise_for_status()
            report = JudgeEvalReport.model_validate(response.json())
        await asyncio.to_thread(write_report, out, response.json(), report)
        warn(report)
        console.print(summary_table(report, out))
        if save_profile is None:
            return 0
        if not report.bias.separates:
            console.print(f"[red]not saving profile {save_profile!r}[/red]: this judge does not separate good from bad")
            return 1
        with api_errors(api):
            saved = await client.post("/v1/quality-profiles", json={"name": save_profile, "judge_eval": done.job_id})
            if saved.status_code == 422:
                print_validation_errors(saved)
                return 1
            saved.raise_for_status()
        judge = saved.json()["judge"]
        console.print(
            f"saved quality profile [bold]{save_profile}[/bold]: judge {judge['endpoint']}, min_score "
            f'{judge["min_score"]}; use it with "quality": {{"profile": "{save_profile}"}}'
        )
        return 0


def judge_eval(
    labelled: Path = typer.Argument(..., help="JSONL: instruction, input, output, skills, label good|bad, kind"),
    output: Path = typer.Option(..., "--output", "-o", help="directory for report.json and report.png"),
    judge: str = typer.Option(..., help="endpoint name of the judge to calibrate"),
    max_false_reject: float = typer.Option(0.03, min=0.0, max=1.0, help="share of good examples it may reject"),
    save_profile: str | None = typer.Option(None, help="save the chosen threshold as this quality profile"),
    max_tokens: int = typer.Option(512, help="of each judge answer"),
    seed: int = typer.Option(0),
    api: str | None = API_OPTION,
) -> None:
    """Measure a judge on labelled good and bad examples, and choose its min_score, before a large run."""
    if output.exists() and not output.is_dir():
        fail(f"{output} exists and is not a directory")
    if not labelled.is_file():
        fail(f"{labelled}: no such file")
    examples = load_labelled(labelled)
    spec: dict[str, Any] = {
        "judge": judge,
        "examples": [e.model_dump(exclude_defaults=True) | {"label": e.label} for e in examples],
        "max_false_reject": max_false_reject,
        "judge_max_tokens": max_tokens,
        "seed": seed,
    }
    raise typer.Exit(asyncio.run(run(api_url(api), spec, output, save_profile)))

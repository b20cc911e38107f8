"""The live progress bar of a job (``submit --wait``, ``quickstart``) and its one-screen summary."""

import asyncio
import time

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.jobs import JobStatus


async def fetch_status(client: httpx.AsyncClient, job_id: str) -> JobStatus:
    response = await client.get(f"/v1/jobs/{job_id}")
    response.raise_for_status()
    return JobStatus.model_validate_json(response.content)


async def follow(client: httpx.AsyncClient, job_id: str, console: Console, interval: float = 0.5) -> JobStatus:
    """Poll until the job finishes, drawing accepted/target, calls/s, tokens and 429s."""
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} accepted"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        status = await fetch_status(client, job_id)
        task = bar.add_task(f"job {job_id[:8]}", total=status.count, stats="")
        previous: JobStatus | None = None
        while True:
            c = status.counters
            elapsed = max(time.monotonic() - started, 1e-6)
            stats = (
                f"{c.llm_calls / elapsed:5.1f} calls/s  {c.prompt_tokens + c.completion_tokens} tok  "
                f"{c.rate_limited} x429  {c.rejected} rejected  ${c.cost_usd:.4f}{budget_left(status)}"
            )
            bar.update(task, completed=c.accepted, stats=stats, description=describe(status, previous))
            if status.state.finished:
                return status
            await asyncio.sleep(interval)
            previous, status = status, await fetch_status(client, job_id)


def describe(status: JobStatus, previous: JobStatus | None) -> str:
    """The bar's description: the job's state, or, for a batch job whose counters did not move since the last
    poll while its requests wait at the provider, that it is waiting on a batch (not stalled)."""
    text = f"job {status.id[:8]} {status.state}"
    batch = status.batch
    if batch is None or status.state.finished or not (batch.open_batches or batch.lines_waiting):
        return text
    if previous is not None and _moved(status, previous):
        return text
    oldest = f", oldest open {_duration(batch.oldest_open_s)}" if batch.oldest_open_s is not None else ""
    return (
        f"{text}: waiting on batch ({batch.open_batches} open, {batch.lines_waiting} lines waiting, "
        f"round {batch.rounds}{oldest})"
    )


def _moved(status: JobStatus, previous: JobStatus) -> bool:
    now, then = status.counters, previous.counters
    return (now.llm_calls, now.processed, now.accepted) != (then.llm_calls, then.processed, then.accepted)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def budget_left(status: JobStatus) -> str:
    """What the job's budget still allows, for the progress line ("" without a budget)."""
    left = status.budget_left
    if left is None:
        return ""
    parts = []
    if left.cost_usd is not None:
        parts.append(f"${left.cost_usd:.4f}")
    if left.tokens is not None:
        parts.append(f"{left.tokens} tok")
    paused = " paused: raise it with `skillmix budget`" if status.state == "paused" else ""
    return f" ({' + '.join(parts)} left){paused}"


def summary(status: JobStatus, seconds: float) -> Table:
    c = status.counters
    table = Table(title=f"job {status.id} — {status.state}", show_header=False)
    table.add_row("accepted", f"{c.accepted} of {status.count}")
    table.add_row("rejected", f"{c.rejected}" + "".join(f"\n  {r}: {n}" for r, n in c.rejected_by_reason.items()))
    table.add_row("items generated", f"{c.generated} (parse failures redrawn: {c.parse_failures})")
    table.add_row("LLM calls", f"{c.llm_calls} (retries {c.retries}, 429s {c.rate_limited})")
    table.add_row("tokens", f"{c.prompt_tokens} prompt + {c.completion_tokens} completion")
    table.add_row("cost estimate", f"${c.cost_usd:.4f}")
    if status.batch is not None:
        b = status.batch
        table.add_row(
            "batches",
            f"{b.batches_done} done, {b.open_batches} open; {b.lines_submitted} lines submitted in {b.rounds} rounds",
        )
    if status.budget is not None:
        cap = status.budget
        limits = [f"${cap.max_cost_usd:.4f}"] if cap.max_cost_usd else []
        limits += [f"{cap.max_tokens} tok"] if cap.max_tokens else []
        table.add_row("budget", " + ".join(limits) + budget_left(status))
    table.add_row("seconds", f"{seconds:.1f}")
    if status.message:
        table.add_row("message", status.message)
    return table

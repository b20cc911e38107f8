"""``skillmix curate FILE -o DIR``: the curate stage (quality checks, dedup, optional judge) on a dataset a team
brings; writes ``DIR/accepted.jsonl`` and ``DIR/rejected.jsonl`` (the rows as given, in input order, rejected
ones with ``reasons``) and prints the count per reason.

A module of its own (registered by ``service.cli``) so its options do not crowd the main CLI.
"""

import asyncio
from pathlib import Path
from typing import Any, get_args

import httpx
import typer
from rich.table import Table

from schemas.curation import QualitySettings
from schemas.jobs import JobStatus
from service.cli_common import API_OPTION, api_client, api_errors, api_url, console, fail, post_spec, submit_and_follow

OUTPUTS = ("accepted", "rejected")


def check_names() -> list[str]:
    """Every optional quality check, in the default order (``--skip-check`` takes these)."""
    annotation = QualitySettings.model_fields["checks"].annotation
    (literal,) = get_args(annotation)
    return list(get_args(literal))


def build_spec(
    file_format: str | None,
    row_format: str | None,
    messages_column: str | None,
    no_dedup: bool,
    no_near_dedup: bool,
    skip_check: list[str],
    judge: str | None,
    min_response_words: int | None,
) -> dict[str, Any]:
    known = check_names()
    unknown = [name for name in skip_check if name not in known]
    if unknown:
        fail(f"unknown check {', '.join(map(repr, unknown))}; the checks are: {', '.join(known)}")
    source: dict[str, Any] = {}
    for key, value in (("format", file_format), ("row_format", row_format), ("messages_column", messages_column)):
        if value:
            source[key] = value
    spec: dict[str, Any] = {"recipe": "curate", "source": source}
    if no_dedup or no_near_dedup:
        spec["dedup"] = {"exact": not no_dedup, "near": False}
    quality: dict[str, Any] = {}
    if skip_check:
        defaults = QualitySettings().checks
        quality["checks"] = [name for name in defaults if name not in skip_check]
    if judge:
        quality["judge"] = {"endpoint": judge}
    if min_response_words is not None:
        quality["min_response_words"] = min_response_words
    if quality:
        spec["quality"] = quality
    return spec


async def _download(client: httpx.AsyncClient, job_id: str, kind: str, out: Path) -> int:
    """Stream one records file to ``out`` (through a ``.part`` file); returns its line count."""
    part = out.with_name(out.name + ".part")
    lines = 0
    async with client.stream("GET", f"/v1/curate/{job_id}/records", params={"status": kind}) as response:
        response.raise_for_status()
        with part.open("wb") as fh:
            async for chunk in response.aiter_bytes():
                lines += chunk.count(b"\n")
                fh.write(chunk)
    part.replace(out)
    return lines


def report(status: JobStatus, written: dict[str, int], out: Path) -> Table:
    table = Table(title=f"curated {status.counters.processed} rows", show_header=True)
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    table.add_row("accepted", str(status.counters.accepted))
    for reason, n in sorted(status.counters.rejected_by_reason.items(), key=lambda rn: (-rn[1], rn[0])):
        table.add_row(f"rejected: {reason}", str(n))
    for kind in OUTPUTS:
        table.caption = (table.caption + "\n" if table.caption else "") + f"{out / f'{kind}.jsonl'}: {written[kind]}"
    return table


async def run(api: str, spec: dict[str, Any], upload: Path | None, out: Path) -> int:
    async with api_client(api, 60) as client:
        run = await submit_and_follow(
            client,
            api,
            lambda: post_spec(client, "/v1/curate", spec, upload),
            "curate job",
            detail=lambda body: f" ({body['count']} rows)",
        )
        if run.code or run.job_id is None or run.status is None:
            return run.code
        with api_errors(api):
            written = {kind: await _download(client, run.job_id, kind, out / f"{kind}.jsonl") for kind in OUTPUTS}
        console.print(report(run.status, written, out))
        return 0


def curate(
    file: str = typer.Argument(..., help="Alpaca JSON/JSONL, ShareGPT/messages JSONL, or Parquet to upload"),
    output: Path = typer.Option(..., "--output", "-o", help="directory for accepted.jsonl and rejected.jsonl"),
    file_format: str | None = typer.Option(None, "--format", help="jsonl, json or parquet (default: from the suffix)"),
    row_format: str | None = typer.Option(None, help="alpaca or messages (default: detected from the first row)"),
    messages_column: str | None = typer.Option(None, help="chat rows: the messages column (default: detected)"),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="keep duplicates (exact and near)"),
    no_near_dedup: bool = typer.Option(False, "--no-near-dedup", help="drop exact duplicates only"),
    skip_check: list[str] = typer.Option([], "--skip-check", help="turn one quality check off (repeatable)"),
    judge: str | None = typer.Option(None, help="also grade each row with an LLM judge on this endpoint"),
    min_response_words: int | None = typer.Option(None, help="too_short: fewer response words (default 40)"),
    server_path: bool = typer.Option(False, help="FILE is relative to the server's data dir; nothing is uploaded"),
    api: str | None = API_OPTION,
) -> None:
    """Curate a dataset you bring: quality checks, dedup and an optional judge; the rows kept as they were."""
    if output.exists() and not output.is_dir():
        fail(f"{output} exists and is not a directory")
    spec = build_spec(
        file_format, row_format, messages_column, no_dedup, no_near_dedup, skip_check, judge, min_response_words
    )
    upload: Path | None = None
    if server_path:
        spec["source"]["path"] = file
    else:
        upload = Path(file)
        if not upload.is_file():
            fail(f"{file}: no such file (use --server-path for a file in the server's data dir)")
    output.mkdir(parents=True, exist_ok=True)
    raise typer.Exit(asyncio.run(run(api_url(api), spec, upload, output)))

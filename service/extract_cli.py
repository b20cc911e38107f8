"""``skillmix extract agnostic|dataset``: submit a skill extraction and follow it like a generation job.

A module of its own (mounted by ``service.cli``) so the extraction options do not crowd the main CLI.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

from service.cli_common import (
    API_OPTION,
    api_client,
    api_url,
    console,
    post_spec,
    submit_and_follow,
)

app = typer.Typer(help="Extract a skill set from a seed dataset or from the model itself.", no_args_is_help=True)
NAME_OPTION = typer.Option(..., "--name", "-n", help="skill set name; the result is its next version")


async def _run(api: str, spec: dict[str, Any], upload: Path | None, wait: bool, output: Path | None) -> int:
    async with api_client(api, 30) as client:
        url = "/v1/skill-sets/extract"
        run = await submit_and_follow(client, api, lambda: post_spec(client, url, spec, upload), "extraction job", wait)
        if run.code or run.job_id is None or run.status is None:
            return run.code
        job_id, status = run.job_id, run.status
        if not status.result:
            return 1
        console.print(f'skill set [bold]{status.result}[/bold]: use it as "skill_set": "{status.result}"')
        if status.counters.rejected and spec["recipe"] == "extract-from-dataset":
            console.print(f"unlabelled rows: {api}/v1/skill-sets/extract/{job_id}/unlabelled")
        if output is not None:
            name, _, version = status.result.partition("@")
            body = await client.get(f"/v1/skill-sets/{name}/{version}")
            body.raise_for_status()
            await asyncio.to_thread(_write_json, output, body.json())
            console.print(f"wrote {output}")
        return 0


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False))


def _common(name: str, endpoint: str | None, seed: int, query_types: int, description: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"skill_set_name": name, "seed": seed, "num_query_types": query_types}
    if endpoint:
        spec["endpoint"] = endpoint
    if description:
        spec["description"] = description
    return spec


@app.command()
def agnostic(
    name: str = NAME_OPTION,
    topics: int = typer.Option(10, help="topics to ask for"),
    skills_per_topic: int = typer.Option(10, help="skills per topic"),
    query_types: int = typer.Option(16, help="query types to ask for"),
    domain: str | None = typer.Option(None, help='e.g. "customer support"; instruction following if absent'),
    description: str = typer.Option("", help="the skill set's description"),
    endpoint: str | None = typer.Option(None, help="endpoint name (server default if absent)"),
    seed: int = 0,
    allow_shortfall: bool = typer.Option(
        False, "--allow-shortfall", help="save the set even if under half of the skills asked for are usable"
    ),
    wait: bool = typer.Option(True, help="follow the job with a live progress bar"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the skill set JSON here"),
    api: str | None = API_OPTION,
) -> None:
    """Model-only extraction: topics, skills per topic, query types."""
    spec = _common(name, endpoint, seed, query_types, description) | {
        "recipe": "extract-agnostic",
        "num_topics": topics,
        "skills_per_topic": skills_per_topic,
    }
    if allow_shortfall:
        spec["allow_shortfall"] = True
    if domain:
        spec["domain"] = domain
    raise typer.Exit(asyncio.run(_run(api_url(api), spec, None, wait, output)))


@app.command()
def dataset(
    path: str = typer.Argument(..., help="a local JSONL/Parquet file to upload (or see --server-path)"),
    name: str = NAME_OPTION,
    server_path: bool = typer.Option(False, help="PATH is relative to the server's data dir; nothing is uploaded"),
    text_column: str | None = typer.Option(None, help="read this column (default: alpaca or chat rows, detected)"),
    row_format: str | None = typer.Option(None, help="alpaca, messages, text or math (default: detected)"),
    file_format: str | None = typer.Option(None, "--format", help="jsonl or parquet (default: from the suffix)"),
    rows: int = typer.Option(0, help="use only the first N rows (0 = all)"),
    max_rows: int | None = typer.Option(None, help="refuse larger datasets (server default 100,000)"),
    max_skills: int | None = typer.Option(None, help="coarse skills at most (default 100)"),
    rows_per_call: int | None = typer.Option(None, help="rows labelled per LLM call (default 20)"),
    context_tokens: int | None = typer.Option(None, help="the model's context window (default 16,000)"),
    query_types: int = typer.Option(16, help="query types to ask for"),
    description: str = typer.Option("", help="what the data is; also given to the model"),
    endpoint: str | None = typer.Option(None, help="endpoint name (server default if absent)"),
    seed: int = 0,
    wait: bool = typer.Option(True, help="follow the job with a live progress bar"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the skill set JSON here"),
    api: str | None = API_OPTION,
) -> None:
    """Metacognition extraction from a seed dataset: label rows, merge labels, map rows back."""
    source: dict[str, Any] = {}
    for key, value in (("text_column", text_column), ("row_format", row_format), ("format", file_format)):
        if value:
            source[key] = value
    spec = _common(name, endpoint, seed, query_types, description) | {"recipe": "extract-from-dataset", "rows": rows}
    for key, opt in (
        ("max_rows", max_rows),
        ("max_skills", max_skills),
        ("rows_per_call", rows_per_call),
        ("context_tokens", context_tokens),
    ):
        if opt is not None:
            spec[key] = opt
    upload: Path | None = None
    if server_path:
        source["path"] = path
    else:
        upload = Path(path)
        if not upload.is_file():
            console.print(f"[red]error:[/red] {path}: no such file (use --server-path for a file on the server)")
            raise typer.Exit(2)
    spec["source"] = source
    raise typer.Exit(asyncio.run(_run(api_url(api), spec, upload, wait, output)))

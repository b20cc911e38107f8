"""``skillmix shirk JOB``: the shirker ablation (papers.md §A) of a finished job, as a labelled dataset.

A ``shirk`` job copies the source job's accepted examples and regenerates ``--rate`` of their responses
through the endpoint with the paper's shirker prompt of ``--kind`` (``junk``: lazy, generic and padded;
``brevity``: "answer in one paragraph"); every record carries ``shirker``, ``shirker_kind``, ``source_job``
and ``source_id``. Mounted by ``service.cli``.
"""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import typer

from service.cli_common import API_OPTION, api_client, api_url, console, fail, submit_and_follow

EXPORT_TIMEOUT_S = 120.0


async def _run(api: str, spec: dict[str, Any], wait: bool, output: Path | None) -> int:
    async with api_client(api, 30) as client:
        follow = wait or output is not None
        run = await submit_and_follow(client, api, lambda: client.post("/v1/jobs", json=spec), "shirk job", follow)
        if run.code or output is None or run.job_id is None:
            return run.code
        await _download(client, run.job_id, output)
        console.print(f"wrote {output} (JSONL; labels in shirker, shirker_kind, source_job, source_id)")
        return 0


async def _download(client: httpx.AsyncClient, job_id: str, output: Path) -> None:
    params = {"format": "jsonl"}
    async with client.stream("GET", f"/v1/jobs/{job_id}/export", params=params, timeout=EXPORT_TIMEOUT_S) as resp:
        resp.raise_for_status()
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("wb") as fh:
            async for chunk in resp.aiter_bytes():
                fh.write(chunk)


def shirk(
    job_id: str = typer.Argument(help="the finished job whose accepted examples are used"),
    rate: float = typer.Option(0.2, min=0.0, max=1.0, help="share of responses replaced by shirkers"),
    kind: str = typer.Option(..., help="junk (lazy, generic, padded) or brevity (answer in one paragraph)"),
    seed: int = typer.Option(0, min=0, help="which responses are replaced, and the shirker calls' seeds"),
    endpoint: str | None = typer.Option(None, help="endpoint name (default: the server's)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="wait, then write the labelled JSONL here"),
    wait: bool = typer.Option(False, help="follow the job with a live progress bar"),
    api: str | None = API_OPTION,
) -> None:
    """Shirker ablation (papers.md §A): a copy of JOB with --rate of its responses made deliberately bad."""
    if kind not in ("junk", "brevity"):
        fail(f"--kind must be junk or brevity, not {kind!r}")
    spec: dict[str, Any] = {"recipe": "shirk", "source_job": job_id, "rate": rate, "kind": kind, "seed": seed}
    if endpoint:
        spec["endpoint"] = endpoint
    raise typer.Exit(asyncio.run(_run(api_url(api), spec, wait, output)))

"""The ``skillmix`` command: serve the API, run workers, submit and export jobs, run the quick start."""

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from schemas.settings import get_settings
from service.export import ExportFormat
from service.progress import follow, summary

app = typer.Typer(help="Skill-mix synthetic training data as a service.", no_args_is_help=True)
console = Console(soft_wrap=True)
API_OPTION = typer.Option(None, help="API base URL (default: http://SKILLMIX_API_HOST:SKILLMIX_API_PORT)")


def _api(url: str | None) -> str:
    settings = get_settings()
    return url or f"http://{settings.api_host}:{settings.api_port}"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def serve(host: str | None = None, port: int | None = None) -> None:
    """Run the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from service.app import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(settings), host=host or settings.api_host, port=port or settings.api_port, log_level="warning"
    )


@app.command()
def worker(burst: bool = typer.Option(False, help="exit when the queue is empty")) -> None:
    """Run one worker process: chunk generation plus the curate stage."""
    from arq.worker import run_worker

    from workers.worker import WorkerSettings

    run_worker(WorkerSettings, burst=burst)


async def _submit(api: str, body: dict[str, object], wait: bool) -> int:
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        try:
            response = await client.post("/v1/jobs", json=body)
        except httpx.ConnectError:
            _fail(f"no API answering at {api}; start it with `skillmix serve` (and `skillmix worker`)")
        if response.status_code == 422:
            for err in response.json()["detail"]:
                loc = ".".join(str(p) for p in err["loc"][1:]) or "spec"
                console.print(f"[red]invalid {loc}:[/red] {err['msg']}")
            return 2
        response.raise_for_status()
        job_id = response.json()["id"]
        console.print(f"submitted job [bold]{job_id}[/bold]")
        if not wait:
            return 0
        started = time.monotonic()
        status = await follow(client, job_id, console)
        console.print(summary(status, time.monotonic() - started))
        return 0 if status.state == "completed" else 1


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="job spec as a JSON file")],
    wait: bool = typer.Option(False, help="follow the job with a live progress bar"),
    api: str | None = API_OPTION,
) -> None:
    """Submit a job spec (JSON) to the API."""
    try:
        body = json.loads(spec.read_text())
    except FileNotFoundError:
        _fail(f"{spec}: no such file")
    except json.JSONDecodeError as exc:
        _fail(f"{spec}: not valid JSON ({exc.msg} at line {exc.lineno}); a job spec is a JSON object")
    raise typer.Exit(asyncio.run(_submit(_api(api), body, wait)))


async def _export(api: str, job_id: str, fmt: ExportFormat, out: Path) -> int:
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        async with client.stream("GET", f"/v1/jobs/{job_id}/export", params={"format": fmt.value}) as response:
            if response.status_code == 404:
                _fail(f"job {job_id} not found at {api}")
            response.raise_for_status()
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("wb") as fh:
                async for chunk in response.aiter_bytes():
                    fh.write(chunk)
    return 0


@app.command()
def export(
    job_id: str,
    format: ExportFormat = typer.Option(ExportFormat.JSONL, "--format", "-f"),
    output: Path = typer.Option(..., "--output", "-o", help="file to write"),
    api: str | None = API_OPTION,
) -> None:
    """Download a job's accepted examples as alpaca, sharegpt or jsonl."""
    try:
        asyncio.run(_export(_api(api), job_id, format, output))
    except httpx.ConnectError:
        _fail(f"no API answering at {_api(api)}; start it with `skillmix serve`")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    app()

"""The ``skillmix`` command: serve the API, run workers, submit and export jobs, run the quick start."""

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Annotated

import httpx
import typer
import uvloop

from schemas.jobs import JobStatus
from schemas.settings import get_settings
from service.cli_common import (
    API_OPTION,
    ShowErrors,
    api_client,
    api_url,
    console,
    fail,
    print_validation_errors,
    submit_and_follow,
)
from service.curate_cli import curate as curate_command
from service.eval_cli import eval_math, square_law
from service.export import ExportFormat, OutputFormat, ReviewFilter, Split, parquet_batches, write_hf_dataset
from service.extract_cli import app as extract_app
from service.judge_eval_cli import judge_eval
from service.progress import budget_left
from service.shirk_cli import shirk
from service.teams_cli import keys_app, teams_app

app = typer.Typer(help="Skill-mix synthetic training data as a service.", no_args_is_help=True, cls=ShowErrors)
app.add_typer(extract_app, name="extract")  # skillmix extract agnostic|dataset
app.add_typer(teams_app, name="teams")  # skillmix teams create|list|update (operator, on Redis directly)
app.add_typer(keys_app, name="keys")  # skillmix keys create|list|revoke (operator, on Redis directly)
app.command("curate")(curate_command)  # skillmix curate FILE -o DIR
app.command()(shirk)  # skillmix shirk JOB --rate 0.2 --kind junk|brevity
app.command("eval-math")(eval_math)  # skillmix eval-math --endpoint NAME --questions FILE -o DIR
app.command("square-law")(square_law)  # skillmix square-law SUMMARY... -o plot.png
app.command("judge-eval")(judge_eval)  # skillmix judge-eval LABELLED -o DIR --judge ENDPOINT


@app.command()
def serve(host: str | None = None, port: int | None = None) -> None:
    """Run the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from service.app import create_app
    from workers import logs

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)  # uvicorn's loggers propagate to this handler too
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="warning",
        log_config=None,
        # the failed-authentication throttle counts per client address: believe X-Forwarded-For only from the
        # proxies named (none by default), or any local client could pick its address
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


@app.command()
def worker(burst: bool = typer.Option(False, help="exit when the queue is empty")) -> None:
    """Run one worker process: chunk generation plus the curate stage."""
    from workers import logs
    from workers.worker import run_resilient

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run_resilient(settings, burst=burst))  # libuv's loop: less CPU per call than asyncio's


async def _submit(api: str, body: dict[str, object], wait: bool) -> int:
    async with api_client(api, 30) as client:
        return (await submit_and_follow(client, api, lambda: client.post("/v1/jobs", json=body), "job", wait)).code


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="job spec as a JSON file")],
    wait: bool = typer.Option(False, help="follow the job with a live progress bar"),
    prompts: Path | None = typer.Option(
        None, help='JSONL for a prompts job: one string, {"prompt": ...} or {"messages": [...]} a line'
    ),
    api: str | None = API_OPTION,
) -> None:
    """Submit a job spec (JSON) to the API."""
    try:
        body = json.loads(spec.read_text())
    except FileNotFoundError:
        fail(f"{spec}: no such file")
    except json.JSONDecodeError as exc:
        fail(f"{spec}: not valid JSON ({exc.msg} at line {exc.lineno}); a job spec is a JSON object")
    if not isinstance(body, dict):
        fail(f"{spec}: a job spec is a JSON object, not {type(body).__name__}")
    if prompts is not None:
        body["prompts"] = read_prompts(prompts)
    raise typer.Exit(asyncio.run(_submit(api_url(api), body, wait)))


def read_prompts(path: Path) -> list[object]:
    """Prompts from JSONL, checked line by line so a bad line is named, not a traceback."""
    found: list[object] = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        fail(f"{path}: no such file")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(f"{path}:{number}: not valid JSON ({exc.msg})")
        if isinstance(value, dict):
            value = value.get("messages", value.get("prompt"))
        if not isinstance(value, str | list):
            fail(f'{path}:{number}: expected a string, {{"prompt": "..."}} or {{"messages": [...]}}')
        found.append(value)
    if not found:
        fail(f"{path}: no prompts in the file")
    return found


async def _download(
    client: httpx.AsyncClient, api: str, job_id: str, fmt: ExportFormat, out: Path, split: dict[str, str] | None = None
) -> None:
    params = {"format": fmt.value, **(split or {})}
    async with client.stream("GET", f"/v1/jobs/{job_id}/export", params=params) as response:
        if response.status_code == 404:
            fail(f"job {job_id} not found at {api}")
        response.raise_for_status()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as fh:
            async for chunk in response.aiter_bytes():
                fh.write(chunk)


async def _export(api: str, job_id: str, fmt: OutputFormat, out: Path, split: dict[str, str] | None = None) -> int:
    """Download the export; ``hf`` downloads Parquet beside the target and rewrites it as a datasets directory,
    batch by batch."""
    async with api_client(api, 60) as client:
        if fmt is not OutputFormat.HF:
            await _download(client, api, job_id, ExportFormat(fmt.value), out, split)
            return 0
        out.parent.mkdir(parents=True, exist_ok=True)
        parquet = out.parent / f".{out.name}.{job_id}.parquet.part"
        try:
            await _download(client, api, job_id, ExportFormat.PARQUET, parquet, split)
            description = f"skillmix job {job_id}: accepted examples with full provenance"
            return await asyncio.to_thread(write_hf_dataset, parquet_batches(parquet), out, description)
        finally:
            parquet.unlink(missing_ok=True)


@app.command()
def export(
    job_id: str,
    format: OutputFormat = typer.Option(OutputFormat.JSONL, "--format", "-f"),
    output: Path = typer.Option(..., "--output", "-o", help="file to write (a directory for --format hf)"),
    split: Split | None = typer.Option(None, help="train or heldout: one side of a seeded held-out split"),
    heldout: int = typer.Option(100, min=1, help="with --split: examples in the held-out side"),
    heldout_seed: int = typer.Option(0, min=0, help="with --split: which examples are held out"),
    state: ReviewFilter | None = typer.Option(None, help="math jobs: review state to export (default accepted)"),
    api: str | None = API_OPTION,
) -> None:
    """Download a job's accepted examples: alpaca, sharegpt, jsonl, parquet, or hf (a directory that
    datasets.load_from_disk reads). --split heldout / train: a held-out set for checkpoint selection and
    the rest, disjoint and the same on every download."""
    chosen = None
    if split is not None:
        chosen = {"split": split.value, "heldout": str(heldout), "heldout_seed": str(heldout_seed)}
    if state is not None:
        chosen = {**(chosen or {}), "state": state.value}
    if format is OutputFormat.HF and output.exists() and (not output.is_dir() or any(output.iterdir())):
        fail(f"{output} exists and is not an empty directory; pick a new one for the dataset")
    try:
        rows = asyncio.run(_export(api_url(api), job_id, format, output, chosen))
    except httpx.ConnectError:
        fail(f"no API answering at {api_url(api)}; start it with `skillmix serve`")
    if format is OutputFormat.HF:
        console.print(f"wrote {output} ({rows} rows): datasets.load_from_disk({str(output)!r})")
    else:
        console.print(f"wrote {output}")


async def _change_job(api: str, method: str, path: str, body: dict[str, object] | None) -> None:
    """One call that changes a job (resume, budget), its refusals shown as one line each."""
    async with api_client(api, 30) as client:
        try:
            response = await client.request(method, path, json=body)
        except httpx.ConnectError:
            fail(f"no API answering at {api}; start it with `skillmix serve`")
    if response.status_code == 422:
        print_validation_errors(response)
        raise typer.Exit(2)
    if response.status_code in (404, 409):
        fail(str(response.json()["detail"]))
    response.raise_for_status()
    status = JobStatus.model_validate_json(response.content)
    console.print(f"job {status.id}: {status.state}  ${status.counters.cost_usd:.4f} spent{budget_left(status)}")


@app.command()
def resume(job_id: str, api: str | None = API_OPTION) -> None:
    """Carry on with a job paused at its spending budget (raise the budget first with `skillmix budget`)."""
    asyncio.run(_change_job(api_url(api), "POST", f"/v1/jobs/{job_id}/resume", None))


@app.command()
def budget(
    job_id: str,
    max_cost_usd: float | None = typer.Option(None, help="US dollars the job may spend in all"),
    max_tokens: int | None = typer.Option(None, help="prompt + completion tokens the job may use in all"),
    api: str | None = API_OPTION,
) -> None:
    """Set a job's spending budget while it runs; raising the budget of a job paused at it resumes it."""
    cap: dict[str, object] = {}
    if max_cost_usd is not None:
        cap["max_cost_usd"] = max_cost_usd
    if max_tokens is not None:
        cap["max_tokens"] = max_tokens
    if not cap:
        fail("give --max-cost-usd and/or --max-tokens")
    asyncio.run(_change_job(api_url(api), "PATCH", f"/v1/jobs/{job_id}", {"budget": cap}))


@app.command()
def quickstart(
    count: int = typer.Option(10, min=1, max=100, help="accepted examples wanted"),
    output: Path = typer.Option(Path("skillmix-out/quickstart.jsonl"), "--output", "-o"),
) -> None:
    """Run a small instruct job end to end on a real local LLM: no key to bring, no network, no configuration
    (it makes its own team and API key, and says where the key is)."""
    from service.quickstart import quickstart as run

    try:  # LocalLLMError, LocalRedisError: `error: <why>` (ShowErrors)
        code = asyncio.run(run(get_settings(), output, count, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted: everything started has been stopped")
        code = 130
    raise typer.Exit(code)


@app.command("local-llm")
def local_llm(
    model: Path | None = typer.Option(None, help="a GGUF file (default: the bundled SmolLM2-135M-Instruct)"),
    parallel: int = typer.Option(4, min=1, max=64, help="request slots (continuous batching)"),
    threads: int | None = typer.Option(None, min=1, help="CPU threads (default: the usable cores)"),
) -> None:
    """Serve a local model and register it as the endpoint `local` until Ctrl-C."""
    try:  # LocalLLMError: `error: <why>` (ShowErrors)
        asyncio.run(_serve_local(model, parallel, threads))
    except KeyboardInterrupt:  # Ctrl-C before serving began (later ones are handled inside)
        console.print("interrupted; the model server was stopped")
        raise typer.Exit(130) from None
    console.print("stopped; endpoint `local` unregistered")


async def _serve_local(model: Path | None, parallel: int, threads: int | None) -> None:
    from service.local_llm import LocalLLMServer
    from service.local_model import ensure_model
    from service.quickstart import local_endpoint
    from store import endpoints
    from store.connection import open_redis

    settings = get_settings()
    path = await ensure_model(model or settings.local_model)
    redis = await open_redis(settings)
    try:
        async with LocalLLMServer(path, parallel=parallel, threads=threads, require_api_key=False) as server:
            endpoint = local_endpoint(server).model_copy(update={"api_key_env": None})
            await endpoints.register(redis, "local", endpoint)
            console.print(f"serving {server.model_name} at {server.base_url} as endpoint `local`; Ctrl-C stops")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            # Our own handlers: Ctrl-C and SIGTERM (docker, systemd) both unwind, even where the parent
            # started us with SIGINT ignored (a background job of a non-interactive shell).
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
            finally:
                await endpoints.unregister(redis, "local")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    app()

"""What every `skillmix` sub-command shares: the console, where the API is, and how errors are shown."""

import time
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from typer.core import TyperGroup

from schemas.errors import SkillmixError
from schemas.jobs import JobStatus
from schemas.settings import get_settings
from service.progress import follow, summary

console = Console(soft_wrap=True)
API_OPTION = typer.Option(None, help="API base URL (default: http://SKILLMIX_API_HOST:SKILLMIX_API_PORT)")
RECIPE_TAGS = {"instruct", "prompts", "shirk", "extract-agnostic", "extract-from-dataset"}


def api_url(url: str | None) -> str:
    settings = get_settings()
    return url or f"http://{settings.api_host}:{settings.api_port}"


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


class ShowErrors(TyperGroup):
    """The one place the CLI turns our errors into words: a ``SkillmixError`` from any sub-command is printed
    as ``error: <message>`` with exit code 2, like ``fail``, instead of a traceback."""

    def invoke(self, ctx: Any) -> Any:  # a click Context, whose home moves (typer now vendors click)
        try:
            return super().invoke(ctx)
        except SkillmixError as exc:
            fail(str(exc))


def print_validation_errors(response: httpx.Response) -> None:
    """A 422 as one line per bad field, without the union tag FastAPI puts in the location."""
    for err in response.json()["detail"]:
        parts = err["loc"][1:]
        if parts and parts[0] in RECIPE_TAGS:
            parts = parts[1:]
        loc = ".".join(str(p) for p in parts)
        console.print(f"[red]invalid {loc or 'spec'}:[/red] {err['msg']}")


def submitted_job_id(response: httpx.Response, what: str) -> str | None:
    """The new job's id, or None after printing why the API refused the spec (422)."""
    if response.status_code == 422:
        print_validation_errors(response)
        return None
    response.raise_for_status()
    job_id = str(response.json()["id"])
    console.print(f"submitted {what} [bold]{job_id}[/bold]")
    return job_id


async def follow_to_end(client: httpx.AsyncClient, job_id: str) -> JobStatus:
    """The live progress bar until the job finishes, then the one-screen summary."""
    started = time.monotonic()
    status = await follow(client, job_id, console)
    console.print(summary(status, time.monotonic() - started))
    return status

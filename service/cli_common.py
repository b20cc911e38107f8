"""What every `skillmix` sub-command shares: the console, where the API is, and how errors are shown."""

import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import httpx
import typer
from rich.console import Console
from typer.core import TyperGroup

from schemas.errors import SkillmixError
from schemas.jobs import JobStatus
from schemas.settings import get_settings
from service.progress import follow, summary

console = Console(soft_wrap=True)
UPLOAD_TIMEOUT_S = 600.0
API_OPTION = typer.Option(None, help="API base URL (default: http://SKILLMIX_API_HOST:SKILLMIX_API_PORT)")


def api_url(url: str | None) -> str:
    settings = get_settings()
    return url or f"http://{settings.api_host}:{settings.api_port}"


def api_client(api: str, timeout: float) -> httpx.AsyncClient:
    """A client of the API that sends ``SKILLMIX_API_KEY`` (every ``/v1`` route needs a key)."""
    key = get_settings().api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    return httpx.AsyncClient(base_url=api, timeout=timeout, headers=headers)


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
    """A 422 as one line per bad field (the location after ``body``)."""
    for err in response.json()["detail"]:
        parts = err["loc"][1:]
        loc = ".".join(str(p) for p in parts)
        console.print(f"[red]invalid {loc or 'spec'}:[/red] {err['msg']}")


@contextmanager
def api_errors(api: str) -> Iterator[None]:
    """Talking to the API: no answer, or any other HTTP failure, becomes one error line and exit code 2."""
    try:
        yield
    except httpx.ConnectError:
        fail(f"no API answering at {api}; start it with `skillmix serve` (and `skillmix worker`)")
    except httpx.HTTPError as exc:
        fail(f"talking to the API at {api} failed: {exc}")


async def post_spec(
    client: httpx.AsyncClient, url: str, spec: dict[str, Any], upload: Path | None = None
) -> httpx.Response:
    """POST a job spec as JSON, or with a dataset as multipart (``file`` and the spec as JSON text in ``spec``)."""
    if upload is None:
        return await client.post(url, json=spec)
    with upload.open("rb") as fh:  # httpx streams the file part from the open handle
        files: dict[str, tuple[str | None, IO[bytes] | str]] = {
            "file": (upload.name, fh),
            "spec": (None, json.dumps(spec)),
        }
        return await client.post(url, files=files, timeout=UPLOAD_TIMEOUT_S)


@dataclass(frozen=True)
class Submitted:
    """How a submit went: ``code`` is the command's exit code so far (0 fine, 1 the job did not complete,
    2 the API refused the spec); ``status`` is the finished job's, when it was followed."""

    code: int
    job_id: str | None = None
    status: JobStatus | None = None


async def submit_and_follow(
    client: httpx.AsyncClient,
    api: str,
    send: Callable[[], Awaitable[httpx.Response]],
    what: str,
    wait: bool = True,
    detail: Callable[[dict[str, Any]], str] = lambda body: "",
) -> Submitted:
    """The one submit-then-follow of every ``skillmix`` command that starts a job: send the spec, show a
    refusal (413/422) field by field, print the new job's id, then (``wait``) the progress bar and summary."""
    with api_errors(api):
        response = await send()
        if response.status_code in (413, 422):  # 413: an upload over the server's SKILLMIX_MAX_UPLOAD_MB
            print_validation_errors(response)
            return Submitted(2)
        if response.status_code != 201:
            fail(f"the API answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        job_id = str(body["id"])
        console.print(f"submitted {what} [bold]{job_id}[/bold]{detail(body)}")
        if not wait:
            return Submitted(0, job_id)
        status = await follow_to_end(client, job_id)
    if status.state != "completed":
        console.print(f"[red]the job ended {status.state}[/red]: {status.message}")
        return Submitted(1, job_id, status)
    return Submitted(0, job_id, status)


async def follow_to_end(client: httpx.AsyncClient, job_id: str) -> JobStatus:
    """The live progress bar until the job finishes, then the one-screen summary."""
    started = time.monotonic()
    status = await follow(client, job_id, console)
    console.print(summary(status, time.monotonic() - started))
    return status

"""What every `skillmix` sub-command shares: the console, where the API is, and how errors are shown."""

from typing import NoReturn

import httpx
import typer
from rich.console import Console

from schemas.settings import get_settings

console = Console(soft_wrap=True)
API_OPTION = typer.Option(None, help="API base URL (default: http://SKILLMIX_API_HOST:SKILLMIX_API_PORT)")
RECIPE_TAGS = {"instruct", "prompts", "extract-agnostic", "extract-from-dataset"}


def api_url(url: str | None) -> str:
    settings = get_settings()
    return url or f"http://{settings.api_host}:{settings.api_port}"


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def print_validation_errors(response: httpx.Response) -> None:
    """A 422 as one line per bad field, without the union tag FastAPI puts in the location."""
    for err in response.json()["detail"]:
        parts = err["loc"][1:]
        if parts and parts[0] in RECIPE_TAGS:
            parts = parts[1:]
        loc = ".".join(str(p) for p in parts)
        console.print(f"[red]invalid {loc or 'spec'}:[/red] {err['msg']}")

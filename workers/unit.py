"""The runner's contract with a unit of work (a chunk, a phase step, a help request): what a unit finds in arq's
``ctx["resources"]``, what it may tell the runner (``workers.runner.step`` maps each to one outcome for every
kind), and the registry of the units a recipe implements itself (``register_units``).

It sits below both: the runner imports this and the item-chunk unit; a recipe's module registers its phase
and help units here when imported (the worker imports the built-ins), and never imports the runner, so the
runner names no recipe and the layering has no cycle (the import-linter contracts in ``pyproject.toml``).
"""

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from arq.connections import ArqRedis

from schemas.errors import Interrupted, JobFailed, Transient
from schemas.jobs import JobRecord
from schemas.settings import Settings
from workers.llm.client import LLMClient
from workers.tally import Tally


class Resources(Protocol):
    """One per worker process (``workers.runner.resources.Resources`` is the implementation, the one place
    endpoint clients are built)."""

    redis: ArqRedis
    settings: Settings
    tally: Tally

    async def client(self, name: str) -> LLMClient:
        """The process's client for endpoint ``name``, built once and shared by its jobs."""
        ...

    async def recipe(self, job_id: str) -> tuple[JobRecord, object] | None:
        """The job's record and its recipe (a ``workers.recipes.Recipe``: callers check which, and this module
        stays out of the recipes' imports), cached per process; None for an unknown job."""
        ...


class EndpointDown(Transient):
    """Calls could not reach the endpoint even after the client's retries: the step is retried later (backoff),
    from where it stands (finished work is skipped, answered calls are replayed)."""


class JobResumed(Interrupted):
    """Calls were refused while the job was paused and it was resumed before the step ended: run it again
    (resuming cannot enqueue a step that is still running)."""


class UnitFailed(JobFailed):
    """The job cannot go on; the message says why (it becomes the job's message)."""


Unit = Callable[[dict[str, Any], Any, bool], Awaitable[dict[str, Any]]]
"""Runs one unit: (arq ctx, the step, whether this is the last try) -> a small result for arq's record."""

RecipeUnitKind = Literal["phase", "help"]
RECIPE_UNITS: dict[tuple[str, RecipeUnitKind], Unit] = {}
"""(recipe name, unit kind) -> the recipe's implementation of that kind of ``schemas.jobs.Step``."""


def register_units(recipe: str, *, phase: Unit | None = None, help: Unit | None = None) -> None:
    """Register the units recipe ``recipe`` runs itself: ``phase`` for its ``PhaseTask`` steps (a ``stepped``
    recipe), ``help`` for its ``HelpTask`` requests (a recipe with a review queue)."""
    if phase is not None:
        RECIPE_UNITS[(recipe, "phase")] = phase
    if help is not None:
        RECIPE_UNITS[(recipe, "help")] = help


def recipe_unit(recipe: str, kind: RecipeUnitKind) -> Unit:
    """The recipe's unit of ``kind``; a kind the recipe does not implement fails the job, saying which."""
    try:
        return RECIPE_UNITS[(recipe, kind)]
    except KeyError:
        raise UnitFailed(f"recipe {recipe!r} has no {kind} unit (workers.unit.register_units)") from None

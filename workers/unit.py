"""The runner's contract with a unit of work (a chunk, an extraction step, a review-help request): what a unit
finds in arq's ``ctx["resources"]``, and what it may tell the runner (``workers.runner.step`` maps each to one
outcome for every kind).

It sits below both: the runner imports the units, and the units import this (and ``workers.meter``), never
the runner, so the layering has no cycle (the import-linter contracts in ``pyproject.toml``).
"""

from typing import Protocol

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

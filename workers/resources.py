"""What a job function finds in arq's ``ctx["resources"]``: the worker process's shared pieces.

A Protocol, so the job functions (``workers.extract.runner``, ``workers.review.help``) can name its type
without importing ``workers.worker``, which imports them to register them (no import cycle).
"""

from typing import Protocol

from schemas.jobs import JobRecord
from schemas.settings import Settings
from workers.llm.client import LLMClient
from workers.tally import Tally


class Resources(Protocol):
    """One per worker process (``workers.worker.Resources`` is the implementation)."""

    settings: Settings
    tally: Tally

    async def client(self, name: str) -> LLMClient:
        """The process's client for endpoint ``name``, built once and shared by its jobs."""
        ...

    async def recipe(self, job_id: str) -> tuple[JobRecord, object] | None:
        """The job's record and its recipe (a ``workers.recipes.Recipe``: callers check which, and this module
        stays out of the recipes' imports), cached per process; None for an unknown job."""
        ...

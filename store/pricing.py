"""What a job has cost and what its cap still allows: pure arithmetic over its counters and prices."""

from collections.abc import Mapping
from typing import Protocol

from schemas.jobs import BudgetLeft, JobBudget, JobCounters


class Priced(Protocol):
    """What pricing needs of a job record (``JobRecord``, or the prices /metrics caches of one)."""

    @property
    def usd_per_mtok_prompt(self) -> float: ...

    @property
    def usd_per_mtok_completion(self) -> float: ...


def cost_from_counters(raw: Mapping[str, int], record: Priced) -> float:
    """A job's cost from its counters hash: job status and the fleet's /metrics both use this, so they agree."""
    if "cost_micro_usd" in raw:  # exact: each call priced at its own endpoint (``store.budget``)
        return raw["cost_micro_usd"] / 1e6
    # a job from before the exact counter: every token at the job's endpoint's prices
    return cost_usd(record, raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0))


def budget_left(budget: JobBudget | None, counters: JobCounters) -> BudgetLeft | None:
    """What the cap still allows (never negative: in-flight calls may finish past it)."""
    if budget is None:
        return None
    cost = tokens = None
    if budget.max_cost_usd is not None:
        cost = max(0, round(budget.max_cost_usd * 1e6) - counters.cost_micro_usd) / 1e6
    if budget.max_tokens is not None:
        tokens = max(0, budget.max_tokens - counters.prompt_tokens - counters.completion_tokens)
    return BudgetLeft(cost_usd=cost, tokens=tokens)


def cost_usd(record: Priced, prompt_tokens: int, completion_tokens: int) -> float:
    """A job's cost estimate at its endpoint's prices (jobs without the exact ``cost_micro_usd`` counter)."""
    return round(
        prompt_tokens * record.usd_per_mtok_prompt / 1e6 + completion_tokens * record.usd_per_mtok_completion / 1e6,
        6,
    )

"""Charging each returned call to its job, on the hot path: the engine's half of the spending caps.

The cap, the ``CHARGE`` script that pauses a job exactly once at it, and the resume are in ``store.budget``
and ``store.lifecycle``. Here the charge is sent fire-and-forget on the tally connection (``Tally.eval``): no
Redis round trip on the hot path.

Paused means: no new call leaves (``metered``'s ``on_send`` refuses them), calls in flight finish and are
curated, chunks of the job start nothing, the watchdog leaves the job alone and no top-up is planned.
"""

from schemas.jobs import JobRecord
from schemas.llm import Usage
from schemas.settings import EndpointSettings
from store.budget import CHARGE, Prices, charge_args
from workers.tally import Tally


def prices_for(client: object, record: JobRecord) -> Prices:
    """The prices of the endpoint ``client`` calls (an ``LLMClient`` carries its ``EndpointSettings``); the
    job's own endpoint's, as recorded at submit, for a client without one (no LLM, a test double)."""
    endpoint = getattr(client, "endpoint", None)
    if isinstance(endpoint, EndpointSettings):
        return Prices(endpoint.usd_per_mtok_prompt, endpoint.usd_per_mtok_completion)
    return Prices(record.usd_per_mtok_prompt, record.usd_per_mtok_completion)


def charge(tally: Tally, job_id: str, usage: Usage, prices: Prices) -> None:
    """Add a returned call's usage and cost to its job, pausing it at its cap; never awaits."""
    script_keys, args = charge_args(job_id, usage, prices)
    tally.eval(CHARGE, script_keys, args)

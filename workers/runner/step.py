"""The one arq function: ``run_step`` runs one ``Step`` (a chunk, a phase step, a help request).

A chunk runs the item-chunk unit; a phase step or a help request runs the job's recipe's own unit
(``workers.unit.register_units``), so the runner names no recipe. What every kind gets the same way lives
here: the duplicate-run guard, the step timeout, one retry policy, the hand-back on SIGTERM and the mapping
of failures to job states.
"""

import asyncio
import contextlib
import logging
import socket
from typing import Any

from arq import Retry
from arq.constants import job_key_prefix, retry_key_prefix

from schemas.jobs import STEP, ChunkTask, JobState, PhaseTask, Step
from schemas.settings import Settings, get_settings
from store import records, stepped
from store.connection import REDIS_DOWN, rerun_on_redis_trouble
from store.endpoints import UnknownEndpoint
from workers.batch.parker import WaitingOnBatch
from workers.drain import WorkerDraining
from workers.llm.errors import LLMFatal, LLMMissingKey
from workers.logs import JOB_ID
from workers.runner import chunk
from workers.unit import EndpointDown, JobResumed, UnitFailed, recipe_unit

log = logging.getLogger(__name__)
MAX_TRIES = 8
PARK_S = 1800  # a parked unit runs again after this even unwoken: a lost wake-up costs a wait, never the job
BACKOFF_STEP_S, BACKOFF_CAP_S = 5, 60  # an unreachable endpoint: retry after 5 s, 10 s, ... at most a minute


def retry_delay(job_try: int) -> float:
    """The one backoff for a step whose endpoint could not be reached."""
    return float(min(BACKOFF_STEP_S * job_try, BACKOFF_CAP_S))


async def run_unit(ctx: dict[str, Any], step: Step, final_try: bool) -> dict[str, Any]:
    """Dispatch by unit kind and recipe: a chunk to the item-chunk unit, a phase step or a help request to the
    job's recipe (a kind it does not implement fails the job, naming both)."""
    if isinstance(step, ChunkTask):
        return await chunk.run_unit(ctx, step, final_try)
    record = await records.load_record(ctx["redis"], step.job_id)
    if record is None:
        return {"skipped": True}  # an unknown job: nothing to run it for
    unit = recipe_unit(record.spec.recipe, step.kind)
    if isinstance(step, PhaseTask):
        await stepped.mark_started(ctx["redis"], step)  # where the chain stands, for resume and the watchdog
    return await unit(ctx, step, final_try)


async def run_step(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """arq's entry point for every kind of work."""
    step: Step = STEP.validate_python(payload)
    JOB_ID.set(step.job_id)  # this step's log lines carry its job id (arq runs each job in its own task)
    settings: Settings = ctx.get("settings") or get_settings()
    here: set[str] = ctx.setdefault("steps_here", set())
    if step.arq_id in here:  # handed back to us after a false death: the run in progress finishes it
        log.warning("%s is already running in this process", step.arq_id)
        return {"skipped": True}
    here.add(step.arq_id)
    try:
        async with asyncio.timeout(settings.chunk_timeout_s):
            return await run_unit(ctx, step, ctx["job_try"] >= MAX_TRIES)
    except TimeoutError as exc:  # ours, not arq's: arq records its own timeout as a failure, never retried
        log.warning("%s ran past %ss; retry %d", step.arq_id, settings.chunk_timeout_s, ctx["job_try"])
        raise Retry(defer=1) from exc
    except EndpointDown as exc:
        log.warning("%s: %s; retry %d", step.arq_id, exc, ctx["job_try"])
        raise Retry(defer=retry_delay(ctx["job_try"])) from exc
    except JobResumed as exc:  # paused mid-step and resumed since: do the refused work now
        log.info("%s; running %s again", exc, step.arq_id)
        raise Retry(defer=0.5) from exc
    except WaitingOnBatch as exc:  # parked in the queue, holding no worker, until the batch manager wakes it
        log.info("%s; parked", exc)
        with contextlib.suppress(*REDIS_DOWN):  # parking is no failed try; its arq record outlives the wait
            async with ctx["redis"].pipeline(transaction=False) as pipe:
                pipe.decr(retry_key_prefix + ctx["job_id"])
                pipe.pexpire(job_key_prefix + ctx["job_id"], int((PARK_S + 86_400) * 1000))
                await pipe.execute()
        raise Retry(defer=PARK_S) from exc
    except WorkerDraining as exc:  # SIGTERM: back to the queue at once, keeping its place (no defer, same score)
        log.info("%s; handed back", exc)
        with contextlib.suppress(*REDIS_DOWN):  # a hand-back is no failed try: don't spend one of MAX_TRIES
            await ctx["redis"].decr(retry_key_prefix + ctx["job_id"])
        raise Retry(defer=0) from exc
    except (LLMMissingKey, UnknownEndpoint) as exc:  # this worker cannot run the job: say where and why
        await _fail(ctx, step, f"worker host {socket.gethostname()}: {exc}")
        return {"failed": str(exc)}
    except LLMFatal as exc:
        await _fail(ctx, step, f"endpoint: {exc}")
        return {"failed": str(exc)}
    except UnitFailed as exc:
        await _fail(ctx, step, str(exc))
        return {"failed": str(exc)}
    except Exception as exc:
        rerun_on_redis_trouble(exc, ctx["job_try"], step.arq_id)
        raise  # a bug: arq retries it; the watchdog fails the job after its redrives
    finally:
        here.discard(step.arq_id)


async def _fail(ctx: dict[str, Any], step: Step, message: str) -> None:
    await records.set_state(ctx["redis"], step.job_id, JobState.FAILED, message)
    log.error("job %s failed: %s", step.job_id, message)

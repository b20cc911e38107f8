"""The chunk unit: items [start, stop) of a generation job, run by ``workers.generate.run_chunk``."""

from typing import Any

from schemas.jobs import ChunkTask
from store import records
from workers.generate import run_chunk
from workers.recipes import NoLLM
from workers.runner.resources import Resources


async def run_unit(ctx: dict[str, Any], task: ChunkTask, final_try: bool) -> dict[str, Any]:
    res: Resources = ctx["resources"]
    found = await res.recipe(task.job_id)
    if found is None:
        return {"emitted": 0, "skipped": task.stop - task.start}
    record, recipe = found
    state = await records.get_state(ctx["redis"], task.job_id)
    if state is None or state.finished:  # before any endpoint lookup: a finished job needs none
        return {"emitted": 0, "skipped": task.stop - task.start}
    llm = await res.client(record.endpoint) if record.spec.needs_endpoint() else NoLLM()
    quality = getattr(record.spec, "quality", None)
    judge = quality.judge if quality is not None and quality.enabled else None
    judges = [await res.client(name) for name in judge.endpoint_names()] if judge is not None else []
    judge_llm = judges[0] if judges else None
    if own_judge := getattr(record.spec, "judge_endpoint", None):  # eval-math's step checker
        judge_llm = await res.client(own_judge)
    outcome = await run_chunk(
        ctx["redis"],
        record,
        recipe,
        llm,
        task,
        final_try,
        res.tally,
        judge_client=judge_llm,
        settings=res.settings,
        more_judges=judges[1:],
    )
    return {"emitted": outcome.emitted, "skipped": outcome.skipped}

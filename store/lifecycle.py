"""After every curated item: finish the job, or top it up with more items, exactly once across workers."""

from collections import Counter

from arq.connections import ArqRedis

from schemas.jobs import JobCounters, JobRecord, JobState
from store import records


def shortfall_message(record: JobRecord, counters: JobCounters) -> str:
    reasons = Counter(counters.rejected_by_reason).most_common(3)
    why = ", ".join(f"{r} {n}" for r, n in reasons) or "none"
    if record.spec.recipe == "curate":  # a brought dataset: every row is decided, nothing "falls short"
        return f"{counters.accepted} of {record.spec.count} rows accepted, {counters.rejected} rejected. Top: {why}"
    return (
        f"fell short: {counters.accepted} of {record.spec.count} accepted after {counters.processed} items; "
        f"attempt budget (max_items={record.spec.item_budget}) spent. Top rejections: {why}"
    )


async def advance(redis: ArqRedis, record: JobRecord) -> None:
    counters = await records.read_counters(redis, record)
    if counters.accepted >= record.spec.count:
        await records.set_state(redis, record.id, JobState.COMPLETED, f"{counters.accepted} accepted")
        return
    if counters.processed >= counters.planned and counters.planned >= record.spec.item_budget:
        await records.set_state(redis, record.id, JobState.COMPLETED, shortfall_message(record, counters))
        return
    more = records.top_up_size(record, counters)
    if more:
        await records.plan(redis, record, counters.planned, counters.planned + more)

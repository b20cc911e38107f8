"""Review state of a math job's questions, beside (never inside) the stored examples.

A question that passed every automatic check is stored as an accepted example (``workers.curate``) and
counted in the job's ``accepted``; here it gets a ``ReviewItem`` in ``needs_review``. Items are created
lazily, on the first review read of the job after the example was stored (``seed``), so the curate hot path
is untouched. Every change is a new version, applied by a Lua script only if the stored version is the one
the writer saw (optimistic concurrency: the loser of two racing writes changes nothing and learns the
current version), and logged with who, when and what in the same step.
"""

import base64
import binascii
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from schemas.errors import BadInput, Conflict, NotFound
from schemas.examples import Example, extras_of
from schemas.jobs import MathExtras
from schemas.recipes import has_review_queue
from schemas.review import FieldChange, ReviewConflict, ReviewItem, ReviewState, ReviewVersion
from store import examples, keys, records

# KEYS: review hash, order zset, log list. ARGV: item id, index, item JSON, log entry JSON.
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('RPUSH', KEYS[3], ARGV[4])
  return 1
end
return 0
"""
# KEYS: seeded counter. ARGV: new value. Only ever raised.
_RAISE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
# KEYS: review hash, log list. ARGV: item id, expected version, new item JSON, log entry JSON.
# Returns {1} when written, {0, current JSON} on a stale version, {-1} when there is no such item.
_WRITE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {-1} end
if tostring(cjson.decode(cur)['version']) ~= ARGV[2] then return {0, cur} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
return {1}
"""


class Stale(Conflict):
    """The item's stored version is not the one the write was made against; the 409 carries the stored item."""

    def __init__(self, current: ReviewItem) -> None:
        super().__init__(
            f"item {current.id} is at version {current.version} (last changed by {current.updated_by}); "
            "reload it and apply your change again"
        )
        self.current = current

    def json_body(self) -> dict[str, Any]:
        body = ReviewConflict(detail=str(self), current_version=self.current.version, item=self.current, code=self.code)
        return body.model_dump(mode="json")


class NoItem(NotFound):
    """The item went between reading and writing it."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"review item {item_id!r} not found")


def now() -> datetime:
    return datetime.now(UTC)


async def recipe_of(redis: Redis, job_id: str) -> str | None:
    """The job's recipe (cached: a job record never changes), None when there is no such job."""
    cached = await redis.hget(keys.REVIEW_RECIPES, job_id)
    if cached is not None:
        return cached.decode() if isinstance(cached, bytes) else str(cached)
    record = await records.load_record(redis, job_id)
    if record is None:
        return None
    await redis.hset(keys.REVIEW_RECIPES, job_id, record.spec.recipe)
    return record.spec.recipe


async def math_job_ids(redis: Redis, team: str | None = None) -> list[str]:
    """Every math job (only ``team``'s when given), sorted by id (the queue's order across jobs)."""
    index = keys.JOBS_INDEX if team is None else keys.team_jobs(team)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await redis.zrange(index, 0, -1)]
    found = [i for i in ids if has_review_queue(await recipe_of(redis, i))]
    return sorted(found)


def item_of(example: Example, seq: int) -> ReviewItem:
    return ReviewItem(
        id=example.id,
        job_id=example.job_id,
        index=example.index,
        seq=seq,
        problem=example.instruction,
        solution=example.output,
        answer=extras_of(example, MathExtras).answer or "",
        skills=list(example.skills),
        updated_at=example.created_at,
    )


async def seed(redis: Redis, job_id: str) -> int:
    """Give every accepted example not yet in the queue a ``needs_review`` item; returns how many are new.
    Idempotent and safe to run from many API processes at once (an item is created only if absent)."""
    seeded = int(await redis.get(keys.review_seeded(job_id)) or 0)
    total = await examples.count(redis, job_id, "accepted")
    if seeded >= total:
        return 0
    created = 0
    for start in range(seeded - seeded % keys.BUCKET_SIZE, total, keys.BUCKET_SIZE):
        seqs = [s for s in range(start, min(start + keys.BUCKET_SIZE, total)) if s >= seeded]
        raws = await redis.hmget(keys.bucket(job_id, "accepted", start), [str(s) for s in seqs])
        async with redis.pipeline(transaction=False) as pipe:
            for seq, raw in zip(seqs, raws, strict=True):
                if raw is None:
                    continue
                item = item_of(Example.model_validate_json(raw), seq)
                entry = ReviewVersion(version=1, by="system", at=item.updated_at, action="created")
                pipe.eval(
                    _CREATE,
                    3,
                    keys.review(job_id),
                    keys.review_order(job_id),
                    keys.review_log(job_id, item.id),
                    item.id,
                    item.index,
                    item.model_dump_json(),
                    entry.model_dump_json(),
                )
            created += sum(int(r) for r in await pipe.execute())
    await redis.eval(_RAISE, 1, keys.review_seeded(job_id), total)
    return created


async def get(redis: Redis, job_id: str, item_id: str) -> ReviewItem | None:
    raw = await redis.hget(keys.review(job_id), item_id)
    return None if raw is None else ReviewItem.model_validate_json(raw)


async def history(redis: Redis, job_id: str, item_id: str) -> list[ReviewVersion]:
    return [ReviewVersion.model_validate_json(r) for r in await redis.lrange(keys.review_log(job_id, item_id), 0, -1)]


async def example(redis: Redis, item: ReviewItem) -> Example | None:
    raw = await redis.hget(keys.bucket(item.job_id, "accepted", item.seq), str(item.seq))
    return None if raw is None else Example.model_validate_json(raw)


def changes(old: ReviewItem, new: ReviewItem, fields: Iterable[str]) -> dict[str, FieldChange]:
    return {
        f: FieldChange(old=getattr(old, f), new=getattr(new, f)) for f in fields if getattr(old, f) != getattr(new, f)
    }


async def write(
    redis: Redis, current: ReviewItem, expected_version: int, new: ReviewItem, entry: ReviewVersion
) -> None:
    """Store ``new`` (its version one past ``expected_version``) and its log entry, atomically, only if the
    stored version is still ``expected_version``; raises ``Stale`` (with the stored item) otherwise."""
    result = await redis.eval(
        _WRITE,
        2,
        keys.review(current.job_id),
        keys.review_log(current.job_id, current.id),
        current.id,
        str(expected_version),
        new.model_dump_json(),
        entry.model_dump_json(),
    )
    if int(result[0]) == -1:
        raise NoItem(current.id)
    if int(result[0]) == 0:
        raise Stale(ReviewItem.model_validate_json(result[1]))


async def change(
    redis: Redis,
    item: ReviewItem,
    expected_version: int,
    by: str,
    action: str,
    fields: Mapping[str, object],
    reason: str | None = None,
    suggestion_id: str | None = None,
) -> ReviewItem:
    """A new version of ``item`` with ``fields`` changed, made by ``by``; ``Stale`` if someone was first."""
    if item.version != expected_version:
        raise Stale(item)
    at = now()
    new = item.model_copy(update={**fields, "version": item.version + 1, "updated_by": by, "updated_at": at})
    new = ReviewItem.model_validate(new.model_dump())  # validate the update
    entry = ReviewVersion.model_validate(
        {
            "version": new.version,
            "by": by,
            "at": at,
            "action": action,
            "changes": changes(item, new, [f for f in fields if f != "suggestions"]),
            "reason": reason,
            "suggestion_id": suggestion_id,
        }
    )
    await write(redis, item, expected_version, new, entry)
    return new


# --- listing: stable order by job id, then example index; the cursor is opaque ----------------------------

PAGE_SCAN = 200


def encode_cursor(job_id: str, index: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([job_id, index])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """Raises BadInput (the ``cursor`` query parameter) on anything that is not a cursor this module made."""
    try:
        job_id, index = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise BadInput("not a review cursor", "cursor", where="query") from exc
    if not isinstance(job_id, str) or not isinstance(index, int) or isinstance(index, bool):
        raise BadInput("not a review cursor", "cursor", where="query")
    return job_id, index


async def page(
    redis: Redis,
    job_ids: list[str],
    skill: str | None,
    state: ReviewState | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[ReviewItem], str | None]:
    """Up to ``limit`` items of the given (sorted) jobs after ``cursor`` that match the filters, and the cursor
    of the next page (None when there is none)."""
    after = decode_cursor(cursor) if cursor else None
    found: list[ReviewItem] = []
    for job_id in job_ids:
        if after is not None and job_id < after[0]:
            continue
        await seed(redis, job_id)
        low = f"({after[1]}" if after is not None and job_id == after[0] else "-inf"
        offset = 0
        while True:
            ids = await redis.zrangebyscore(keys.review_order(job_id), low, "+inf", start=offset, num=PAGE_SCAN)
            if not ids:
                break
            offset += len(ids)
            for raw in await redis.hmget(keys.review(job_id), ids):
                if raw is None:
                    continue
                item = ReviewItem.model_validate_json(raw)
                if (state is None or item.state == state) and (skill is None or skill in item.skills):
                    found.append(item)
                    if len(found) > limit:
                        last = found[limit - 1]
                        return found[:limit], encode_cursor(last.job_id, last.index)
    return found, None


# --- export ----------------------------------------------------------------------------------------------


def reviewed(example: Example, item: ReviewItem) -> Example:
    """The example as the reviewer left it: their problem, solution and answer."""
    extras = {**example.extras, "answer": item.answer}
    return example.model_copy(update={"instruction": item.problem, "output": item.solution, "extras": extras})


async def iter_reviewed(redis: Redis, job_id: str, states: frozenset[str] | None) -> AsyncIterator[Example]:
    """A math job's accepted examples in storage order, with the reviewers' edits applied, keeping only those
    whose review state is in ``states`` (all of them when None), one storage bucket at a time."""
    await seed(redis, job_id)
    batch: list[Example] = []

    async def flush() -> list[Example]:
        raws = await redis.hmget(keys.review(job_id), [e.id for e in batch])
        out = []
        for e, raw in zip(batch, raws, strict=True):
            item = None if raw is None else ReviewItem.model_validate_json(raw)
            state = item.state if item is not None else "needs_review"
            if states is None or state in states:
                out.append(e if item is None else reviewed(e, item))
        return out

    async for e in examples.iter_examples(redis, job_id, "accepted"):
        batch.append(e)
        if len(batch) >= keys.BUCKET_SIZE:
            for kept in await flush():
                yield kept
            batch = []
    if batch:
        for kept in await flush():
            yield kept


async def count_reviewed(redis: Redis, job_id: str, states: frozenset[str] | None) -> int:
    await seed(redis, job_id)
    if states is None:
        return await examples.count(redis, job_id, "accepted")
    return sum(ReviewItem.model_validate_json(v).state in states for v in await redis.hvals(keys.review(job_id)))

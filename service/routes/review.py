"""The MATH^2 review queue: list, inspect, accept, edit, reject, and ask the LLM for help.

Writes are recorded under the key's name and team (``reviewer``), never a client-written string, with the version
the reviewer saw in ``expected_version``; a write against a stale version is a 409 carrying the current item,
and changes nothing. Another team's job and items answer 404, as missing ones do.
"""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from schemas.errors import BadInput, NotFound
from schemas.jobs import JobRecord
from schemas.recipes import has_review_queue
from schemas.review import (
    HelpAccepted,
    HelpRequest,
    RejectDecision,
    ReviewConflict,
    ReviewDecision,
    ReviewEdit,
    ReviewItem,
    ReviewItemDetail,
    ReviewItemsPublic,
    ReviewState,
)
from schemas.teams import Caller
from service.auth import CallerDep, OwnedJob, WriterDep, job_not_found
from service.deps import RedisDep
from service.errors import NOT_FOUND, not_found, unprocessable
from store import audit, jobs, records
from store import review as review_store

router = APIRouter(prefix="/v1/review", tags=["review"])
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ReviewConflict, "description": "the item changed since expected_version"}
}
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {**NOT_FOUND, **CONFLICT}


def _math_job(record: JobRecord, *, filtered: bool = False) -> None:
    """A job (its record, loaded by the ownership check) with a review queue. Else: a 422 naming the ``job``
    filter of a listing, a 404 on an item's path (another recipe's job has no review items)."""
    recipe = record.spec.recipe
    if not has_review_queue(recipe):
        message = f"job {record.id} is a {recipe} job; only math jobs have a review queue"
        if filtered:
            raise BadInput(message, "job", where="query")
        raise NotFound(message)


async def _item(redis: RedisDep, record: JobRecord, item_id: str) -> ReviewItem:
    _math_job(record)
    await review_store.seed(redis, record.id)
    item = await review_store.get(redis, record.id, item_id)
    if item is None:
        not_found("review item", item_id)
    return item


def reviewer(caller: Caller) -> str:
    """Who a change is recorded under: the key's name (its id if unnamed) and team."""
    return f"{caller.name or caller.key_id} (team {caller.team})"


@router.get("", response_model=ReviewItemsPublic, responses=NOT_FOUND)
async def list_items(
    redis: RedisDep,
    caller: CallerDep,
    job: str | None = None,
    skill: str | None = None,
    state: ReviewState | None = None,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReviewItemsPublic:
    """The team's questions to review, ordered by job id then example index; pass ``next_cursor`` back for the
    next page."""
    if job is not None:
        record = await records.load_record(redis, job)
        if record is None or not caller.sees(record.team):
            raise job_not_found(job)
        _math_job(record, filtered=True)
    job_ids = (
        [job] if job is not None else await review_store.math_job_ids(redis, None if caller.is_admin else caller.team)
    )
    items, next_cursor = await review_store.page(redis, job_ids, skill, state, cursor, limit)
    return ReviewItemsPublic(data=items, next_cursor=next_cursor)


@router.get("/{job_id}/{item_id}", responses=NOT_FOUND, response_model=ReviewItemDetail)
async def get_item(job_id: str, item_id: str, record: OwnedJob, redis: RedisDep) -> ReviewItemDetail:
    """The item, its stored example (the whole MATH^2 stage history in ``example.math``) and every version."""
    item = await _item(redis, record, item_id)
    example = await review_store.example(redis, item)
    if example is None:
        not_found("example", item_id)
    return ReviewItemDetail(item=item, example=example, history=await review_store.history(redis, job_id, item_id))


async def _change(
    redis: RedisDep,
    record: JobRecord,
    item_id: str,
    expected: int,
    caller: Caller,
    action: str,
    fields: dict[str, object],
    reason: str | None = None,
) -> ReviewItem:
    """A stale ``expected`` raises ``review_store.Stale``: a 409 carrying the current item. A change made is
    audited (``review.<action>``) under the job's team."""
    item = await _item(redis, record, item_id)
    changed = await review_store.change(redis, item, expected, reviewer(caller), action, fields, reason=reason)
    target, detail = f"{record.id}/{item_id}", f"version {changed.version}"
    await audit.record(redis, caller, f"review.{action}", target, detail, team=record.team)
    return changed


@router.post("/{job_id}/{item_id}/accept", responses=WRITE_RESPONSES, response_model=ReviewItem)
async def accept_item(
    job_id: str, item_id: str, record: OwnedJob, decision: ReviewDecision, redis: RedisDep, caller: WriterDep
) -> ReviewItem:
    fields: dict[str, object] = {"state": "accepted", "reject_reason": None}
    return await _change(
        redis, record, item_id, decision.expected_version, caller, "accept", fields, decision.reason or None
    )


@router.post("/{job_id}/{item_id}/reject", responses=WRITE_RESPONSES, response_model=ReviewItem)
async def reject_item(
    job_id: str, item_id: str, record: OwnedJob, decision: RejectDecision, redis: RedisDep, caller: WriterDep
) -> ReviewItem:
    """Reject with a reason (required)."""
    fields: dict[str, object] = {"state": "rejected", "reject_reason": decision.reason}
    return await _change(redis, record, item_id, decision.expected_version, caller, "reject", fields, decision.reason)


@router.patch("/{job_id}/{item_id}", responses=WRITE_RESPONSES, response_model=ReviewItem)
async def edit_item(
    job_id: str, item_id: str, record: OwnedJob, edit: ReviewEdit, redis: RedisDep, caller: WriterDep
) -> ReviewItem:
    """Change the problem, solution and/or answer; the review state is kept."""
    fields: dict[str, object] = edit.model_dump(exclude_none=True, exclude={"expected_version"})
    return await _change(redis, record, item_id, edit.expected_version, caller, "edit", fields)


@router.post(
    "/{job_id}/{item_id}/help",
    status_code=status.HTTP_202_ACCEPTED,
    responses=NOT_FOUND,
    response_model=HelpAccepted,
)
async def ask_for_help(
    job_id: str, item_id: str, record: OwnedJob, request: HelpRequest, redis: RedisDep, caller: WriterDep
) -> HelpAccepted:
    """Queue an LLM helper on the item (metered to the job); its answer appears in the item's ``suggestions``
    with ``id`` = ``suggestion_id`` and is never applied by itself."""
    item = await _item(redis, record, item_id)
    if request.skill is not None and request.skill not in item.skills:
        unprocessable("skill", f"{request.skill!r} is not one of the item's skills {item.skills}")
    if request.kind == "make_skill_necessary" and request.skill is None and len(item.skills) < 2:
        unprocessable("skill", "name the skill to make necessary")
    suggestion_id = uuid.uuid4().hex
    await jobs.ask_for_help(
        redis, job_id, item_id, suggestion_id, request.kind, reviewer(caller), request.skill, request.note
    )
    detail = f"{request.kind} suggestion {suggestion_id}"
    await audit.record(redis, caller, "review.help", f"{job_id}/{item_id}", detail, team=record.team)
    return HelpAccepted(suggestion_id=suggestion_id, job_id=job_id, item_id=item_id)

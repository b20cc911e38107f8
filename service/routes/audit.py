"""The audit trail: every write made through the API, oldest first, paged by stream id (``store.audit``)."""

from typing import Annotated

from fastapi import APIRouter, Query

from schemas.errors import Forbidden
from schemas.teams import AuditPublic, TeamName
from service.auth import CallerDep
from service.deps import RedisDep
from service.errors import FORBIDDEN
from store import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"])
STREAM_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"  # a stream id (``next_after`` is one); 19 digits stay under 2**64


@router.get("", response_model=AuditPublic, responses=FORBIDDEN)
async def read_audit(
    redis: RedisDep,
    caller: CallerDep,
    team: Annotated[TeamName | None, Query(description="admins: only this team's entries (default: all)")] = None,
    after: Annotated[str | None, Query(pattern=STREAM_ID, description="the previous page's `next_after`")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPublic:
    """Who changed what, when: an admin key reads every team's entries (or one ``team``'s), any other key its
    own team's. ``next_after`` is set while a full page came back: pass it as ``after`` for the next."""
    if not caller.is_admin:
        if team is not None and team != caller.team:
            raise Forbidden(f"key {caller.key_id} may read only its own team's audit trail; leave out `team`")
        team = caller.team
    entries = await audit.read(redis, team, after, limit)
    return AuditPublic(data=entries, next_after=entries[-1].id if len(entries) == limit else None)

"""The audit trail: every write appended to a capped Redis stream (and to its team's), read back newest last.

Entries carry the key id and team of the caller, never key material. The streams are trimmed approximately
(``MAXLEN ~``) so they stay bounded without a sweep.
"""

from datetime import UTC, datetime

from redis.asyncio import Redis

from schemas.teams import AuditEntry, Caller
from store import keys

MAX_ENTRIES = 100_000  # per stream, approximately


async def record(redis: Redis, caller: Caller, action: str, target: str, detail: str = "", team: str = "") -> None:
    """Append one write. ``team``: the team whose resource changed (default: the caller's)."""
    fields = {
        "at": datetime.now(UTC).isoformat(),
        "key_id": caller.key_id,
        "team": team or caller.team,
        "action": action,
        "target": target,
        "detail": detail,
    }
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(keys.AUDIT, fields, maxlen=MAX_ENTRIES, approximate=True)
        pipe.xadd(keys.team_audit(fields["team"]), fields, maxlen=MAX_ENTRIES, approximate=True)
        await pipe.execute()


async def read(redis: Redis, team: str | None, after: str | None, limit: int) -> list[AuditEntry]:
    """Up to ``limit`` entries after stream id ``after`` (oldest first): every team's, or only ``team``'s."""
    stream = keys.AUDIT if team is None else keys.team_audit(team)
    start = f"({after}" if after else "-"
    rows = await redis.xrange(stream, min=start, max="+", count=limit)
    return [
        AuditEntry.model_validate({"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}})
        for entry_id, fields in rows
    ]

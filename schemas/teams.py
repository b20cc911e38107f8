"""Teams, their API keys and quotas, the caller a key stands for, and audit rows.

A key is shown once (``KeyCreated.key``) and stored only as its SHA-256 (``store.teams``); every other model
here carries no key material, so it may be listed, logged and audited.
"""

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from schemas.base import RequestModel, StrictModel

TeamName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="lower-case letters, digits, _ -")]
KEY_PREFIX = "smx_"  # every key starts with it, so a leaked one is easy to grep for and to recognise


class Role(StrEnum):
    """``admin``: everything, every team. ``member``: its team's resources, read and write. ``viewer``: read."""

    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "member": 1, "admin": 2}[self.value]

    def covers(self, other: "Role") -> bool:
        """May a key of this role hold (or create a key with) ``other``'s rights?"""
        return self.rank >= other.rank


class TeamQuotas(RequestModel):
    """A team's limits; ``null`` (or absent) is no limit."""

    max_running_jobs: int | None = Field(default=None, ge=1, description="jobs not yet finished, at once")
    max_usd_per_day: float | None = Field(default=None, ge=0, description="spend per UTC day, all jobs")
    max_tokens_per_day: int | None = Field(default=None, ge=1, description="tokens per UTC day, all jobs")


class TeamCreate(TeamQuotas):
    name: TeamName


class TeamUpdate(TeamQuotas):
    """The limits given replace the team's (``null`` removes one); the others stay."""


class Team(TeamCreate):
    created_at: datetime


class TeamSpend(StrictModel):
    usd: float = Field(description="charged to the team's jobs this UTC day")
    tokens: int = Field(description="prompt + completion tokens of the team's jobs this UTC day")


class TeamUsage(StrictModel):
    """What a team uses now, against its ``TeamQuotas``."""

    team: str
    day: date = Field(description="the UTC day spent_today counts (Redis's clock)")
    running_jobs: int = Field(description="unfinished jobs (queued, running or paused): max_running_jobs counts these")
    spent_today: TeamSpend
    at_day_cap: str | None = Field(default=None, description="why the team's jobs are paused today, if they are")


class TeamsPublic(StrictModel):
    data: list[Team]
    count: int


class KeyCreate(RequestModel):
    team: TeamName | None = Field(default=None, description="default: the caller's team (only admins may name another)")
    role: Role = Role.MEMBER
    name: str = Field(default="", max_length=100, description="a label: who or what uses the key")


class ApiKey(StrictModel):
    """A key as listed: its id and visible prefix, never the key."""

    id: str
    prefix: str = Field(description="the key's first characters, to recognise it (e.g. smx_3f9a)")
    team: str
    role: Role
    name: str = ""
    created_at: datetime
    created_by: str = Field(description="key id that created it, or 'cli' (the operator CLI)")
    revoked_at: datetime | None = None


class KeyCreated(ApiKey):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


class KeysPublic(StrictModel):
    data: list[ApiKey]
    count: int


class Caller(StrictModel):
    """Who a request's key stands for (no key material: safe to log and to audit)."""

    key_id: str
    team: str
    role: Role
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, team: str) -> bool:
        """May this caller see a resource of ``team``? (Admins see every team's.)"""
        return self.is_admin or self.team == team


OPERATOR = Caller(key_id="cli", team="", role=Role.ADMIN, name="operator")
"""The operator CLI working on Redis directly (it needs no key, like a database's create-user)."""


class AuditEntry(StrictModel):
    """One write, as the audit trail keeps it: who (key id and team, never the key), what, on what, when."""

    id: str = Field(description="the stream entry id: pass it back as `after` for the next page")
    at: datetime
    key_id: str
    team: str
    action: str = Field(description="e.g. job.created, job.cancelled, review.accept, key.revoked, endpoint.limits")
    target: str = Field(description="what was changed: a job id, 'job/item', a key id, a team or endpoint name")
    detail: str = ""


class AuditPublic(StrictModel):
    data: list[AuditEntry]
    next_after: str | None = None

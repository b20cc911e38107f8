"""``skillmix teams`` and ``skillmix keys``: the operator's commands, run against Redis directly.

Like a database's create-user, they need no API key (the first admin key has to come from somewhere): whoever
can reach the Redis in ``SKILLMIX_REDIS_URL`` already owns every team's data. Each write is in the audit trail
under the key id ``cli``. A new key is printed alone on the last line of stdout, so a script can take it with
``tail -n 1``; listings never show a key, only its id and visible prefix.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from schemas.errors import NotFound
from schemas.settings import get_settings
from schemas.teams import OPERATOR, ApiKey, KeyCreated, Role, Team, TeamCreate, TeamUpdate
from service.cli_common import ShowErrors, fail
from store import audit, teams
from store.connection import REDIS_ERRORS, open_redis

teams_app = typer.Typer(
    help="Teams and their limits (operator: on Redis directly).", no_args_is_help=True, cls=ShowErrors
)
keys_app = typer.Typer(help="API keys (operator: on Redis directly).", no_args_is_help=True, cls=ShowErrors)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
NONE = "none"  # a limit given as `none`: no limit
LIMIT_HELP = "; `none`: no limit"
OPTIONS = {"max_running_jobs": "--max-running-jobs", "max_usd_per_day": "--max-usd-per-day"}
OPTIONS["max_tokens_per_day"] = "--max-tokens-per-day"
NAME_RULE = "1-64 lower-case letters, digits, _ or -, starting with a letter or digit"

# strings, so `none` can say "no limit" (it removes one on update); validated as TeamQuotas by _model
RunningJobs = Annotated[str | None, typer.Option(help="jobs not yet finished, at once" + LIMIT_HELP)]
UsdPerDay = Annotated[str | None, typer.Option(help="US dollars per UTC day, all jobs" + LIMIT_HELP)]
TokensPerDay = Annotated[str | None, typer.Option(help="tokens per UTC day, all jobs" + LIMIT_HELP)]
RoleOption = Annotated[Role, typer.Option(help="admin: everything; member: its team, read and write; viewer: read")]
LabelOption = Annotated[str, typer.Option("--name", help="a label: who or what uses the key (at most 100 characters)")]


def _run(work: Callable[[Redis], Awaitable[T]]) -> T:
    """Run ``work`` on a Redis connection; Redis not answering is one error line, not a traceback."""
    settings = get_settings()

    async def go() -> T:
        redis = await open_redis(settings)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except (*REDIS_ERRORS, OSError) as exc:
        fail(f"Redis at {settings.redis_url} is not answering ({exc}); set SKILLMIX_REDIS_URL to the service's Redis")


def _limits(**given: str | None) -> dict[str, str | None]:
    """The limits given on the command line (``none`` kept as None: remove the limit), by field name."""
    return {
        field: None if value.strip().lower() == NONE else value for field, value in given.items() if value is not None
    }


def _model(model: type[M], fields: dict[str, object]) -> M:
    """Validate the command line as the API would; each bad option named with what it takes."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            if field == "name":
                problems.append(f"team name {fields.get('name')!r}: use {NAME_RULE}")
            else:
                problems.append(f"{OPTIONS.get(field, field)} {fields.get(field)!r}: {err['msg'].lower()}{LIMIT_HELP}")
        fail("; ".join(problems))


def _limit_text(team: Team, field: str) -> str:
    value = getattr(team, field)
    return "-" if value is None else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain aligned columns (no colours, no wrapping): easy to read and to grep."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _describe(team: Team) -> str:
    limits = ", ".join(f"{OPTIONS[f].removeprefix('--')} {_limit_text(team, f)}" for f in OPTIONS)
    return f"team {team.name}: {limits}"


async def _known_team(redis: Redis, name: str) -> Team:
    found = await teams.get_team(redis, name)
    if found is None:
        fail(f"unknown team {name!r}; see `skillmix teams list`, or create it with `skillmix teams create {name}`")
    return found


@teams_app.command("create")
def create_team(
    name: Annotated[str, typer.Argument(help=NAME_RULE)],
    max_running_jobs: RunningJobs = None,
    max_usd_per_day: UsdPerDay = None,
    max_tokens_per_day: TokensPerDay = None,
) -> None:
    """Create a team (then give it keys with `skillmix keys create --team NAME`)."""
    limits = _limits(
        max_running_jobs=max_running_jobs, max_usd_per_day=max_usd_per_day, max_tokens_per_day=max_tokens_per_day
    )
    create = _model(TeamCreate, {"name": name, **limits})

    async def work(redis: Redis) -> Team:
        team = await teams.create_team(redis, create)  # a name taken: Conflict, shown as `error: ...`
        await audit.record(redis, OPERATOR, "team.created", team.name, _describe(team), team=team.name)
        return team

    team = _run(work)
    typer.echo(f"created {_describe(team)}")
    typer.echo(f"next: skillmix keys create --team {team.name} --role member --name <who>")


@teams_app.command("list")
def list_teams() -> None:
    """Every team and its limits (`-`: no limit)."""
    found = _run(teams.list_teams)
    if not found:
        typer.echo("no teams yet; create one with `skillmix teams create NAME`")
        return
    rows = [[t.name, *(_limit_text(t, f) for f in OPTIONS), t.created_at.isoformat(timespec="seconds")] for t in found]
    _table(["name", "max_running_jobs", "max_usd_per_day", "max_tokens_per_day", "created"], rows)


@teams_app.command("update")
def update_team(
    name: str,
    max_running_jobs: RunningJobs = None,
    max_usd_per_day: UsdPerDay = None,
    max_tokens_per_day: TokensPerDay = None,
) -> None:
    """Change a team's limits: the ones given replace the team's (`none` removes one); the others stay."""
    limits = _limits(
        max_running_jobs=max_running_jobs, max_usd_per_day=max_usd_per_day, max_tokens_per_day=max_tokens_per_day
    )
    if not limits:
        fail("give at least one of --max-running-jobs, --max-usd-per-day, --max-tokens-per-day (`none` removes it)")
    update = _model(TeamUpdate, dict(limits))

    async def work(redis: Redis) -> Team:
        await _known_team(redis, name)
        team = await teams.update_team(redis, name, update)
        changed = ", ".join(f"{OPTIONS[f].removeprefix('--')} {_limit_text(team, f)}" for f in sorted(limits))
        await audit.record(redis, OPERATOR, "team.changed", name, changed, team=name)
        return team

    typer.echo(f"updated {_describe(_run(work))}")


@keys_app.command("create")
def create_key(
    team: Annotated[str, typer.Option("--team", help="the team the key acts for")],
    role: RoleOption = Role.MEMBER,
    name: LabelOption = "",
) -> None:
    """Mint a key. It is shown this once, alone on the last line of stdout; only its hash is stored."""
    if len(name) > 100:
        fail(f"--name is {len(name)} characters; at most 100")

    async def work(redis: Redis) -> KeyCreated:
        await _known_team(redis, team)
        created = await teams.create_key(redis, team, role, name, OPERATOR.key_id)
        await audit.record(redis, OPERATOR, "key.created", created.id, f"role {role.value}", team=team)
        return created

    created = _run(work)
    typer.echo(f"created key {created.id} ({created.prefix}…) for team {team}, role {role.value}, name {name!r}")
    typer.echo("the key is shown this once and stored only as a hash; keep it now (e.g. SKILLMIX_API_KEY):")
    typer.echo(created.key)


@keys_app.command("list")
def list_keys(team: Annotated[str | None, typer.Option("--team", help="only this team's keys")] = None) -> None:
    """Every key's id, visible prefix, team, role, name, creation and revocation (never the key itself)."""

    async def work(redis: Redis) -> list[ApiKey]:
        if team is not None:
            await _known_team(redis, team)
        return await teams.list_keys(redis, team)

    found = _run(work)
    if not found:
        typer.echo("no keys yet; create one with `skillmix keys create --team NAME`")
        return

    def when(moment: object) -> str:
        return "-" if moment is None else moment.isoformat(timespec="seconds")  # type: ignore[attr-defined]

    rows = [[k.id, k.prefix, k.team, k.role.value, k.name, when(k.created_at), when(k.revoked_at)] for k in found]
    _table(["id", "prefix", "team", "role", "name", "created", "revoked"], rows)


@keys_app.command("revoke")
def revoke_key(key_id: Annotated[str, typer.Argument(help="the key's id, as `skillmix keys list` shows it")]) -> None:
    """Refuse a key from now on, on every API process (at their next request)."""

    async def work(redis: Redis) -> tuple[ApiKey, bool]:
        before = await teams.get_key(redis, key_id)
        if before is None:
            raise NotFound(f"no key {key_id!r}; `skillmix keys list` shows the ids")
        revoked = await teams.revoke_key(redis, key_id)
        if before.revoked_at is None:
            await audit.record(redis, OPERATOR, "key.revoked", key_id, f"role {revoked.role.value}", team=revoked.team)
        return revoked, before.revoked_at is not None

    revoked, already = _run(work)
    assert revoked.revoked_at is not None
    when = revoked.revoked_at.isoformat(timespec="seconds")
    if already:
        typer.echo(f"key {key_id} ({revoked.prefix}…, team {revoked.team}) was already revoked at {when}")
    else:
        typer.echo(f"revoked key {key_id} ({revoked.prefix}…, team {revoked.team}, role {revoked.role.value})")

"""The tests' HTTP calls to the API: httpx's own functions with a key sent (the test team's member key unless
a test passes ``key=``). Every test database holds the test team and its keys from the start (``install``),
so a module-scoped API process serves each test's fresh database.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import redis as sync_redis

from schemas.teams import Role, Team
from store import keys
from store.teams import key_entries, new_key, team_fields

TEAM = "tests"
MEMBER = "smx_tests-member-key-0000000000000000000000000000"
ADMIN = "smx_tests-admin-key-00000000000000000000000000000"
VIEWER = "smx_tests-viewer-key-0000000000000000000000000000"


def install(client: "sync_redis.Redis[bytes]", team: str = TEAM, **quotas: object) -> None:
    """The test team and its member, admin and viewer keys, written as ``store.teams`` writes them."""
    client.sadd(keys.TEAMS, team)
    client.hset(keys.team(team), mapping=team_fields(Team(name=team, created_at=datetime.now(UTC), **quotas)))
    for raw, role in ((MEMBER, Role.MEMBER), (ADMIN, Role.ADMIN), (VIEWER, Role.VIEWER)):
        _add(client, raw, team, role, f"tests {role.value}")


def _add(client: "sync_redis.Redis[bytes]", raw: str, team: str, role: Role, name: str) -> None:
    created = new_key(raw, team, role, name, "cli")
    for key, value in key_entries(created).items():
        if isinstance(value, dict):
            client.hset(key, mapping=value)
        else:
            client.set(key, value)
    client.zadd(keys.API_KEYS, {created.id: created.created_at.timestamp()})


def named_key(name: str, role: Role = Role.MEMBER, team: str = TEAM) -> str:
    """Install a key of the test team named ``name`` (a reviewer, say) in this test's database; the raw key."""
    from tests.conftest import REDIS_URL  # conftest imports this module: import it when called

    raw = f"smx_tests-{name}-key-" + "0" * 32
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        _add(client, raw, team, role, name)
    finally:
        client.close()
    return raw


def auth(key: str | None = MEMBER) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _with_key(kwargs: dict[str, Any]) -> dict[str, Any]:
    key = kwargs.pop("key", MEMBER)
    return {**kwargs, "headers": {**auth(key), **(kwargs.get("headers") or {})}}


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, **_with_key(kwargs))


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, **_with_key(kwargs))


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, **_with_key(kwargs))


def patch(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.patch(url, **_with_key(kwargs))


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.delete(url, **_with_key(kwargs))


@contextmanager
def stream(method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
    with httpx.stream(method, url, **_with_key(kwargs)) as response:
        yield response

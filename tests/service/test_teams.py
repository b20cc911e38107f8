"""Teams and keys: the operator CLI on Redis (a key it revokes is refused by a real API process), the admin
routes over HTTP, the no-escalation rule for every pair of roles, keys seen and revoked only within a team, and
the audit trail of every key and team write (without key material)."""

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from schemas.teams import Role, TeamCreate
from store import audit, keys, teams
from tests import keyed
from tests.conftest import REPO, module_api, service_env

ROLE_KEYS = {Role.ADMIN: keyed.ADMIN, Role.MEMBER: keyed.MEMBER, Role.VIEWER: keyed.VIEWER}


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API process for the module; each test still gets a flushed Redis with the test team's keys."""
    unused = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}  # jobs are stored, never run: no worker
    with module_api(tmp_path_factory, service_env({"fake": unused})) as url:
        yield url


@pytest.fixture
def api(api_process: str, redis: ArqRedis) -> str:
    return api_process


def skillmix(*args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI on the test database, as an operator's shell runs it (no API key needed)."""
    env = service_env()
    env.pop("SKILLMIX_API_KEY")
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Bad input: exit code 2, a message saying what to do, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in result.stdout + result.stderr, result.stdout + result.stderr


async def key_id(redis: ArqRedis, raw: str) -> str:
    caller = await teams.lookup(redis, raw)
    assert caller is not None
    return caller.key_id


async def audit_rows(redis: ArqRedis, team: str | None = None) -> list[tuple[str, str, str, str]]:
    """(action, key id, team, target) of every entry, oldest first."""
    return [(e.action, e.key_id, e.team, e.target) for e in await audit.read(redis, team, None, 1000)]


async def no_key_material(redis: ArqRedis, raw_keys: list[str]) -> None:
    for entry in await audit.read(redis, None, None, 1000):
        for raw in raw_keys:
            assert raw not in entry.model_dump_json() and raw[:20] not in entry.model_dump_json()


def create_key(api: str, caller: str, **body: Any) -> httpx.Response:
    return keyed.post(f"{api}/v1/keys", json=body, key=caller)


async def test_operator_cli_manages_teams_and_keys_and_a_revoked_key_gets_401(api: str, redis: ArqRedis) -> None:
    created = skillmix("teams", "create", "ops", "--max-running-jobs", "2", "--max-usd-per-day", "1.5")
    assert created.returncode == 0, created.stdout + created.stderr
    refused(skillmix("teams", "create", "ops"), "exists", "skillmix teams update ops")
    refused(skillmix("teams", "create", "Bad Name"), "lower-case")
    refused(skillmix("teams", "create", "zero", "--max-running-jobs", "0"), "--max-running-jobs", "greater than")
    refused(skillmix("teams", "update", "nope", "--max-usd-per-day", "3"), "unknown team 'nope'")
    updated = skillmix("teams", "update", "ops", "--max-usd-per-day", "none", "--max-tokens-per-day", "1000")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    team = await teams.get_team(redis, "ops")
    assert team is not None
    assert (team.max_running_jobs, team.max_usd_per_day, team.max_tokens_per_day) == (2, None, 1000)
    listed = skillmix("teams", "list").stdout.splitlines()
    assert listed[0].split() == ["name", "max_running_jobs", "max_usd_per_day", "max_tokens_per_day", "created"]
    assert [row.split()[:4] for row in listed[1:]] == [["ops", "2", "-", "1000"], [keyed.TEAM, "-", "-", "-"]]

    refused(skillmix("keys", "create", "--team", "nope"), "unknown team 'nope'", "skillmix teams create nope")
    refused(skillmix("keys", "create", "--team", "ops", "--role", "boss"), "--role")
    made = skillmix("keys", "create", "--team", "ops", "--role", "viewer", "--name", "robot")
    assert made.returncode == 0, made.stdout + made.stderr
    *above, raw = made.stdout.splitlines()
    assert re.fullmatch(r"smx_[A-Za-z0-9_-]{43}", raw), made.stdout  # alone on the last line: 256 bits
    assert above and not any(raw in line for line in above)
    match = re.search(r"created key (key_[0-9a-f]+)", made.stdout)
    assert match is not None
    made_id = match[1]
    assert keyed.get(f"{api}/v1/jobs", key=raw).status_code == 200

    listing = skillmix("keys", "list", "--team", "ops")
    assert listing.returncode == 0 and raw not in listing.stdout
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0] == ["id", "prefix", "team", "role", "name", "created", "revoked"]
    assert len(rows) == 2 and rows[1][:5] == [made_id, raw[:12], "ops", "viewer", "robot"] and rows[1][-1] == "-"
    assert len(skillmix("keys", "list").stdout.splitlines()) == 1 + 3 + 1  # the test team's three keys too
    refused(skillmix("keys", "list", "--team", "nope"), "unknown team")

    revoked = skillmix("keys", "revoke", made_id)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    answer = keyed.get(f"{api}/v1/jobs", key=raw)  # the API process reads Redis on every request: at once
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    assert raw not in answer.text
    assert skillmix("keys", "list", "--team", "ops").stdout.splitlines()[1].split()[-1] != "-"
    refused(skillmix("keys", "revoke", "key_nope"), "no key 'key_nope'", "skillmix keys list")
    assert skillmix("keys", "revoke", made_id).returncode == 0  # twice: a no-op, not audited again

    assert await audit_rows(redis, "ops") == [
        ("team.created", "cli", "ops", "ops"),
        ("team.changed", "cli", "ops", "ops"),
        ("key.created", "cli", "ops", made_id),
        ("key.revoked", "cli", "ops", made_id),
    ]
    await no_key_material(redis, [raw])


async def test_admin_routes_create_change_and_show_teams(api: str, redis: ArqRedis) -> None:
    admin_id = await key_id(redis, keyed.ADMIN)
    for key in (keyed.MEMBER, keyed.VIEWER):
        answer = keyed.post(f"{api}/v1/teams", json={"name": "blue"}, key=key)
        assert answer.status_code == 403 and answer.json()["code"] == "forbidden"
    assert keyed.post(f"{api}/v1/teams", json={"name": "blue"}, key=None).status_code == 401
    assert await teams.get_team(redis, "blue") is None

    made = keyed.post(f"{api}/v1/teams", json={"name": "blue", "max_running_jobs": 1}, key=keyed.ADMIN)
    assert made.status_code == 201 and made.json()["max_running_jobs"] == 1, made.text
    assert keyed.post(f"{api}/v1/teams", json={"name": "blue"}, key=keyed.ADMIN).status_code == 409
    assert keyed.post(f"{api}/v1/teams", json={"name": "Blue!"}, key=keyed.ADMIN).status_code == 422

    def names(key: str) -> list[str]:
        body = keyed.get(f"{api}/v1/teams", key=key).json()
        assert body["count"] == len(body["data"])
        return [t["name"] for t in body["data"]]

    assert names(keyed.ADMIN) == ["blue", keyed.TEAM]
    assert names(keyed.MEMBER) == names(keyed.VIEWER) == [keyed.TEAM]  # listings: the caller's team only
    assert keyed.get(f"{api}/v1/teams/{keyed.TEAM}", key=keyed.VIEWER).status_code == 200
    assert keyed.get(f"{api}/v1/teams/blue", key=keyed.ADMIN).status_code == 200
    for key in (keyed.MEMBER, keyed.VIEWER):  # another team's: exactly a missing one's answer
        other, missing = keyed.get(f"{api}/v1/teams/blue", key=key), keyed.get(f"{api}/v1/teams/nosuch", key=key)
        assert other.status_code == missing.status_code == 404
        assert other.json() == {**missing.json(), "detail": missing.json()["detail"].replace("nosuch", "blue")}

    for key in (keyed.MEMBER, keyed.VIEWER):
        assert keyed.patch(f"{api}/v1/teams/{keyed.TEAM}", json={"max_running_jobs": 9}, key=key).status_code == 403
    assert keyed.patch(f"{api}/v1/teams/nosuch", json={"max_running_jobs": 9}, key=keyed.ADMIN).status_code == 404
    assert keyed.patch(f"{api}/v1/teams/blue", json={"max_running_jobs": 0}, key=keyed.ADMIN).status_code == 422
    changed = keyed.patch(
        f"{api}/v1/teams/blue", json={"max_running_jobs": None, "max_usd_per_day": 2.5}, key=keyed.ADMIN
    )
    assert changed.status_code == 200, changed.text
    team = await teams.get_team(redis, "blue")
    assert team is not None and (team.max_running_jobs, team.max_usd_per_day) == (None, 2.5)
    mine = await teams.get_team(redis, keyed.TEAM)
    assert mine is not None and mine.max_running_jobs is None  # the refused writes changed nothing

    assert await audit_rows(redis) == [
        ("team.created", admin_id, "blue", "blue"),
        ("team.changed", admin_id, "blue", "blue"),
    ]
    entries = await audit.read(redis, "blue", None, 10)
    assert entries[1].detail == "max_running_jobs=none, max_usd_per_day=2.5"


# creator's role -> the roles its key may give a new key (viewers create nothing)
MAY_CREATE = {
    Role.ADMIN: {Role.ADMIN, Role.MEMBER, Role.VIEWER},
    Role.MEMBER: {Role.MEMBER, Role.VIEWER},
    Role.VIEWER: set(),
}


@pytest.mark.parametrize("creator", list(Role))
async def test_no_key_creates_a_key_with_more_rights_than_its_own(api: str, redis: ArqRedis, creator: Role) -> None:
    creator_id = await key_id(redis, ROLE_KEYS[creator])
    made: list[str] = []
    for role in Role:
        before = await redis.zcard(keys.API_KEYS)
        answer = create_key(api, ROLE_KEYS[creator], role=role.value, name=f"by {creator.value}")
        if role not in MAY_CREATE[creator]:
            assert answer.status_code == 403, (creator, role, answer.text)
            assert await redis.zcard(keys.API_KEYS) == before  # a refusal mints nothing
            continue
        assert answer.status_code == 201, (creator, role, answer.text)
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert body["team"] == keyed.TEAM and body["role"] == role.value and body["created_by"] == creator_id
        caller = await teams.lookup(redis, body["key"])
        assert caller is not None and (caller.role, caller.team) == (role, keyed.TEAM)
        assert keyed.get(f"{api}/v1/teams/{keyed.TEAM}", key=body["key"]).status_code == 200
        made.append(body["key"])
    assert len(made) == len(MAY_CREATE[creator])

    # naming another team: admins may; others get 403 whether the team exists or not (no existence leak)
    assert keyed.post(f"{api}/v1/teams", json={"name": "blue"}, key=keyed.ADMIN).status_code == 201
    other, missing = (create_key(api, ROLE_KEYS[creator], team=t, role="viewer") for t in ("blue", "nosuch"))
    if creator is Role.ADMIN:
        assert other.status_code == 201 and other.json()["team"] == "blue"
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "team"]
        made.append(other.json()["key"])
    else:
        assert other.status_code == missing.status_code == 403
        assert other.json() == missing.json()
        assert await teams.list_keys(redis, "blue") == []
    created = [e for e in await audit.read(redis, None, None, 100) if e.action == "key.created"]
    assert len(created) == len(made) and {e.key_id for e in created} == ({creator_id} if made else set())
    await no_key_material(redis, made)


async def test_keys_are_seen_and_revoked_only_within_their_team(api: str, redis: ArqRedis) -> None:
    assert keyed.post(f"{api}/v1/teams", json={"name": "blue"}, key=keyed.ADMIN).status_code == 201
    blue_member = create_key(api, keyed.ADMIN, team="blue", role="member").json()
    blue_admin = create_key(api, keyed.ADMIN, team="blue", role="admin").json()
    blue_key = blue_member["key"]
    tests_admin_id = await key_id(redis, keyed.ADMIN)
    member_id = await key_id(redis, keyed.MEMBER)

    def listed(key: str, **params: str) -> httpx.Response:
        return keyed.get(f"{api}/v1/keys", params=params, key=key)

    for key in (keyed.MEMBER, keyed.VIEWER):
        body = listed(key).json()
        assert body["count"] == 3 and {k["team"] for k in body["data"]} == {keyed.TEAM}
        assert all("key" not in k and "sha" not in k for k in body["data"])
        other, missing = listed(key, team="blue"), listed(key, team="nosuch")
        assert other.status_code == missing.status_code == 404
        assert other.json()["detail"] == missing.json()["detail"].replace("nosuch", "blue")
    assert {k["team"] for k in listed(keyed.ADMIN).json()["data"]} == {keyed.TEAM, "blue"}
    assert [k["id"] for k in listed(keyed.ADMIN, team="blue").json()["data"]] == [blue_member["id"], blue_admin["id"]]
    assert [k["team"] for k in listed(blue_key).json()["data"]] == ["blue", "blue"]
    assert listed(keyed.ADMIN, team="nosuch").status_code == 404
    for row in listed(keyed.ADMIN).json()["data"]:
        assert set(row) == {"id", "prefix", "team", "role", "name", "created_at", "created_by", "revoked_at"}

    def revoke(key: str, target: str) -> httpx.Response:
        return keyed.delete(f"{api}/v1/keys/{target}", key=key)

    # another team's key id: exactly a missing one's 404, and the key still works
    other, missing = revoke(keyed.MEMBER, blue_member["id"]), revoke(keyed.MEMBER, "key_0000000000000000")
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"] == missing.json()["detail"].replace("key_0000000000000000", blue_member["id"])
    assert listed(blue_key).status_code == 200
    # a viewer revokes nothing; a member no admin key (of its team or another's)
    assert revoke(keyed.VIEWER, member_id).status_code == 403
    assert revoke(keyed.MEMBER, tests_admin_id).status_code == 403
    assert revoke(blue_key, blue_admin["id"]).status_code == 403
    assert listed(keyed.ADMIN).status_code == listed(blue_admin["key"]).status_code == 200
    assert listed(keyed.VIEWER).status_code == 200

    # a member revokes a key of its team with no more rights than its own; revoking twice changes nothing
    spare = create_key(api, keyed.MEMBER, role="viewer", name="spare").json()
    gone = revoke(keyed.MEMBER, spare["id"])
    assert gone.status_code == 200 and gone.json()["revoked_at"] is not None and "key" not in gone.json()
    assert listed(spare["key"]).status_code == 401
    assert revoke(keyed.MEMBER, spare["id"]).json()["revoked_at"] == gone.json()["revoked_at"]
    # an admin revokes any team's key: refused at once by the API process
    assert revoke(keyed.ADMIN, blue_member["id"]).status_code == 200
    deadline = time.monotonic() + 1.0
    while listed(blue_key).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works after a second"

    rows = [r for r in await audit_rows(redis) if r[0] == "key.revoked"]
    assert rows == [
        ("key.revoked", member_id, keyed.TEAM, spare["id"]),
        ("key.revoked", tests_admin_id, "blue", blue_member["id"]),
    ]
    blue_actions = [r[0] for r in await audit_rows(redis, "blue")]
    assert blue_actions == ["team.created", "key.created", "key.created", "key.revoked"]
    await no_key_material(redis, [blue_key, blue_admin["key"], spare["key"], keyed.MEMBER, keyed.ADMIN])


async def test_usage_shows_the_teams_unfinished_jobs_to_the_team_only(api: str, redis: ArqRedis) -> None:
    await teams.create_team(redis, TeamCreate(name="other", max_running_jobs=2))
    other = (await teams.create_key(redis, "other", Role.MEMBER, "o", "cli")).key
    assert keyed.get(f"{api}/v1/teams/{keyed.TEAM}/usage").json()["running_jobs"] == 0
    job = keyed.post(f"{api}/v1/jobs", json={"recipe": "prompts", "prompts": ["Say hi."]})
    assert job.status_code == 201, job.text
    mine = keyed.get(f"{api}/v1/teams/{keyed.TEAM}/usage", key=keyed.VIEWER).json()
    assert mine["team"] == keyed.TEAM and mine["running_jobs"] == 1 and mine["at_day_cap"] is None
    assert mine["spent_today"] == {"usd": 0.0, "tokens": 0}
    hidden = keyed.get(f"{api}/v1/teams/{keyed.TEAM}/usage", key=other)
    missing = keyed.get(f"{api}/v1/teams/nope/usage", key=other)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"].replace(keyed.TEAM, "X") == missing.json()["detail"].replace("nope", "X")
    keyed.post(f"{api}/v1/jobs/{job.json()['id']}/cancel").raise_for_status()
    assert keyed.get(f"{api}/v1/teams/{keyed.TEAM}/usage").json()["running_jobs"] == 0  # the slot is back

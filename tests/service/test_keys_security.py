"""API keys against real API processes: a revocation is seen by every process within a second, and a key's
material is nowhere after use (Redis keys and values, the API's log, error bodies): only its SHA-256 is kept."""

import asyncio
import time
from pathlib import Path

import httpx
import redis as sync_redis
from arq.connections import ArqRedis
from redis.asyncio import Redis

from schemas.teams import Role
from store import teams
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env

REVOKE_SEEN_S = 1.0


async def _store(fn: object, *args: object) -> object:
    client = Redis.from_url(REDIS_URL)
    try:
        return await fn(client, *args)  # type: ignore[operator]
    finally:
        await client.aclose()


def _new_key(role: Role = Role.MEMBER) -> tuple[str, str]:
    created = asyncio.run(_store(teams.create_key, keyed.TEAM, role, "security test", "cli"))
    return created.key, created.id  # type: ignore[attr-defined]


def test_a_revoked_key_is_refused_by_another_api_process_within_a_second(processes: Processes, redis: ArqRedis) -> None:
    env = service_env()
    first, second = processes.api(env), processes.api(env)
    raw, key_id = _new_key()
    for api in (first, second):
        assert keyed.get(f"{api}/v1/jobs", key=raw).status_code == 200
    asyncio.run(_store(teams.revoke_key, key_id))  # as `skillmix keys revoke` does, beside neither process
    revoked_at = time.monotonic()
    while True:
        answer = keyed.get(f"{second}/v1/jobs", key=raw)
        if answer.status_code == 401:
            break
        assert time.monotonic() - revoked_at < REVOKE_SEEN_S, f"still {answer.status_code} after a second"
    seen_after = time.monotonic() - revoked_at
    assert seen_after < REVOKE_SEEN_S
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert keyed.get(f"{first}/v1/jobs", key=raw).status_code == 401
    assert keyed.get(f"{first}/v1/jobs").status_code == 200  # the other keys still work


def _everything_in_redis() -> list[bytes]:
    """Every key name and value of the test database, read by type."""
    client = sync_redis.Redis.from_url(REDIS_URL)
    found: list[bytes] = []
    try:
        for name in client.scan_iter(count=1000):
            found.append(name)
            kind = client.type(name).decode()
            if kind == "string":
                found.append(client.get(name) or b"")
            elif kind == "hash":
                for k, v in client.hgetall(name).items():
                    found += [k, v]
            elif kind == "list":
                found += client.lrange(name, 0, -1)
            elif kind == "set":
                found += list(client.smembers(name))
            elif kind == "zset":
                found += [m for m, _ in client.zrange(name, 0, -1, withscores=True)]
            elif kind == "stream":
                for entry_id, fields in client.xrange(name):
                    found.append(entry_id)
                    for k, v in fields.items():
                        found += [k, v]
            else:
                raise AssertionError(f"{name!r}: a {kind} this test cannot read; teach it")
    finally:
        client.close()
    return found


def test_no_key_material_in_redis_logs_or_error_bodies(processes: Processes, redis: ArqRedis, tmp_path: Path) -> None:
    # the most the API process logs (its access log is off by design, `skillmix serve`)
    api = processes.api(service_env(SKILLMIX_DATA_DIR=str(tmp_path), SKILLMIX_LOG_LEVEL="DEBUG"))
    raw, _ = _new_key()
    secret = raw.removeprefix("smx_")  # the key without its public prefix: no part of it may leak
    bodies: list[httpx.Response] = [
        keyed.get(f"{api}/v1/jobs", key=raw),
        keyed.post(f"{api}/v1/skill-sets", key=raw, json={"name": "s", "skills": [], "query_types": []}),  # 422
        keyed.get(f"{api}/v1/jobs/{'0' * 32}", key=raw),  # 404
        keyed.post(f"{api}/v1/jobs", key=raw, json={"recipe": "nope"}),  # 422
        keyed.patch(f"{api}/v1/endpoints/local", key=raw, json={"rpm": 1}),  # 403: a member's
        keyed.get(f"{api}/v1/jobs", key=raw[:-1] + ("A" if raw[-1] != "A" else "B")),  # 401: slightly wrong
        keyed.get(f"{api}/v1/jobs", key=raw + "x"),  # 401
        keyed.get(f"{api}/v1/jobs", headers={"Authorization": f"Basic {raw}"}, key=None),  # 401: malformed
        keyed.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {raw} extra"}, key=None),  # 401
        keyed.get(f"{api}/v1/review/{'0' * 32}/x", key=raw),  # 404
    ]
    statuses = [b.status_code for b in bodies]
    assert statuses == [200, 422, 404, 422, 403, 401, 401, 401, 401, 404], statuses
    for answer in bodies[1:]:
        assert secret not in answer.text and secret not in str(answer.headers), answer.text
    stored = _everything_in_redis()
    assert teams.digest(raw).encode() in stored  # the lookup is by its hash: the search looks in the right place
    assert not [v for v in stored if secret.encode() in v], "the raw key is in Redis"
    processes.stop()  # the process has written all it will
    logs = sorted(tmp_path.glob("api-*.log"))
    assert logs, "the API process's log is where processes.start writes it"
    for log in logs:
        assert secret not in log.read_text(errors="replace"), f"the raw key is in the API's log {log.name}"
    assert secret not in processes.logs()

"""The audit trail through a real API process: every successful write is one entry (who by key id and team,
what, on what), a refused write none; ``GET /v1/audit`` shows a team its own entries and an admin everyone's,
paged by stream id; no entry carries key material."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from schemas.jobs import JobState
from schemas.teams import Role, TeamCreate
from store import keys, records, teams
from tests import keyed
from tests.conftest import Processes, module_api, service_env
from tests.test_end_to_end import STARTER, finished, submit, wait_for
from tests.workers.test_math import MATH_SET

ENDPOINTS = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model", "rpm": 600}}
INSTRUCT = {"recipe": "instruct", "skill_set": "starter@1", "count": 10}


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with module_api(tmp_path_factory, service_env(ENDPOINTS)) as url:
        yield url


@pytest.fixture
async def client(api_process: str, redis: ArqRedis) -> Any:
    async with httpx.AsyncClient(base_url=api_process, headers=keyed.auth(), timeout=30) as c:
        yield c


async def audit(client: httpx.AsyncClient, key: str = keyed.MEMBER, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit", params=params, headers=keyed.auth(key))
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def summary(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["team"], e["action"], e["target"]) for e in entries]


async def test_every_job_and_endpoint_write_is_recorded_once_and_refusals_not(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    assert (await client.post("/v1/skill-sets", json=STARTER)).status_code == 201
    job = (await client.post("/v1/jobs", json=INSTRUCT)).json()["id"]
    budget = {"budget": {"max_tokens": 5000}}
    assert (await client.patch(f"/v1/jobs/{job}", json=budget)).status_code == 200
    assert (await client.post(f"/v1/jobs/{job}/resume")).status_code == 409  # not paused: refused, not recorded
    await records.set_state(redis, job, JobState.PAUSED, "paused for the test")
    assert (await client.post(f"/v1/jobs/{job}/resume")).status_code == 200
    assert (await client.post(f"/v1/jobs/{job}/cancel")).status_code == 200
    assert (await client.post(f"/v1/jobs/{job}/cancel")).status_code == 200  # already finished: changes nothing
    assert (await client.patch(f"/v1/jobs/{job}", json=budget)).status_code == 409
    assert (await client.post("/v1/jobs/nope/cancel")).status_code == 404
    assert (await client.post(f"/v1/jobs/{job}/cancel", headers=keyed.auth(keyed.VIEWER))).status_code == 403
    assert (await client.patch("/v1/endpoints/fake", json={"rpm": 100})).status_code == 403  # a member's
    admin = keyed.auth(keyed.ADMIN)
    assert (await client.patch("/v1/endpoints/fake", json={"rpm": 100}, headers=admin)).status_code == 200

    entries = await audit(client)
    assert summary(entries) == [
        (keyed.TEAM, "skill_set.created", "starter@1"),
        (keyed.TEAM, "job.created", job),
        (keyed.TEAM, "job.budget", job),
        (keyed.TEAM, "job.resumed", job),
        (keyed.TEAM, "job.cancelled", job),
        (keyed.TEAM, "endpoint.limits", "fake"),
    ]
    member_id = (await teams.lookup(redis, keyed.MEMBER)).key_id  # type: ignore[union-attr]
    admin_id = (await teams.lookup(redis, keyed.ADMIN)).key_id  # type: ignore[union-attr]
    assert [e["key_id"] for e in entries] == [member_id] * 5 + [admin_id]
    assert json.loads(entries[2]["detail"]) == {"max_cost_usd": None, "max_tokens": 5000}
    assert json.loads(entries[5]["detail"]) == {"rpm": 100}
    assert all(e["at"] and e["id"] for e in entries)
    stored = b"".join(v for _, f in await redis.xrange(keys.AUDIT) for v in f.values())
    for raw in (keyed.MEMBER, keyed.ADMIN, keyed.VIEWER):  # no key material, in the answer or in Redis
        assert raw not in json.dumps(entries) and raw.encode() not in stored


async def test_a_team_reads_its_own_entries_and_an_admin_everyones(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    await teams.create_team(redis, TeamCreate(name="other"))
    other = (await teams.create_key(redis, "other", Role.MEMBER, "other member", "cli")).key
    await client.post("/v1/skill-sets", json=STARTER)
    await client.post("/v1/skill-sets", json={**STARTER, "name": "theirs"}, headers=keyed.auth(other))
    assert summary(await audit(client)) == [(keyed.TEAM, "skill_set.created", "starter@1")]
    assert summary(await audit(client, other)) == [("other", "skill_set.created", "theirs@1")]
    assert summary(await audit(client, keyed.VIEWER)) == [(keyed.TEAM, "skill_set.created", "starter@1")]
    assert len(await audit(client, keyed.ADMIN)) == 2
    assert summary(await audit(client, keyed.ADMIN, team="other")) == [("other", "skill_set.created", "theirs@1")]
    refused = await client.get("/v1/audit", params={"team": "other"})  # a member naming another team
    assert refused.status_code == 403
    assert (await client.get("/v1/audit", params={"team": keyed.TEAM})).status_code == 200  # its own: fine
    async with httpx.AsyncClient(base_url=str(client.base_url)) as keyless:
        assert (await keyless.get("/v1/audit")).status_code == 401


async def test_pages_follow_next_after_to_the_end(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    for n in range(5):
        await client.post("/v1/skill-sets", json={**STARTER, "name": f"set{n}"})
    everything = await audit(client, limit=1000)
    seen: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = (await client.get("/v1/audit", params={"limit": 2, **({"after": after} if after else {})})).json()
        assert len(page["data"]) <= 2
        seen += page["data"]
        after = page["next_after"]
        if after is None:
            break
    assert seen == everything and len(seen) == 5
    for bad in ({"after": "yesterday"}, {"after": "99999999999999999999-0"}, {"limit": 0}, {"limit": 1001}):
        assert (await client.get("/v1/audit", params=bad)).status_code == 422, bad


def test_review_writes_are_recorded_under_the_jobs_team(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    """accept, edit, reject and help on a real math job's review item; a stale write (409) is not recorded."""
    fake = fake_llm(rpm=0, latency_ms=2)
    env = service_env({"fake": fake.endpoint_settings()})
    api = processes.api(env)
    processes.worker(env)
    keyed.post(f"{api}/v1/skill-sets", json=MATH_SET).raise_for_status()
    job = submit(api, recipe="math", skill_set="mathskills@1", count=1, seed=1, n_solves=3, n_validations=1)
    assert wait_for(api, job, finished, timeout=120)["state"] == "completed"
    [item] = keyed.get(f"{api}/v1/review", params={"job": job}).json()["data"]
    url = f"{api}/v1/review/{job}/{item['id']}"
    assert keyed.post(f"{url}/accept", json={"expected_version": 1}).status_code == 200
    assert keyed.post(f"{url}/accept", json={"expected_version": 1}).status_code == 409  # stale: not recorded
    assert keyed.patch(url, json={"expected_version": 2, "answer": "42"}).status_code == 200
    assert keyed.post(f"{url}/reject", json={"expected_version": 3, "reason": "wrong"}).status_code == 200
    help_ = keyed.post(f"{url}/help", json={"kind": "resolve"})
    assert help_.status_code == 202, help_.text

    entries = keyed.get(f"{api}/v1/audit").json()["data"]
    target = f"{job}/{item['id']}"
    assert [(e["action"], e["target"], e["detail"]) for e in entries if e["action"].startswith("review.")] == [
        ("review.accept", target, "version 2"),
        ("review.edit", target, "version 3"),
        ("review.reject", target, "version 4"),
        ("review.help", target, f"resolve suggestion {help_.json()['suggestion_id']}"),
    ]
    assert {e["team"] for e in entries} == {keyed.TEAM}

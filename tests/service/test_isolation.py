"""The cross-team matrix, generated from the app's route table: a route added later is covered without editing
this test (a new path parameter fails it, saying what to add to ``PARAMS``).

Team A (the test team, ``tests.keyed``) creates real resources through a real API process: an instruct job, a
curate job, a dataset-extraction job, a math job with a review item, a private skill set. Team B (its own
member, viewer and admin keys, made with ``store.teams``) then tries every route and method:

- B's member key on A's resources: 404 (403 where the route needs an admin key), with no body, a JSON body of
  the wrong shape and a body that is not JSON; Redis is byte-for-byte unchanged (every key, read by type);
  the answer equals the answer for random missing ids (ids replaced): nothing tells that A's exist.
- listings (no path parameter) with B's key name none of A's ids; ``GET /v1/review?job=<A's>`` is a 404.
- no key: 401 with ``WWW-Authenticate: Bearer``; a viewer's write (POST/PATCH/PUT/DELETE): 403.
A's own keys show the resources are real: A's member reads each one (200), A's viewer gets 403 on each write
(not 404: it sees the resource, it may not change it).
"""

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from arq.connections import ArqRedis
from fastapi.routing import iter_route_contexts
from redis.asyncio import Redis

from schemas.examples import Example, QualityVerdict
from schemas.llm import Usage
from schemas.teams import Role, TeamCreate
from service.app import create_app
from service.auth import admin, authenticate
from store import keys
from store import teams as team_store
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env
from tests.workers.test_math import MATH_SET

SKIPPED_PATHS = ("/healthz", "/static", "/docs", "/redoc", "/openapi.json", "/review")  # open, or the page
WRITES = {"POST", "PATCH", "PUT", "DELETE"}
TEAM_B = "team-b"
ROWS = [{"instruction": f"Explain topic number {i} in two sentences.", "output": f"Topic {i} is ..."} for i in range(6)]
# keys a request may change although it changes nothing of anyone's: the failed-authentication counter of the
# client address (service.auth counts every 401 there, by design; only the no-key requests make any)
IGNORED_PREFIXES = (keys.auth_failures("").rstrip(":"),)


@dataclass
class TeamA:
    instruct: str
    curate: str
    extraction: str
    math: str
    item: str
    skill_set: str
    key_id: str
    judge_eval: str
    profile: str

    def ids(self) -> set[str]:
        return {self.instruct, self.curate, self.extraction, self.math, self.item, self.skill_set, self.key_id,
                self.judge_eval, self.profile}  # fmt: skip


@dataclass(frozen=True)
class Param:
    value: str
    owned: bool  # a resource of team A (else a shared one, e.g. an endpoint every team reads)


def _job_for(path: str, a: TeamA) -> str:
    if path.startswith("/v1/curate"):
        return a.curate
    if path.startswith("/v1/skill-sets/extract"):
        return a.extraction
    if path.startswith("/v1/review"):
        return a.math
    if path.startswith("/v1/judge-evals"):
        return a.judge_eval
    return a.instruct


def _name_for(path: str, a: TeamA) -> Param:
    if path.startswith("/v1/skill-sets"):
        return Param(a.skill_set, True)
    if path.startswith("/v1/endpoints"):
        return Param("fake", False)  # endpoints are the fleet's, not a team's (their writes need an admin key)
    if path.startswith("/v1/teams"):
        return Param(keyed.TEAM, True)
    if path.startswith("/v1/quality-profiles"):
        return Param(a.profile, True)
    pytest.fail(f"route {path}: no team-A value for path parameter 'name' under this prefix; add it to _name_for")


# path parameter -> team A's value for a route's path. A route with a parameter not here fails the test.
PARAMS: dict[str, Callable[[str, TeamA], Param]] = {
    "job_id": lambda path, a: Param(_job_for(path, a), True),
    "item_id": lambda path, a: Param(a.item, True),
    "name": _name_for,
    "version": lambda path, a: Param("1", False),  # the version of the skill set named by `name`
    "key_id": lambda path, a: Param(a.key_id, True),
}
MISSING: dict[str, Callable[[], str]] = {
    "version": lambda: "1",
    "key_id": lambda: "key_" + uuid.uuid4().hex[:16],
    "name": lambda: "missing-" + uuid.uuid4().hex[:8],
}


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    params: tuple[str, ...]
    needs_admin: bool


def _depends_on(dependant: Any, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def routes() -> list[Route]:
    """Every keyed route and method of the app, from its route table (included routers flattened)."""
    found = []
    for route in iter_route_contexts(create_app().routes):
        path, dependant = route.path, getattr(route, "dependant", None)
        if path is None or path.startswith(SKIPPED_PATHS) or dependant is None:
            continue
        assert _depends_on(dependant, authenticate), f"{path} reads no key: every route but {SKIPPED_PATHS} must"
        params = tuple(p.name for p in dependant.path_params)
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append(Route(path, method, params, _depends_on(dependant, admin)))
    return found


def fill(route: Route, a: TeamA) -> tuple[str, dict[str, str], dict[str, str]]:
    """The path with A's values, the values, and the path with random missing ones."""
    mine: dict[str, str] = {}
    for name in route.params:
        if name not in PARAMS:
            pytest.fail(
                f"route {route.method} {route.path} has path parameter {name!r}, unknown to the isolation test: "
                "add it to PARAMS in tests/service/test_isolation.py (which team-A resource it names)"
            )
        mine[name] = PARAMS[name](route.path, a).value
    missing = {n: MISSING.get(n, lambda: uuid.uuid4().hex)() for n in route.params}
    return route.path.format(**mine), mine, missing


def owned(route: Route, a: TeamA) -> bool:
    return any(PARAMS[n](route.path, a).owned for n in route.params)


def snapshot() -> dict[str, Any]:
    """Every key of the test database with its value, read by type (no DUMP: values compare as data)."""
    client = sync_redis.Redis.from_url(REDIS_URL)
    out: dict[str, Any] = {}
    try:
        for raw in client.scan_iter(count=1000):
            name = raw.decode()
            if name.startswith(IGNORED_PREFIXES):
                continue
            kind = client.type(raw).decode()
            if kind == "string":
                value: Any = client.get(raw)
            elif kind == "hash":
                value = client.hgetall(raw)
            elif kind == "list":
                value = client.lrange(raw, 0, -1)
            elif kind == "set":
                value = sorted(client.smembers(raw))
            elif kind == "zset":
                value = client.zrange(raw, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(raw)
            else:
                value = kind
            out[name] = (kind, value)
    finally:
        client.close()
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


BODIES: dict[str, dict[str, Any]] = {
    "no body": {},
    "JSON of the wrong shape": {"json": {"garbage": [1, 2, 3]}},
    "not JSON": {"content": b"\xff{not json", "headers": {"content-type": "application/json"}},
}


def _same(body: str, values: dict[str, str]) -> str:
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        body = body.replace(value, f"<{name}>")
    return body


async def _store(fn: Callable[..., Any], *args: Any) -> Any:
    client = Redis.from_url(REDIS_URL)
    try:
        return await fn(client, *args)
    finally:
        await client.aclose()


def _team_b() -> dict[Role, str]:
    async def make(redis: Redis) -> dict[Role, str]:
        await team_store.create_team(redis, TeamCreate(name=TEAM_B))
        return {r: (await team_store.create_key(redis, TEAM_B, r, f"b {r.value}", "cli")).key for r in Role}

    result: dict[Role, str] = asyncio.run(_store(make))
    return result


def _seed_math_example(job_id: str) -> str:
    """One accepted example of the math job, stored as the curate step stores it (no worker runs here)."""
    example = Example.model_validate(
        {
            "id": uuid.uuid4().hex,
            "job_id": job_id,
            "index": 0,
            "instruction": "What is 1/2 + 1/3?",
            "output": "5/6",
            "skills": ["fractions", "lcm"],
            "model": "fake-model",
            "endpoint": "fake",
            "recipe": "math",
            "template_version": "t",
            "usage": Usage(),
            "verdict": QualityVerdict(accepted=True),
            "extras": {"answer": "5/6"},
        }
    )
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        client.hset(keys.bucket(job_id, "accepted", 0), "0", example.model_dump_json())
        client.hset(keys.counters(job_id), "accepted", 1)
    finally:
        client.close()
    return example.id


def _created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _team_a(api: str, data: Path) -> TeamA:
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    private = {**MATH_SET, "name": "a-private"}
    assert keyed.post(f"{api}/v1/skill-sets", json=private).status_code == 201
    instruct = _created(keyed.post(f"{api}/v1/jobs", json={"recipe": "instruct", "skill_set": "starter@1", "count": 2}))
    curate = _created(keyed.post(f"{api}/v1/curate", json={"recipe": "curate", "source": {"path": "rows.jsonl"}}))
    spec = {"recipe": "extract-from-dataset", "skill_set_name": "a-extracted", "source": {"path": "rows.jsonl"}}
    extraction = _created(keyed.post(f"{api}/v1/skill-sets/extract", json=spec))
    math = {"recipe": "math", "skill_set": "a-private@1", "count": 1, "n_solves": 1, "n_validations": 1}
    math_job = _created(keyed.post(f"{api}/v1/jobs", json=math))
    item = _seed_math_example(math_job)
    listed = keyed.get(f"{api}/v1/review", params={"job": math_job})  # A's first read creates the review item
    assert listed.status_code == 200 and [i["id"] for i in listed.json()["data"]] == [item], listed.text
    key_ids = asyncio.run(_store(team_store.list_keys, keyed.TEAM))
    member_key = next(k.id for k in key_ids if k.role is Role.MEMBER)
    labelled = [{"instruction": "Name a prime.", "output": "Seven is prime.", "label": "good"}]
    judge_eval = _created(keyed.post(f"{api}/v1/judge-evals", json={"judge": "fake", "examples": labelled}))
    profile = {"name": "a-profile", "judge": {"endpoint": "fake", "min_score": 4}}
    assert keyed.post(f"{api}/v1/quality-profiles", json=profile).status_code == 201
    return TeamA(instruct, curate, extraction, math_job, item, "a-private", member_key, judge_eval, "a-profile")


def test_every_route_keeps_team_a_from_team_b(processes: Processes, redis: ArqRedis, tmp_path: Path) -> None:
    endpoints = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}}  # no worker: nothing runs
    env = service_env(endpoints, SKILLMIX_AUTH_FAIL_BURST="1000000", SKILLMIX_DATA_DIR=str(tmp_path))
    api = processes.api(env)
    a = _team_a(api, tmp_path)
    b = _team_b()
    table = routes()
    assert {r.path for r in table} >= {"/v1/jobs/{job_id}", "/v1/review/{job_id}/{item_id}", "/metrics"}
    checked = 0

    for route in table:
        path, mine, missing = fill(route, a)
        label = f"{route.method} {route.path}"
        url = f"{api}{path}"

        # no key: 401 with the Bearer challenge, on every route
        anonymous = keyed.request(route.method, url, key=None)
        assert anonymous.status_code == 401, f"{label} without a key: {anonymous.status_code} {anonymous.text}"
        assert anonymous.headers.get("www-authenticate", "").startswith("Bearer"), label

        # a viewer's write: 403 (on its own team's resources: it sees them, it may not change them)
        if route.method in WRITES:
            before = snapshot()
            viewer = keyed.request(route.method, url, key=keyed.VIEWER, json={})
            assert viewer.status_code == 403, f"{label} with A's viewer key: {viewer.status_code} {viewer.text}"
            assert not diff(before, snapshot()), f"{label}: a viewer's refused write changed Redis"

        if not route.params:  # a listing or a create: B's answer names none of A's ids, changes nothing of A's
            before = snapshot()
            answer = keyed.request(route.method, url, key=b[Role.MEMBER], **BODIES["JSON of the wrong shape"])
            if route.needs_admin:
                assert answer.status_code == 403, f"{label} with B's member key: {answer.status_code}"
            elif route.method == "GET":
                assert answer.status_code == 200, f"{label} with B's member key: {answer.status_code} {answer.text}"
            else:
                assert answer.status_code == 422, f"{label} with B's key and a wrong body: {answer.text}"
            leaked = sorted(i for i in a.ids() if i in answer.text)
            assert not leaked, f"{label} with B's key shows team A's {leaked}"
            assert not diff(before, snapshot()), f"{label} with B's key changed Redis: {diff(before, snapshot())}"
            checked += 1
            continue

        if route.method == "GET" and owned(route, a):  # A reads its own: the ids are real
            own = keyed.get(url)
            assert own.status_code == 200, f"{label} with A's own key: {own.status_code} {own.text}"

        for kind, body in BODIES.items():
            before = snapshot()
            theirs = keyed.request(route.method, url, key=b[Role.MEMBER], **body)
            after = snapshot()
            assert not diff(before, after), f"{label} ({kind}) with B's key changed Redis: {diff(before, after)}"
            if route.needs_admin:  # (a body that is not JSON is refused before any dependency: see below)
                expected = (403, 422) if kind == "not JSON" else (403,)
                assert theirs.status_code in expected, f"{label} ({kind}) with B's member key: {theirs.status_code}"
                continue
            if not owned(route, a):  # a shared resource (an endpoint): readable by every team, and unchanged
                assert route.method == "GET" and theirs.status_code == 200, f"{label} ({kind}): {theirs.text}"
                continue
            nowhere = keyed.request(route.method, f"{api}{route.path.format(**missing)}", key=b[Role.MEMBER], **body)
            if kind == "not JSON":  # the body is parsed before any dependency runs (FastAPI), so ownership is
                # never reached: the same 422 for A's ids and for missing ones, which tells nothing either
                assert theirs.status_code in (404, 422), f"{label} ({kind}) with B's key: {theirs.text}"
            else:
                assert theirs.status_code == 404, f"{label} ({kind}) with B's key: {theirs.status_code} {theirs.text}"
            assert theirs.status_code == nowhere.status_code, f"{label} ({kind}): A's ids and missing ones differ"
            assert _same(theirs.text, mine) == _same(nowhere.text, missing), f"{label} ({kind}) leaks existence"
            assert dict(theirs.headers).keys() == dict(nowhere.headers).keys(), label
        checked += 1

    # a query parameter naming A's job: the same 404 as for a missing job
    for job in (a.math, a.instruct):
        theirs = keyed.get(f"{api}/v1/review", params={"job": job}, key=b[Role.MEMBER])
        nowhere = keyed.get(f"{api}/v1/review", params={"job": "0" * 32}, key=b[Role.MEMBER])
        assert theirs.status_code == 404, theirs.text
        assert theirs.text.replace(job, "<job>") == nowhere.text.replace("0" * 32, "<job>")
    assert checked == len(table)


def test_a_route_with_an_unknown_path_parameter_fails_the_matrix() -> None:
    a = TeamA("j1", "j2", "j3", "j4", "i1", "s1", "k1", "j5", "p1")
    with pytest.raises(pytest.fail.Exception, match="add it to PARAMS"):
        fill(Route("/v1/widgets/{widget_id}", "GET", ("widget_id",), False), a)
    with pytest.raises(pytest.fail.Exception, match="_name_for"):
        fill(Route("/v1/widgets/{name}", "GET", ("name",), False), a)
    assert fill(Route("/v1/teams/{name}", "GET", ("name",), True), a)[1] == {"name": keyed.TEAM}
    assert fill(Route("/v1/keys/{key_id}", "DELETE", ("key_id",), True), a)[1] == {"key_id": "k1"}

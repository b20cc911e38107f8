"""``Idempotency-Key`` against a real API process: a repeat (or a race) creates one job and enqueues it once.

Every route that creates a job (``POST /v1/jobs`` with any recipe, ``/v1/curate`` and
``/v1/skill-sets/extract`` as JSON or with an upload) answers a repeat of the same key and body with the first
201; another body is a 422 naming the header; a failure frees the key; keys are per team; a replayed upload's
file is deleted.
"""

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from schemas.teams import Role, TeamCreate
from service.idempotency import digest
from store import idempotency, keys, teams
from tests import keyed
from tests.conftest import module_api, service_env
from tests.test_end_to_end import STARTER

ENDPOINTS = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model", "rpm": 600}}
WAIT_S = 2  # SKILLMIX_IDEMPOTENCY_WAIT_S of the API under test
HEADER = "Idempotency-Key"
INSTRUCT = {"recipe": "instruct", "skill_set": "starter@1", "count": 40, "seed": 1}
EVAL_MATH = {"recipe": "eval-math", "questions": [{"id": "q1", "problem": "What is 1 + 1?", "answer": "2"}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One API process (no worker: what a request enqueued stays in the queue to be counted) and its data dir."""
    data = tmp_path_factory.mktemp("data")
    env = service_env(ENDPOINTS, SKILLMIX_DATA_DIR=str(data), SKILLMIX_IDEMPOTENCY_WAIT_S=str(WAIT_S))
    with module_api(tmp_path_factory, env) as url:
        yield url, data


@pytest.fixture
async def client(served: tuple[str, Path], redis: ArqRedis) -> Any:
    async with httpx.AsyncClient(base_url=served[0], headers=keyed.auth(), timeout=30) as c:
        (await c.post("/v1/skill-sets", json=STARTER)).raise_for_status()
        yield c


@pytest.fixture
def data_dir(served: tuple[str, Path]) -> Path:
    return served[1]


def rows(path: Path, n: int) -> Path:
    """An Alpaca JSONL dataset of ``n`` distinct rows."""
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"instruction": f"Question number {i}?", "output": f"Answer number {i}."}) + "\n")
    return path


async def job_ids(redis: ArqRedis) -> list[str]:
    return [m.decode() for m in await redis.zrange(keys.JOBS_INDEX, 0, -1)]


async def queued_jobs(redis: ArqRedis) -> list[str]:
    """The job of every arq job in the queue (one per chunk or step enqueued)."""
    return [str(keys.job_of_step(m.decode())) for m in await redis.zrange(keys.QUEUE_NAME, 0, -1)]


async def created_entries(client: httpx.AsyncClient) -> list[str]:
    entries = (await client.get("/v1/audit", headers=keyed.auth(keyed.ADMIN))).json()["data"]
    return [e["target"] for e in entries if e["action"] == "job.created"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/jobs", INSTRUCT),
        ("/v1/jobs", EVAL_MATH),
        ("/v1/jobs", {"recipe": "curate", "source": {"path": "seed.jsonl"}}),
        ("/v1/curate", {"recipe": "curate", "source": {"path": "seed.jsonl"}}),
        ("/v1/skill-sets/extract", {"recipe": "extract-agnostic", "skill_set_name": "mine", "num_topics": 2}),
    ],
    ids=["instruct", "eval-math", "jobs-curate", "curate", "extract"],
)
async def test_a_repeat_answers_the_first_response_and_creates_nothing(
    client: httpx.AsyncClient, redis: ArqRedis, data_dir: Path, route: str, body: dict[str, Any]
) -> None:
    rows(data_dir / "seed.jsonl", 50)
    raw = json.dumps(body).encode()
    headers = {HEADER: "order-42", "content-type": "application/json"}
    first = await client.post(route, content=raw, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    queued = await queued_jobs(redis)
    assert queued and set(queued) == {first.json()["id"]}
    for _ in range(2):
        again = await client.post(route, content=raw, headers=headers)
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content  # the same body, byte for byte: the same job id
    assert await job_ids(redis) == [first.json()["id"]]
    assert await queued_jobs(redis) == queued  # nothing enqueued again
    assert await created_entries(client) == [first.json()["id"]]  # audited once
    other = await client.post(route, content=raw, headers={**headers, HEADER: "order-43"})  # a new key: a new job
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


async def test_the_same_key_with_another_request_is_a_422_naming_the_header(
    client: httpx.AsyncClient, redis: ArqRedis, data_dir: Path
) -> None:
    rows(data_dir / "seed.jsonl", 50)
    curate = {"recipe": "curate", "source": {"path": "seed.jsonl"}}
    first = await client.post("/v1/jobs", json=curate, headers={HEADER: "k1"})
    assert first.status_code == 201, first.text
    for route, body in [("/v1/jobs", {**curate, "chunk_size": 7}), ("/v1/curate", curate)]:  # body, route
        refused = await client.post(route, json=body, headers={HEADER: "k1"})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["header", HEADER] and "another request" in error["msg"]
    assert await job_ids(redis) == [first.json()["id"]]


async def test_keys_are_per_team(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    await teams.create_team(redis, TeamCreate(name="other"))
    other_key = (await teams.create_key(redis, "other", Role.MEMBER, "other member", "cli")).key
    await client.post("/v1/skill-sets", json=STARTER, headers=keyed.auth(other_key))
    ours = await client.post("/v1/jobs", json=INSTRUCT, headers={HEADER: "same"})
    theirs = await client.post("/v1/jobs", json=INSTRUCT, headers={HEADER: "same", **keyed.auth(other_key)})
    assert ours.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert ours.json()["team"] == keyed.TEAM and theirs.json()["team"] == "other"
    assert sorted(await job_ids(redis)) == sorted([ours.json()["id"], theirs.json()["id"]])


async def test_a_failed_first_request_frees_the_key(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    spec = {**INSTRUCT, "skill_set": "later@1"}
    failed = await client.post("/v1/jobs", json=spec, headers={HEADER: "retry-me"})
    assert failed.status_code == 422 and "unknown skill set" in failed.text
    # released, not kept pending (the note of the job it meant to create stays: none was, so a retry creates it)
    assert [k for k in await redis.keys(keys.idempotency("*", "*")) if not k.endswith(b":job")] == []
    (await client.post("/v1/skill-sets", json={**STARTER, "name": "later"})).raise_for_status()
    retried = await client.post("/v1/jobs", json=spec, headers={HEADER: "retry-me"})
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    replayed = await client.post("/v1/jobs", json=spec, headers={HEADER: "retry-me"})
    assert replayed.json()["id"] == retried.json()["id"] and replayed.headers["idempotent-replayed"] == "true"
    shirk = {"recipe": "shirk", "source_job": "nope", "kind": "junk"}  # shirk goes through the same path
    for _ in range(2):  # each a 422 of its own: the failure is not replayed
        refused = await client.post("/v1/jobs", json=shirk, headers={HEADER: "shirk-1"})
        assert refused.status_code == 422 and "unknown job" in refused.text
    assert await job_ids(redis) == [retried.json()["id"]]


@pytest.mark.parametrize("value", [b"", b"x" * 256, b"caf\xe9", b"tab\there"])
async def test_a_bad_header_is_a_422_naming_it(client: httpx.AsyncClient, redis: ArqRedis, value: bytes) -> None:
    response = await client.post("/v1/jobs", json=INSTRUCT, headers={HEADER.encode(): value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", HEADER]
    assert await job_ids(redis) == []


async def test_raced_requests_create_one_job(client: httpx.AsyncClient, redis: ArqRedis, data_dir: Path) -> None:
    """Six identical submits at once, while the first is still surveying a 40,000-row dataset: one job."""
    rows(data_dir / "big.jsonl", 40_000)
    body = {"recipe": "curate", "source": {"path": "big.jsonl"}}
    answers = await asyncio.gather(*(client.post("/v1/jobs", json=body, headers={HEADER: "race"}) for _ in range(6)))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 5
    job_id = answers[0].json()["id"]
    assert await job_ids(redis) == [job_id]
    assert set(await queued_jobs(redis)) == {job_id}
    assert await created_entries(client) == [job_id]


async def test_a_repeat_waits_for_the_first_and_gives_up_with_a_409(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    """A first request still running is planted (its pending claim, as ``store.idempotency`` writes it)."""
    raw = json.dumps(INSTRUCT).encode()
    fingerprint = digest(f"POST /v1/jobs\n{digest(raw)}".encode())
    headers = {HEADER: "slow", "content-type": "application/json"}
    claim = await idempotency.claim(redis, keyed.TEAM, "slow", fingerprint)
    assert isinstance(claim, idempotency.Claim)

    waited = await client.post("/v1/jobs", content=raw, headers=headers)  # never finishes: 409 after WAIT_S
    assert waited.status_code == 409 and waited.headers["retry-after"] == "1"
    assert "still being processed" in waited.json()["detail"] and waited.elapsed.total_seconds() >= WAIT_S

    async def finish_later() -> None:
        await asyncio.sleep(0.5)
        await idempotency.finish(redis, claim, 201, '{"id": "planted"}')

    answered, _ = await asyncio.gather(client.post("/v1/jobs", content=raw, headers=headers), finish_later())
    assert answered.status_code == 201 and answered.json() == {"id": "planted"}
    assert answered.headers["idempotent-replayed"] == "true"

    lost = await idempotency.claim(redis, keyed.TEAM, "crashed", fingerprint)  # its API process died
    assert isinstance(lost, idempotency.Claim)
    await redis.pexpire(lost.key, 500)  # (the lease running out)
    taken = await client.post("/v1/jobs", content=raw, headers={**headers, HEADER: "crashed"})
    assert taken.status_code == 201 and "idempotent-replayed" not in taken.headers
    assert await job_ids(redis) == [taken.json()["id"]]


async def test_a_job_created_by_a_process_that_died_before_answering_is_not_created_again(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    """The worst moment: the first request stored and enqueued its job, then its API process was killed before
    keeping the response. Its lease runs out; the client's retry must get that job, not pay for a second."""
    raw = json.dumps(INSTRUCT).encode()
    fingerprint = digest(f"POST /v1/jobs\n{digest(raw)}".encode())
    created = await client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert created.status_code == 201
    job_id = created.json()["id"]
    dead = await idempotency.claim(redis, keyed.TEAM, "died", fingerprint, job_id)  # as the dead request left it
    assert isinstance(dead, idempotency.Claim) and dead.previous is None
    await redis.pexpire(dead.key, 200)  # its lease runs out
    await asyncio.sleep(0.3)
    headers = {HEADER: "died", "content-type": "application/json"}
    retried = await client.post("/v1/jobs", content=raw, headers=headers)
    assert retried.status_code == 201 and retried.headers["idempotent-replayed"] == "true", retried.text
    assert retried.json()["id"] == job_id and await job_ids(redis) == [job_id]  # one job, one enqueue
    again = await client.post("/v1/jobs", content=raw, headers=headers)  # and from now on, the kept answer
    assert again.json()["id"] == job_id and again.headers["idempotent-replayed"] == "true"
    other = await client.post("/v1/jobs", json={**INSTRUCT, "count": 3}, headers={HEADER: "died"})
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", HEADER]
    assert await job_ids(redis) == [job_id]


@pytest.mark.parametrize(
    ("route", "spec"),
    [
        ("/v1/curate", {"recipe": "curate"}),
        ("/v1/skill-sets/extract", {"recipe": "extract-from-dataset", "skill_set_name": "mine"}),
    ],
)
async def test_a_replayed_upload_is_deleted(
    client: httpx.AsyncClient, redis: ArqRedis, data_dir: Path, route: str, spec: dict[str, Any]
) -> None:
    """Two sends of one upload differ in their random multipart boundary, yet are the same request."""
    shutil.rmtree(data_dir / "uploads", ignore_errors=True)  # (earlier tests' jobs are flushed from Redis)
    seed = rows(data_dir / "upload.jsonl", 30).read_bytes()

    def form(content: bytes) -> dict[str, Any]:
        return {"file": ("seed.jsonl", content), "spec": (None, json.dumps(spec))}

    first = await client.post(route, files=form(seed), headers={HEADER: "upload-1"})
    assert first.status_code == 201, first.text
    again = await client.post(route, files=form(seed), headers={HEADER: "upload-1"})
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    changed = await client.post(route, files=form(seed + seed[:80]), headers={HEADER: "upload-1"})
    assert changed.status_code == 422 and changed.json()["detail"][0]["loc"] == ["header", HEADER]
    assert await job_ids(redis) == [first.json()["id"]]
    assert [p.name for p in (data_dir / "uploads").iterdir()] == [first.json()["id"]]  # the others' deleted

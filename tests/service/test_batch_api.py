"""Provider batch mode at the API: a batch job on an endpoint that does not serve batches is a 422 naming the
endpoint and the field, on every route that creates a job; a batch job's status shows its batches."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from schemas.batches import BatchProgress, BatchRecord
from schemas.jobs import JobCounters, JobState, JobStatus
from schemas.settings import EndpointSettings, Settings
from service.progress import describe
from service.recipes import RouteContext
from store import endpoints, keys
from store.batches import Group, now_ms, progress
from store.endpoints import NoBatch
from tests import keyed
from tests.conftest import REDIS_URL, module_api, service_env

ONLINE = {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}
BATCH = {**ONLINE, "batch": True}
ENDPOINTS = {"fake": ONLINE, "bulk": BATCH}  # "fake" (online only) is the server default
PROMPTS = {"recipe": "prompts", "prompts": ["Say one.", "Say two."]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("data")
    with module_api(tmp_path_factory, service_env(ENDPOINTS, SKILLMIX_DATA_DIR=str(data))) as url:
        yield url, data


@pytest.fixture
def api(served: tuple[str, Path], redis: ArqRedis) -> str:
    return served[0]


def _refusal(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return ".".join(map(str, error["loc"])), error["msg"]


def _no_job(api: str) -> None:
    assert keyed.get(f"{api}/v1/jobs").json()["count"] == 0


@pytest.mark.parametrize(
    ("spec", "field", "endpoint"),
    [
        ({**PROMPTS}, "body.endpoint", "fake"),  # the server default
        ({**PROMPTS, "endpoint": "fake"}, "body.endpoint", "fake"),
        ({**PROMPTS, "endpoint": "bulk", "quality": {"judge": {"endpoint": "fake"}}}, "body.quality.judge.endpoint",
         "fake"),
        (
            {"recipe": "eval-math", "questions": [{"id": "q1", "problem": "1+1?", "answer": "2"}], "endpoint": "bulk",
             "judge_endpoint": "fake"},
            "body.judge_endpoint",
            "fake",
        ),
    ],
)  # fmt: skip
def test_a_batch_job_on_an_online_endpoint_is_422_naming_it(
    api: str, spec: dict[str, Any], field: str, endpoint: str
) -> None:
    loc, msg = _refusal(keyed.post(f"{api}/v1/jobs", json={**spec, "mode": "batch"}))
    assert loc == field and f"endpoint {endpoint!r}" in msg and "batch: true" in msg, (loc, msg)
    _no_job(api)
    online = keyed.post(f"{api}/v1/jobs", json=spec)  # the same spec online is fine
    assert online.status_code == 201, online.text


def test_curate_and_extract_refuse_a_batch_job_on_an_online_endpoint(served: tuple[str, Path], api: str) -> None:
    data = served[1]
    rows = [{"instruction": f"Name the number {i}.", "output": f"It is {i}."} for i in range(3)]
    (data / "seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curate = {"recipe": "curate", "source": {"path": "seed.jsonl"}, "quality": {"judge": {}}, "mode": "batch"}
    loc, msg = _refusal(keyed.post(f"{api}/v1/curate", json=curate))
    assert loc == "body.quality.judge.endpoint" and "endpoint 'fake'" in msg, (loc, msg)
    extract = {"recipe": "extract-agnostic", "skill_set_name": "mined", "mode": "batch"}
    loc, msg = _refusal(keyed.post(f"{api}/v1/skill-sets/extract", json=extract))
    assert loc == "body.endpoint" and "endpoint 'fake'" in msg, (loc, msg)
    _no_job(api)
    judged = {**curate, "quality": {"judge": {"endpoint": "bulk"}}}
    assert keyed.post(f"{api}/v1/curate", json=judged).status_code == 201
    extracted = keyed.post(f"{api}/v1/skill-sets/extract", json={**extract, "endpoint": "bulk"})
    assert extracted.status_code == 201, extracted.text


async def test_an_endpoint_registered_at_run_time_is_checked_too(api: str, redis: ArqRedis) -> None:
    await endpoints.register(redis, "local", EndpointSettings.model_validate(ONLINE))
    await endpoints.register(redis, "hosted", EndpointSettings.model_validate(BATCH))
    loc, msg = _refusal(keyed.post(f"{api}/v1/jobs", json={**PROMPTS, "endpoint": "local", "mode": "batch"}))
    assert loc == "body.endpoint" and "endpoint 'local'" in msg
    accepted = keyed.post(f"{api}/v1/jobs", json={**PROMPTS, "endpoint": "hosted", "mode": "batch"})
    assert accepted.status_code == 201, accepted.text


async def test_a_batch_job_shows_its_batches_and_an_online_job_none(api: str, redis: ArqRedis) -> None:
    online = keyed.post(f"{api}/v1/jobs", json=PROMPTS).json()
    assert online["mode"] == "online" and online["batch"] is None
    assert keyed.get(f"{api}/v1/jobs/{online['id']}").json()["batch"] is None
    created = keyed.post(f"{api}/v1/jobs", json={**PROMPTS, "endpoint": "bulk", "mode": "batch"})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert created.json()["mode"] == "batch"
    assert created.json()["batch"] == {
        "open_batches": 0, "lines_waiting": 0, "lines_gathering": 0, "lines_submitted": 0, "rounds": 0,
        "batches_done": 0, "oldest_open_s": None,
    }  # fmt: skip

    # what the workers write: one file open at the provider for 60 s, two lines in it, one gathering
    group = Group(job_id, "bulk")
    record = BatchRecord(id="b1", job_id=job_id, endpoint="bulk", status="in_progress", lines=2,
                         created_ms=now_ms() - 60_000)  # fmt: skip
    await redis.set(keys.batch("b1"), record.model_dump_json())
    await redis.sadd(keys.job_batches(job_id), "b1")
    await redis.hset(group.lines, mapping={"0/a": "b1", "1/a": "b1", "2/a": "o"})
    await redis.rpush(group.open, '{"custom_id": "2/a"}')
    await redis.hset(keys.counters(job_id), mapping={"batch_lines": 5, "batch_rounds": 2, "batches_done": 1})

    status = keyed.get(f"{api}/v1/jobs/{job_id}").json()
    batch = status["batch"]
    assert status["mode"] == "batch" and batch["open_batches"] == 1 and batch["lines_waiting"] == 3
    assert batch["lines_gathering"] == 1 and batch["lines_submitted"] == 5 and batch["rounds"] == 2
    assert batch["batches_done"] == 1 and 59 <= batch["oldest_open_s"] < 120
    listed = {j["id"]: j for j in keyed.get(f"{api}/v1/jobs").json()["data"]}
    assert listed[job_id]["batch"] == batch | {"oldest_open_s": listed[job_id]["batch"]["oldest_open_s"]}
    assert listed[online["id"]]["batch"] is None


async def test_progress_adds_up_every_endpoint_of_the_job(redis: ArqRedis) -> None:
    """A judge on another endpoint: its lines count too; another job's never do."""
    for job, ep, cids in (("j", "gen", ["0/a", "1/a"]), ("j", "judge", ["0/j"]), ("other", "gen", ["0/a"])):
        await redis.hset(Group(job, ep).lines, mapping=dict.fromkeys(cids, "o"))
        await redis.rpush(Group(job, ep).open, *(json.dumps({"custom_id": c}) for c in cids))
    found = await progress(redis, "j", ["gen", "judge"])
    assert found.lines_waiting == 3 and found.lines_gathering == 3 and found.open_batches == 0
    assert found.oldest_open_s is None
    assert (await progress(redis, "j", ["gen"])).lines_waiting == 2


def _status(calls: int, **batch: Any) -> JobStatus:
    return JobStatus(
        id="abcdef0123", recipe="prompts", state=JobState.RUNNING, count=10, endpoint="bulk",
        created_at=datetime.now(UTC), counters=JobCounters(llm_calls=calls), mode="batch" if batch else "online",
        batch=BatchProgress(**batch) if batch else None,
    )  # fmt: skip


def test_the_progress_bar_says_waiting_on_batch_while_nothing_moves() -> None:
    waiting = {"open_batches": 2, "lines_waiting": 340, "rounds": 3, "oldest_open_s": 600.0}
    text = describe(_status(100, **waiting), _status(100, **waiting))
    assert text == "job abcdef01 running: waiting on batch (2 open, 340 lines waiting, round 3, oldest open 10m)"
    assert "waiting on batch" in describe(_status(0, **waiting), None)  # first poll: nothing to compare with
    assert describe(_status(150, **waiting), _status(100, **waiting)) == "job abcdef01 running"  # answers came in
    assert describe(_status(100, open_batches=0), _status(100, open_batches=0)) == "job abcdef01 running"
    assert describe(_status(100), _status(100)) == "job abcdef01 running"  # an online job


async def test_a_recipe_checking_its_own_endpoints_at_submit_gets_the_mode(redis: ArqRedis) -> None:
    """``SubmitContext.endpoint`` (a plug-in recipe's extra endpoint) refuses an online one for a batch job."""
    settings = Settings(
        redis_url=REDIS_URL, endpoints={k: EndpointSettings.model_validate(v) for k, v in ENDPOINTS.items()}
    )
    await RouteContext(redis, settings, keyed.TEAM, "batch").endpoint("bulk", "checker")
    await RouteContext(redis, settings, keyed.TEAM).endpoint("fake", "checker")
    with pytest.raises(NoBatch) as refused:
        await RouteContext(redis, settings, keyed.TEAM, "batch").endpoint("fake", "checker")
    assert refused.value.field == "checker" and "'fake'" in str(refused.value)

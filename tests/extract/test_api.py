"""Extraction through the API: bad input is a 422 naming the problem; a real worker runs an uploaded
2,000-row dataset end to end, and a generation job then runs on the extracted set; the CLI follows a job."""

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from schemas.settings import Settings
from service.app import create_app
from store import keys
from tests import keyed
from tests.conftest import REDIS_URL, REPO, Processes, service_env
from tests.extract.helpers import coarse_of, write_jsonl
from tests.plugins.fake_llm import FakeLLM, FakeLLMFactory
from tests.test_end_to_end import examples, finished, submit, wait_for

ENDPOINTS = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}}


@asynccontextmanager
async def in_process(redis: ArqRedis, data_dir: Path, **extra: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process on the test's Redis (no worker: these tests only submit)."""
    settings = Settings(redis_url=REDIS_URL, data_dir=data_dir, endpoints=ENDPOINTS, default_endpoint="fake", **extra)
    app = create_app(settings)
    app.state.settings, app.state.redis = settings, redis
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=keyed.auth()
    ) as c:
        yield c


@pytest.fixture
async def client(redis: ArqRedis, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(redis, tmp_path) as c:
        yield c


def left_behind(data_dir: Path) -> list[Path]:
    """Everything under the uploads area (a refused upload must leave nothing, not even its directory)."""
    return sorted((data_dir / "uploads").rglob("*"))


def errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    tags = {"body", "extract-agnostic", "extract-from-dataset"}
    return {".".join(str(p) for p in e["loc"] if p not in tags): e["msg"] for e in response.json()["detail"]}


def dataset(path: str = "seed.jsonl", **extra: Any) -> dict[str, Any]:
    return {"recipe": "extract-from-dataset", "skill_set_name": "s", "source": {"path": path}} | extra


async def test_bad_input_is_a_422_naming_the_problem(client: httpx.AsyncClient, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "seed.jsonl", 20)
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a"}\n{"instruction": \n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "outside.jsonl").symlink_to(tmp_path.parent / "nowhere.jsonl")
    cases: list[tuple[dict[str, Any], str, str]] = [
        (dataset("broken.jsonl"), "source.format", "line 2 is not valid JSON"),
        (
            dataset(source={"path": "seed.jsonl", "text_column": "question"}),
            "source.text_column",
            "no column 'question'",
        ),
        (dataset("empty.jsonl"), "source.path", "is empty"),
        (dataset(max_rows=10), "max_rows", "more than max_rows=10"),
        (dataset(rows=50), "rows", "rows=50 but the dataset has only 20"),
        (dataset("missing.jsonl"), "source.path", "no file 'missing.jsonl'"),
        (dataset("../seed.jsonl"), "source.path", "relative to the data dir"),
        (dataset("outside.jsonl"), "source.path", "outside the data dir"),
        (dataset("seed.csv"), "source", "cannot tell the format"),
        (dataset(endpoint="nope"), "endpoint", "unknown endpoint 'nope'"),
        (dataset(colour="red"), "colour", "Extra inputs are not permitted"),
        ({"recipe": "extract-agnostic", "skill_set_name": "Bad Name"}, "skill_set_name", "should match pattern"),
        ({"recipe": "extract-agnostic", "skill_set_name": "s", "num_topics": 0}, "num_topics", "greater than or equal"),
    ]
    for body, field, message in cases:
        found = errors(await client.post("/v1/skill-sets/extract", json=body))
        assert field in found and message in found[field], (body, found)

    seed = (tmp_path / "seed.jsonl").read_bytes()
    base = {"recipe": "extract-from-dataset", "skill_set_name": "s"}
    spec = json.dumps(base)
    both = json.dumps(dataset())
    uploads: list[tuple[dict[str, tuple[str | None, bytes | str]], str, str]] = [
        ({"spec": (None, spec)}, "file", "needs the seed dataset"),
        ({"file": ("x.jsonl", seed)}, "spec", "needs the job spec"),
        ({"file": ("x.jsonl", seed), "spec": (None, both)}, "source.path", "not both"),
        ({"file": ("x.jsonl", b"not json\n"), "spec": (None, spec)}, "source.format", "line 1 is not valid JSON"),
        ({"file": ("x.jsonl", b""), "spec": (None, spec)}, "source.path", "is empty"),
        ({"file": ("x.txt", seed), "spec": (None, spec)}, "source", "cannot tell the format"),
        ({"file": ("x.jsonl", seed), "spec": (None, "{")}, "spec", "not valid JSON"),
        (
            {"file": ("x.jsonl", seed), "spec": (None, json.dumps(base | {"source": {"text_column": "question"}}))},
            "source.text_column",
            "no column 'question'",
        ),
        ({"file": ("x.jsonl", seed), "spec": (None, json.dumps(base | {"rows": 50}))}, "rows", "only 20"),
        ({"file": ("x.jsonl", seed), "spec": (None, json.dumps(base | {"endpoint": "nope"}))}, "endpoint", "nope"),
        ({"file": ("x.parquet", seed), "spec": (None, spec)}, "source.format", "not a Parquet file"),
    ]
    for files, field, message in uploads:
        found = errors(await client.post("/v1/skill-sets/extract", files=files))
        assert field in found and message in found[field], (files, found)
        assert left_behind(tmp_path) == [], files  # saved, found bad, deleted
    assert (await client.get("/v1/jobs")).json()["count"] == 0


def multipart_body(spec: dict[str, Any], chunks: int, chunk: bytes, sent: list[int]) -> tuple[str, Any]:
    """A multipart upload streamed chunk by chunk without a content-length; ``sent`` counts the chunks read."""
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\ncontent-disposition: form-data; name="spec"\r\n\r\n{json.dumps(spec)}\r\n'
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        ).encode()
        for _ in range(chunks):
            sent[0] += 1
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", body()


async def test_an_oversize_upload_is_refused_and_leaves_nothing(redis: ArqRedis, tmp_path: Path) -> None:
    row = json.dumps({"instruction": "Summarise this ticket about a refund request.", "output": "ok"}).encode()
    chunk = (row + b"\n") * 800  # ~60 KB
    spec = {"recipe": "extract-from-dataset", "skill_set_name": "big"}
    async with in_process(redis, tmp_path, max_upload_mb=0.5) as client:
        # with a content-length: refused before the body is read
        files: dict[str, tuple[str | None, bytes | str]] = {
            "file": ("big.jsonl", chunk * 10),
            "spec": (None, json.dumps(spec)),
        }
        response = await client.post("/v1/skill-sets/extract", files=files)
        assert response.status_code == 413, response.text
        [error] = response.json()["detail"]
        assert (
            error["loc"] == ["body", "file"] and "0.5 MB" in error["msg"] and "SKILLMIX_MAX_UPLOAD_MB" in error["msg"]
        )
        assert left_behind(tmp_path) == []

        # streamed without one: refused as soon as the cap is passed, the rest never read
        sent = [0]
        content_type, body = multipart_body(spec, 1000, chunk, sent)
        response = await client.post("/v1/skill-sets/extract", content=body, headers={"content-type": content_type})
        assert response.status_code == 413, response.text
        assert "0.5 MB" in response.text
        assert sent[0] <= 10, sent  # 0.5 MiB is 9 chunks: it stopped there, not at 1,000
        assert left_behind(tmp_path) == []
        assert (await client.get("/v1/jobs")).json()["count"] == 0

        # under the cap, streamed the same way: accepted, and kept in the job's own directory
        sent = [0]
        content_type, body = multipart_body(spec, 3, chunk, sent)
        response = await client.post("/v1/skill-sets/extract", content=body, headers={"content-type": content_type})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert left_behind(tmp_path) == [tmp_path / "uploads" / job_id, tmp_path / "uploads" / job_id / "seed.jsonl"]
        assert response.json()["count"] == 3 * 800


async def test_an_upload_is_private_to_its_job(client: httpx.AsyncClient, tmp_path: Path) -> None:
    seed = write_jsonl(tmp_path / "seed.jsonl", 20)
    spec = json.dumps({"recipe": "extract-from-dataset", "skill_set_name": "mine"})
    response = await client.post(
        "/v1/skill-sets/extract", files={"file": ("a.jsonl", seed.read_bytes()), "spec": (None, spec)}
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    uploaded = tmp_path / "uploads" / job_id / "seed.jsonl"
    assert uploaded.read_bytes() == seed.read_bytes()

    (tmp_path / "link.jsonl").symlink_to(uploaded)  # a way in through a symlink in the data dir
    (tmp_path / "alias").symlink_to(tmp_path / "uploads")
    for path in (
        f"uploads/{job_id}/seed.jsonl",  # what `skillmix extract dataset --server-path` would send
        f"./uploads/{job_id}/seed.jsonl",
        f"uploads//{job_id}/seed.jsonl",
        f"Uploads/{job_id}/seed.jsonl",
        "link.jsonl",
        f"alias/{job_id}/seed.jsonl",
        "uploads/nothing-yet.jsonl",
    ):
        found = errors(await client.post("/v1/skill-sets/extract", json=dataset(path)))
        assert "uploads area" in found.get("source.path", ""), (path, found)
    assert (await client.get("/v1/jobs")).json()["count"] == 1
    assert uploaded.read_bytes() == seed.read_bytes()  # the refusals did not touch the owner's upload
    ok = await client.post("/v1/skill-sets/extract", json=dataset("seed.jsonl"))
    assert ok.status_code == 201, ok.text


async def test_submit_resolves_the_dataset_and_queues_a_step(
    client: httpx.AsyncClient, redis: ArqRedis, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "seed.jsonl", 20)
    response = await client.post(
        "/v1/skill-sets/extract",
        files={
            "file": ("mine.jsonl", (tmp_path / "seed.jsonl").read_bytes()),
            "spec": (None, json.dumps({"recipe": "extract-from-dataset", "skill_set_name": "s", "rows": 15})),
        },
    )
    assert response.status_code == 201, response.text
    status = response.json()
    assert (status["recipe"], status["state"], status["count"], status["counters"]["planned"]) == (
        "extract-from-dataset", "queued", 15, 15
    )  # fmt: skip
    job = (await client.get(f"/v1/jobs/{status['id']}")).json()
    assert job["id"] == status["id"] and job["result"] is None
    uploaded = tmp_path / "uploads" / status["id"] / "seed.jsonl"
    assert uploaded.read_bytes() == (tmp_path / "seed.jsonl").read_bytes()
    queued = await redis.zrange(keys.QUEUE_NAME, 0, -1)
    assert f"skillmix:phase:{status['id']}:0".encode() in queued
    assert (await client.get(f"/v1/skill-sets/extract/{status['id']}/unlabelled")).text == ""
    assert (await client.get("/v1/skill-sets/extract/nope/unlabelled")).status_code == 404


def stack(processes: Processes, fake: FakeLLM, data_dir: Path) -> str:
    env = service_env({"fake": fake.endpoint_settings()}, SKILLMIX_DATA_DIR=str(data_dir))
    api = processes.api(env)
    processes.worker(env)
    return api


def test_uploaded_dataset_to_a_generation_job(
    processes: Processes, redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    fake = fake_llm(extract_offlist_rate=0.2, extract_garbage_rate=0.05)
    api = stack(processes, fake, tmp_path / "data")
    seed = write_jsonl(tmp_path / "seed.jsonl", 2000)
    spec = {"recipe": "extract-from-dataset", "skill_set_name": "tickets", "max_skills": 20}
    with seed.open("rb") as fh:
        response = keyed.post(
            f"{api}/v1/skill-sets/extract", files={"file": ("tickets.jsonl", fh), "spec": (None, json.dumps(spec))}
        )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    status = wait_for(api, job_id, finished, timeout=60)
    assert status["state"] == "completed", status
    c = status["counters"]
    assert c["accepted"] + c["rejected"] == 2000 and c["accepted"] > 1800 and c["rejected"] > 0
    unlabelled = [
        json.loads(line) for line in keyed.get(f"{api}/v1/skill-sets/extract/{job_id}/unlabelled").text.splitlines()
    ]
    assert len(unlabelled) == c["rejected"] and len({u["row"] for u in unlabelled}) == c["rejected"]
    assert sum(c["rejected_by_reason"].values()) == c["rejected"]

    assert status["result"] == "tickets@1"
    latest = keyed.get(f"{api}/v1/skill-sets/tickets").json()
    assert latest == keyed.get(f"{api}/v1/skill-sets/tickets/1").json()
    assert sum(s["frequency"] for s in latest["skills"]) == c["accepted"]
    assert {s["name"] for s in latest["skills"]} <= {coarse_of(i) for i in range(2000)}
    assert all(1 <= len(s["examples"]) <= 5 for s in latest["skills"])

    gen = submit(api, recipe="instruct", skill_set="tickets@1", count=10, refine=False, seed=3)
    done = wait_for(api, gen, finished, timeout=60)
    assert done["state"] == "completed" and done["counters"]["accepted"] == 10, done
    names = {s["name"] for s in latest["skills"]}
    assert all(set(e["skills"]) <= names and len(e["skills"]) == 2 for e in examples(api, gen))


def test_cli_follows_an_agnostic_extraction(
    processes: Processes, redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    api = stack(processes, fake_llm(), tmp_path / "data")
    out = tmp_path / "set.json"
    argv = ["extract", "agnostic", "--name", "cli-set", "--topics", "3", "--skills-per-topic", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *argv, "--domain", "sql", "-o", str(out), "--api", api],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cli-set@1" in done.stdout and "accepted" in done.stdout
    written = json.loads(out.read_text())
    assert written["name"] == "cli-set" and written["version"] == 1 and len(written["skills"]) == 1 + 3 * 2

    seed = write_jsonl(tmp_path / "local" / "rows.jsonl", 300)  # uploaded from the client's disk
    argv = ["extract", "dataset", str(seed), "--name", "cli-data", "--max-skills", "20", "--api", api]
    done = subprocess.run([sys.executable, "-m", "service.cli", *argv], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cli-data@1" in done.stdout and "300/300" in done.stdout  # the progress bar: mapped of rows
    bad = subprocess.run(
        [sys.executable, "-m", "service.cli", *argv[:3], "--name", "x", "--rows", "999", "--api", api],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid rows" in bad.stdout and "only 300" in bad.stdout

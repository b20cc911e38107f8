"""The fake endpoint's Files + Batch API (tests/fake_batch.py), driven over real HTTP like a provider."""

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fake_batch import body_key
from tests.plugins.fake_llm import FakeLLM, FakeLLMFactory

TIMEOUT_S = 5.0
POLL_S = 0.02
TERMINAL = {"failed", "completed", "expired", "cancelled"}
BATCH_FIELDS = {
    "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status", "output_file_id",
    "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at", "request_counts", "metadata",
}  # fmt: skip
SCHEMA = {"type": "object", "properties": {"instruction": {"type": "string"}, "response": {"type": "string"}}}


def body(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], "max_tokens": 1000} | fields


def request_line(custom_id: str, payload: Any, url: str = "/v1/chat/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": payload}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


class Api:
    """A client on one fake: one connection pool (an ``httpx.get`` per call costs ~50 ms of TLS setup)."""

    def __init__(self, fake: FakeLLM) -> None:
        self.fake = fake
        self.http = httpx.Client(base_url=fake.base_url, timeout=TIMEOUT_S)

    def upload(self, content: bytes, purpose: str = "batch") -> dict[str, Any]:
        files = {"file": ("input.jsonl", content, "application/jsonl")}
        response = self.http.post("/files", data={"purpose": purpose}, files=files)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def create(self, file_id: str, **fields: Any) -> httpx.Response:
        spec = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"} | fields
        return self.http.post("/batches", json=spec)

    def submit(self, lines: list[Any]) -> dict[str, Any]:
        response = self.create(self.upload(jsonl(lines))["id"])
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def cancel(self, batch_id: str) -> httpx.Response:
        return self.http.post(f"/batches/{batch_id}/cancel")

    def wait(self, batch_id: str, until: set[str] = TERMINAL, seen: list[str] | None = None) -> dict[str, Any]:
        """Poll the batch until its status is in ``until``; ``seen`` collects the statuses passed through."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch: dict[str, Any] = self.get(f"/batches/{batch_id}").json()
            if seen is not None and (not seen or seen[-1] != batch["status"]):
                seen.append(batch["status"])
            if batch["status"] in until:
                return batch
            time.sleep(POLL_S)
        raise AssertionError(f"batch {batch_id} never reached {until}")

    def download(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        response = self.get(f"/files/{file_id}/content")
        assert response.status_code == 200
        return [orjson.loads(line) for line in response.content.splitlines()]


@pytest.fixture
def batch_api(fake_llm: FakeLLMFactory) -> Iterator[Callable[..., Api]]:
    """``batch_api(**FakeConfig fields)``: a running fake and a client on it."""
    made: list[Api] = []

    def start(**config: Any) -> Api:
        made.append(Api(fake_llm(**config)))
        return made[-1]

    yield start
    for api in made:
        api.http.close()


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {r["custom_id"]: r for r in records}
    assert len(found) == len(records), "a custom_id answered twice"
    return found


def test_batch_answers_every_line_once_like_the_online_endpoint(batch_api: Callable[..., Api]) -> None:
    api = batch_api(batch_latency_s=0.4)
    payloads = {f"req-{i}": body(f"question {i}") for i in range(30)}
    payloads["pair"] = body("## Instruction\nwrite one", seed=7)
    payloads["schema"] = body("give json", response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}})
    uploaded = api.upload(jsonl([request_line(k, v) for k, v in payloads.items()]))
    assert uploaded["object"] == "file" and uploaded["purpose"] == "batch" and uploaded["bytes"] > 0
    assert api.get(f"/files/{uploaded['id']}").json() == uploaded

    created = api.create(uploaded["id"], metadata={"job": "j1"}).json()
    assert set(created) == BATCH_FIELDS and created["object"] == "batch" and created["status"] == "validating"
    assert created["metadata"] == {"job": "j1"} and created["expires_at"] - created["created_at"] == 86400
    seen: list[str] = []
    done = api.wait(created["id"], seen=seen)
    order = ["validating", "in_progress", "finalizing", "completed"]
    assert done["status"] == "completed" and seen == [s for s in order if s in seen]
    assert created["created_at"] <= done["in_progress_at"] <= done["finalizing_at"] <= done["completed_at"]
    assert done["request_counts"] == {"total": 32, "completed": 32, "failed": 0}
    assert done["error_file_id"] is None and done["errors"] is None
    assert api.get(f"/files/{done['output_file_id']}").json()["purpose"] == "batch_output"

    output = api.download(done["output_file_id"])
    answered = by_id(output)
    assert set(answered) == set(payloads)
    assert [r["custom_id"] for r in output] != list(payloads), "output order should not follow the input"
    for custom_id, payload in payloads.items():
        record = answered[custom_id]
        assert record["error"] is None and record["response"]["status_code"] == 200 and record["response"]["request_id"]
        online = api.http.post("/chat/completions", json=payload).json()
        line = record["response"]["body"]
        assert line["choices"] == online["choices"] and line["usage"] == online["usage"]

    stats = api.fake.stats()
    assert stats["batches_created"] == 1 and stats["files_uploaded"] == 1
    assert stats["batch_lines_billed"] == 32 and stats["batch_rebilled"] == 0
    assert stats["batch_prompt_tokens"] == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in output)
    assert stats["batch_completion_tokens"] == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in output)
    assert stats["ok"] == 32, "the online answers are counted apart from the batch's"
    listed = api.get("/batches?limit=5").json()
    assert listed["object"] == "list" and [b["id"] for b in listed["data"]] == [created["id"]]


def test_a_bad_input_file_fails_validation_with_line_errors(batch_api: Callable[..., Api]) -> None:
    api = batch_api(batch_latency_s=0.1)
    lines = [
        orjson.dumps(request_line("ok", body("fine"))),
        b"{not json",
        orjson.dumps({"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"}),
        orjson.dumps(request_line("ok", body("again"))),
        orjson.dumps(request_line("url", body("x"), url="/v1/embeddings")),
        orjson.dumps({**request_line("get", body("x")), "method": "GET"}),
        orjson.dumps(request_line("model", body("x", model="other-model"))),
    ]
    file_id = api.upload(b"\n".join(lines) + b"\n")["id"]
    batch = api.wait(api.create(file_id).json()["id"])
    assert batch["status"] == "failed" and batch["failed_at"] is not None and batch["output_file_id"] is None
    errors = [(e["code"], e["line"], e["param"]) for e in batch["errors"]["data"]]
    assert errors == [
        ("invalid_json_line", 2, None),
        ("missing_required_parameter", 3, "body"),
        ("duplicate_custom_id", 4, "custom_id"),
        ("invalid_url", 5, "url"),
        ("invalid_method", 6, "method"),
        ("mismatched_model", 7, "model"),
    ]
    assert all(e["message"] for e in batch["errors"]["data"])

    good = api.upload(jsonl([request_line(f"r{i}", body(f"q{i}")) for i in range(3)]))["id"]
    api.fake.configure(batch_max_requests=2)
    assert api.wait(api.create(good).json()["id"])["errors"]["data"][0]["code"] == "too_many_requests"
    api.fake.configure(batch_max_requests=50_000, batch_max_mb=0.0001)
    assert api.wait(api.create(good).json()["id"])["errors"]["data"][0]["code"] == "file_too_large"
    api.fake.configure(batch_max_mb=200, batch_reject_next=1)  # a transient refusal, then the same file goes through
    assert api.wait(api.create(good).json()["id"])["errors"]["data"][0]["code"] == "token_limit_exceeded"
    assert api.wait(api.create(good).json()["id"])["status"] == "completed"
    assert api.fake.stats()["batch_lines_billed"] == 3


def test_injected_line_faults_land_in_the_error_file(batch_api: Callable[..., Api]) -> None:
    forced = {"a": "server_error", "b": "rate_limit_exceeded", "c": "invalid_request"}
    config = {"batch_latency_s": 0.1, "batch_fail_lines": forced, "batch_error_rate": 0.25, "batch_seed": 3}
    api, twin = batch_api(**config), batch_api(**config)
    lines = [request_line(k, body(f"forced {k}")) for k in forced]
    lines.append(request_line("d", {"model": "fake-model", "messages": []}))  # what the online route 400s
    lines += [request_line(f"r{i}", body(f"q{i}")) for i in range(40)]
    batch = api.wait(api.submit(lines)["id"])
    assert batch["status"] == "completed"
    errors, output = by_id(api.download(batch["error_file_id"])), api.download(batch["output_file_id"])
    assert set(errors) | {r["custom_id"] for r in output} == {line["custom_id"] for line in lines}
    assert batch["request_counts"] == {"total": 44, "completed": len(output), "failed": len(errors)}
    status = {k: (r["response"]["status_code"], r["response"]["body"]["error"]["code"]) for k, r in errors.items()}
    assert status["a"] == (500, "server_error") and status["b"] == (429, "rate_limit_exceeded")
    assert status["c"] == (400, "invalid_request") and status["d"] == (400, "invalid_request_error")
    assert all(r["error"] is None for r in errors.values())
    drawn = sorted(set(errors) - set("abcd"))
    assert 3 <= len(drawn) <= 20 and {status[k][0] for k in drawn} == {500, 429}
    assert api.fake.stats()["batch_lines_billed"] == len(output)

    twin_batch = twin.wait(twin.submit(lines)["id"])  # same seed, same files
    assert [r["custom_id"] for r in twin.download(twin_batch["output_file_id"])] == [r["custom_id"] for r in output]

    api.fake.configure(batch_fail_lines={})
    retried = api.wait(api.submit([line for line in lines if line["custom_id"] in [*drawn, "d"]])["id"])
    again = by_id(api.download(retried["error_file_id"]))
    assert "d" in again, "a request the endpoint rejects fails every time"
    assert len(set(drawn) - set(again)) >= len(drawn) // 2, "retryable faults are drawn anew in each batch"


def test_an_expired_batch_keeps_its_finished_lines(batch_api: Callable[..., Api]) -> None:
    api = batch_api(batch_latency_s=0.2, batch_expire_next=1, batch_done_fraction=0.3)
    lines = [request_line(f"r{i}", body(f"q{i}")) for i in range(10)]
    batch = api.wait(api.submit(lines)["id"])
    assert batch["status"] == "expired" and batch["expired_at"] is not None and batch["completed_at"] is None
    assert batch["request_counts"] == {"total": 10, "completed": 3, "failed": 7}
    output, errors = api.download(batch["output_file_id"]), api.download(batch["error_file_id"])
    assert len(output) == 3 and all(r["response"]["status_code"] == 200 for r in output)
    assert len(errors) == 7 and all(r["response"] is None and r["error"]["code"] == "batch_expired" for r in errors)
    assert {r["custom_id"] for r in output + errors} == {line["custom_id"] for line in lines}
    stats = api.fake.stats()
    assert stats["batch_lines_billed"] == 3 and stats["batch_statuses"] == {"expired": 1}
    assert api.wait(api.submit(lines)["id"])["status"] == "completed", "only the next batch expires"


def test_cancel_keeps_finished_lines_and_bills_them(batch_api: Callable[..., Api]) -> None:
    api = batch_api(batch_latency_s=3, batch_cancel_s=0.2)
    lines = [request_line(f"r{i}", body(f"q{i}")) for i in range(10)]
    batch_id = api.submit(lines)["id"]
    api.wait(batch_id, until={"in_progress"})
    cancelling = api.cancel(batch_id).json()
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    batch = api.wait(batch_id)
    assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
    assert batch["request_counts"] == {"total": 10, "completed": 5, "failed": 5}
    output, errors = api.download(batch["output_file_id"]), api.download(batch["error_file_id"])
    assert len(output) == 5 and all(r["error"]["code"] == "batch_cancelled" for r in errors)
    assert api.fake.stats()["batch_lines_billed"] == 5
    again = api.cancel(batch_id)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    api.fake.configure(batch_latency_s=0)
    finished = api.submit(lines)
    assert finished["status"] == "completed"
    late = api.cancel(finished["id"])
    assert late.status_code == 409 and late.json()["error"]["type"] == "invalid_request_error"


def test_a_resubmitted_line_is_billed_again_and_the_counter_shows_it(batch_api: Callable[..., Api]) -> None:
    api = batch_api(batch_latency_s=0)
    x, y, z = body("x"), body("y"), body("z")
    first = api.submit([request_line("x", x), request_line("y", y)])
    second = api.submit([request_line("x-again", x), request_line("z", z)])
    assert first["status"] == second["status"] == "completed"
    stats = api.fake.stats()
    assert stats["batch_billed_by_body"] == {body_key(x): 2, body_key(y): 1, body_key(z): 1}
    assert stats["batch_lines_billed"] == 4 and stats["batch_rebilled"] == 1 and stats["batches_created"] == 2
    usage = [r["response"]["body"]["usage"] for b in (first, second) for r in api.download(b["output_file_id"])]
    assert stats["batch_prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert stats["batch_completion_tokens"] == sum(u["completion_tokens"] for u in usage)
    assert api.fake.reset()["batch_lines_billed"] == 0


def test_unknown_deleted_and_expired_ids_are_openai_404s(batch_api: Callable[..., Api]) -> None:
    api = batch_api(batch_file_ttl_s=0.5)
    for method, path in [
        ("GET", "/files/file-nope"),
        ("GET", "/files/file-nope/content"),
        ("DELETE", "/files/file-nope"),
        ("GET", "/batches/batch_nope"),
        ("POST", "/batches/batch_nope/cancel"),
    ]:
        response = api.http.request(method, path)
        assert response.status_code == 404, path
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "nope" in error["message"] and "param" in error
    assert api.create("file-nope").status_code == 404

    file_id = api.upload(jsonl([request_line("r", body("q"))]))["id"]
    deleted = api.http.delete(f"/files/{file_id}").json()
    assert deleted == {"id": file_id, "object": "file", "deleted": True}
    assert api.get(f"/files/{file_id}").status_code == 404
    kept = api.upload(b"{}\n")["id"]
    assert api.get(f"/files/{kept}").status_code == 200
    time.sleep(0.6)
    assert api.get(f"/files/{kept}").status_code == 404 and api.create(kept).status_code == 404

    wrong = api.upload(b"{}\n", purpose="user_data")["id"]
    assert api.create(wrong).status_code == 400
    assert api.create(wrong, endpoint="/v1/embeddings").json()["error"]["param"] == "endpoint"
    assert api.create(wrong, completion_window="1h").json()["error"]["param"] == "completion_window"
    api.fake.configure(require_key="secret")
    assert api.get("/batches").status_code == 401

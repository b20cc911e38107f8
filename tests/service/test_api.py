"""The HTTP API over a real socket: validation errors name the field, unknown ids are 404s."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from tests import keyed
from tests.conftest import module_api, service_env
from tests.test_end_to_end import STARTER

ENDPOINTS = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model", "rpm": 600}}


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API process for the module (start-up costs seconds); each test still gets a flushed Redis."""
    with module_api(tmp_path_factory, service_env(ENDPOINTS)) as url:
        yield url


@pytest.fixture
def api(api_process: str, redis: ArqRedis) -> str:
    return api_process


def _errors(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in response.json()["detail"]]


def test_skill_sets_are_versioned_and_immutable(api: str) -> None:
    first = keyed.post(f"{api}/v1/skill-sets", json=STARTER)
    assert first.status_code == 201 and first.json()["version"] == 1
    changed = {**STARTER, "skills": STARTER["skills"][:5]}
    second = keyed.post(f"{api}/v1/skill-sets", json=changed)
    assert second.json()["version"] == 2
    assert len(keyed.get(f"{api}/v1/skill-sets/starter/1").json()["skills"]) == 40
    assert len(keyed.get(f"{api}/v1/skill-sets/starter").json()["skills"]) == 5
    assert keyed.get(f"{api}/v1/skill-sets").json()["count"] == 1
    assert keyed.get(f"{api}/v1/skill-sets/starter/3").status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"recipe": "instruct", "skill_set": "starter@1", "count": -1}, "count", "greater than"),
        ({"recipe": "instruct", "skill_set": "nope@1", "count": 5}, "skill_set", "unknown skill set"),
        (
            {"recipe": "instruct", "skill_set": "starter@1", "count": 5, "endpoint": "gpt9"},
            "endpoint",
            "unknown endpoint",
        ),
        (
            {"recipe": "instruct", "skill_set": "starter@1", "count": 5, "params": {"temperature": 5}},
            "temperature",
            "less than or equal",
        ),
        ({"recipe": "instruct", "skill_set": "starter@1", "count": 5, "colour": "red"}, "colour", "Extra"),
        ({"recipe": "instruct", "count": 5}, "skill_set", "Field required"),
        ({"recipe": "extract-agnostic", "skill_set_name": "x"}, "recipe", "does not match any of the expected"),
    ],
)
def test_bad_job_specs_are_422_naming_the_field(api: str, body: dict[str, object], field: str, words: str) -> None:
    keyed.post(f"{api}/v1/skill-sets", json=STARTER).raise_for_status()
    errors = _errors(keyed.post(f"{api}/v1/jobs", json=body))
    assert any((field in loc or field in msg) and words in msg for loc, msg in errors), errors
    assert keyed.get(f"{api}/v1/jobs").json()["count"] == 0  # nothing stored


def test_k_larger_than_the_skill_set_is_422(api: str) -> None:
    small = {**STARTER, "name": "tiny", "skills": STARTER["skills"][:2]}
    keyed.post(f"{api}/v1/skill-sets", json=small).raise_for_status()
    errors = _errors(keyed.post(f"{api}/v1/jobs", json={"recipe": "instruct", "skill_set": "tiny", "count": 3, "k": 3}))
    assert errors == [("body.k", "k=3 but skill set tiny@1 has only 2 skills")]


@pytest.mark.parametrize(
    ("bad", "index"),
    [
        ("", 3),
        ("  \n\t ", 1),
        ([], 2),
        ([{"role": "system", "content": ""}, {"role": "user", "content": "   "}], 0),
    ],
    ids=["empty", "whitespace", "no-messages", "blank-messages"],
)
def test_an_empty_prompt_is_422_naming_its_index(api: str, bad: object, index: int) -> None:
    """An empty prompt used to pass validation and then fail its whole chunk in the worker."""
    prompts: list[object] = ["Name a colour.", [{"role": "user", "content": "Say hi."}], "Count to 3.", "Why?"]
    prompts[index] = bad
    errors = _errors(keyed.post(f"{api}/v1/jobs", json={"recipe": "prompts", "prompts": prompts}))
    assert any("prompts" in loc and f"prompts[{index}] is empty" in msg for loc, msg in errors), errors
    assert keyed.get(f"{api}/v1/jobs").json()["count"] == 0  # nothing stored
    prompts[index] = [{"role": "system", "content": ""}, {"role": "user", "content": "Fine now."}]
    response = keyed.post(f"{api}/v1/jobs", json={"recipe": "prompts", "prompts": prompts})
    assert response.status_code == 201, response.text
    assert response.json()["count"] == 4


def test_unknown_ids_are_404(api: str) -> None:
    for path in ("/v1/jobs/abc", "/v1/jobs/abc/examples", "/v1/jobs/abc/export", "/v1/skill-sets/none"):
        assert keyed.get(api + path).status_code == 404, path
    assert keyed.post(f"{api}/v1/jobs/abc/cancel").status_code == 404
    assert keyed.get(f"{api}/v1/jobs/abc/export", params={"format": "csv"}).status_code == 404  # the id first
    keyed.post(f"{api}/v1/skill-sets", json=STARTER).raise_for_status()
    job = keyed.post(f"{api}/v1/jobs", json={"recipe": "instruct", "skill_set": "starter", "count": 5}).json()
    assert keyed.get(f"{api}/v1/jobs/{job['id']}/export", params={"format": "csv"}).status_code == 422


def test_submit_stores_queues_and_reports(api: str) -> None:
    keyed.post(f"{api}/v1/skill-sets", json=STARTER).raise_for_status()
    response = keyed.post(f"{api}/v1/jobs", json={"recipe": "instruct", "skill_set": "starter", "count": 70})
    assert response.status_code == 201
    job = response.json()
    assert job["state"] == "queued" and job["skill_set"] == "starter@1" and job["endpoint"] == "fake"
    assert job["counters"]["planned"] == 70
    assert keyed.get(f"{api}/v1/jobs/{job['id']}").json()["id"] == job["id"]
    assert [j["id"] for j in keyed.get(f"{api}/v1/jobs").json()["data"]] == [job["id"]]
    cancelled = keyed.post(f"{api}/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"


NOT_UTF8 = {"content": b"\xb5\xba", "headers": {"content-type": "application/json"}}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "detail"),
    [
        ("GET", "/v1/jobs", {"params": {"offset": 10**24}}, 422, "offset"),  # past Redis's 64-bit ranges
        ("POST", "/v1/jobs", NOT_UTF8, 422, "json_invalid"),  # FastAPI's 400, made the documented 422
        ("POST", "/v1/skill-sets/extract", NOT_UTF8, 422, "Invalid JSON"),
        ("POST", "/v1/skill-sets", {"content": b"{no", "headers": {"content-type": "application/json"}}, 422, "JSON"),
    ],
    ids=["huge-offset", "jobs-not-utf8", "extract-not-utf8", "skill-set-not-json"],
)
def test_garbage_requests_get_a_clear_4xx_not_a_500(
    api: str, method: str, path: str, kwargs: dict[str, Any], status: int, detail: str
) -> None:
    """Inputs schemathesis found to crash the API with a 500."""
    response = keyed.request(method, api + path, **kwargs)
    assert response.status_code == status, response.text
    assert detail in response.text
    assert keyed.get(f"{api}/v1/jobs").json()["count"] == 0  # nothing stored

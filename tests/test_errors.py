"""One error root: every exception class of ours is a SkillmixError, the API answers each branch in one handler,
and the CLI prints any of them as `error: <message>` instead of a traceback."""

import importlib
import inspect
import pkgutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from typer.testing import CliRunner

from schemas.errors import BadInput, Conflict, JobFailed, NotFound, SkillmixError, TooLarge, Transient
from schemas.settings import Settings
from service.app import create_app
from service.cli import app as cli_app
from store.review import NoItem
from tests import keyed
from tests.conftest import REDIS_URL
from workers.llm.errors import LLMFatal

PACKAGES = ("schemas", "store", "workers", "service")


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined at the top level of any module of our packages."""
    found: list[type[BaseException]] = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            module = importlib.import_module(info.name)
            found += [
                c
                for c in vars(module).values()
                if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == module.__name__
            ]
    return found


def test_one_class_derives_from_exception_and_every_other_from_it() -> None:
    classes = _exception_classes()
    assert len(classes) > 30  # the walk found the modules (a broken walk would pass the checks below)
    assert [c for c in classes if Exception in c.__bases__ or BaseException in c.__bases__] == [SkillmixError]
    assert [c.__qualname__ for c in classes if not issubclass(c, SkillmixError)] == []


async def _raise(exc: SkillmixError) -> None:
    raise exc


ERRORS: dict[str, SkillmixError] = {
    "bad": BadInput("k=3 but the set has 2 skills", "k"),
    "cursor": BadInput("not a review cursor", "cursor", where="query"),
    "big": TooLarge("the upload is too large", "file"),
    "missing": NotFound("job 'abc' not found"),
    "no-item": NoItem("i1"),
    "conflict": Conflict("job j is completed"),
    "away": Transient("the job store (Redis) is not answering"),
    "failed": JobFailed("the job cannot go on"),
    "llm": LLMFatal(401, "bad key"),
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The real app (its handlers as configured) with one extra route that raises the error named."""
    app = create_app(Settings(redis_url=REDIS_URL))

    @app.get("/raise/{name}")
    async def raising(name: str) -> None:
        await _raise(ERRORS[name])

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=keyed.auth()
    ) as c:
        yield c


VALUE = "value_error"  # FastAPI's type for a validator's ValueError: one kind of 422 for clients


@pytest.mark.parametrize(
    ("name", "status", "body"),
    [
        ("bad", 422, {"detail": [{"loc": ["body", "k"], "msg": "k=3 but the set has 2 skills", "type": VALUE}]}),
        ("cursor", 422, {"detail": [{"loc": ["query", "cursor"], "msg": "not a review cursor", "type": VALUE}]}),
        ("big", 413, {"detail": [{"loc": ["body", "file"], "msg": "the upload is too large", "type": "too_large"}]}),
        ("missing", 404, {"detail": "job 'abc' not found", "code": "not_found"}),
        ("no-item", 404, {"detail": "review item 'i1' not found", "code": "not_found"}),
        ("conflict", 409, {"detail": "job j is completed", "code": "conflict"}),
        ("away", 503, {"detail": "the job store (Redis) is not answering", "code": "unavailable"}),
        ("failed", 500, {"detail": "the job cannot go on", "code": "job_failed"}),
        ("llm", 502, {"detail": "HTTP 401: bad key", "code": "llm_error"}),
    ],
)
async def test_each_branch_has_its_status_and_body(
    client: httpx.AsyncClient, name: str, status: int, body: dict[str, object]
) -> None:
    response = await client.get(f"/raise/{name}")
    assert (response.status_code, response.json()) == (status, body)
    assert response.headers.get("retry-after") == ("2" if name == "away" else None)


async def test_an_unknown_endpoint_is_a_422_where_it_was_named_and_a_404_in_the_path(
    redis: ArqRedis, tmp_path: Path
) -> None:
    """No route translates UnknownEndpoint: the field it names comes with it."""
    fake = {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}
    settings = Settings(redis_url=REDIS_URL, data_dir=tmp_path, endpoints={"fake": fake}, default_endpoint="fake")
    app = create_app(settings)
    app.state.settings, app.state.redis = settings, redis
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=keyed.auth()
    ) as c:
        spec: dict[str, object] = {"recipe": "instruct", "skill_set": "starter", "count": 5}
        cases: list[tuple[dict[str, object], str]] = [
            ({"endpoint": "gpt9"}, "endpoint"),
            ({"quality": {"judge": {"endpoint": "gpt9"}}}, "quality.judge.endpoint"),
        ]
        for extra, loc in cases:
            response = await c.post("/v1/jobs", json=spec | extra)
            assert response.status_code == 422, response.text
            [error] = response.json()["detail"]
            assert error["loc"] == ["body", loc] and "unknown endpoint 'gpt9'" in error["msg"], error
        missing = await c.get("/v1/endpoints/gpt9")
        assert missing.status_code == 404 and missing.json()["detail"] == "endpoint 'gpt9' not found"


def test_the_cli_prints_our_errors_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["local-llm", "--model", str(tmp_path / "none.gguf")])
    assert result.exit_code == 2, result.output
    assert "error: the model" in result.output and "not a file" in result.output
    assert "Traceback" not in result.output and result.exception is not None  # SystemExit(2), not the error

"""Model-only extraction is honest about what a weak model gives back (issue 8 item 7).

The fake endpoint (``tests.fake_llm``) always answers well-formed extraction questions, so the answers a
weak model really gives (``[topic1]``, skills copied from the prompt's own examples, too few skills) come
from a tiny OpenAI-compatible server scripted per test: a Starlette app on uvicorn that answers
``/v1/chat/completions`` with canned JSON for each extraction task (named by the request's JSON schema).
"""

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from arq.connections import ArqRedis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from schemas.settings import EndpointSettings, Settings
from service.ports import free_port
from store.skill_sets import versions
from tests import keyed
from tests.conftest import REPO, Processes, service_env
from tests.extract.helpers import run_job
from tests.plugins.fake_llm import FakeLLMFactory
from tests.test_end_to_end import finished, wait_for
from workers.extract.agnostic import DEFAULT_QUERY_TYPES, drop_reason

Answer = Callable[[dict[str, Any]], dict[str, Any]]
TOPICS = ["Billing Disputes", "Account Recovery", "Shipping Delays"]
GOOD_QUERY_TYPES = {
    "query_types": [
        {"name": "complaint", "definition": "A customer reports a problem.", "examples": ["My order is late."]},
        {"name": "how_to", "definition": "Asks how to do something.", "examples": ["How do I reset it?"]},
    ]
}


class Scripted:
    """An OpenAI-compatible chat endpoint whose extraction answers are given per task by the test."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.port = free_port()
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def endpoint(self) -> EndpointSettings:
        return EndpointSettings(
            base_url=self.base_url, model="scripted", rpm=1_000_000, tpm=1_000_000_000, timeout_s=10.0,
            json_schema=True, max_concurrency=8,
        )  # fmt: skip

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        task = body["response_format"]["json_schema"]["name"].removeprefix("extract_")
        self.asked.append(task)
        lines = body["messages"][-1]["content"].splitlines()
        payload = json.loads(lines[lines.index("<input>") + 1])
        content = orjson.dumps(self.answers[task](payload)).decode()
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.asked)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "scripted",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )

    async def models(self, _: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def __enter__(self) -> "Scripted":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "scripted endpoint did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    started: list[Scripted] = []

    def start(**answers: Answer) -> Scripted:
        server = Scripted(answers).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


def settings_for(data_dir: Path, server: Scripted) -> Settings:
    return Settings(data_dir=data_dir, endpoints={"fake": server.endpoint()}, default_endpoint="fake")


def body(**extra: Any) -> dict[str, Any]:
    spec = {
        "recipe": "extract-agnostic",
        "skill_set_name": "support",
        "num_topics": 3,
        "skills_per_topic": 4,
        "num_query_types": 2,
        "domain": "customer support",
    }
    return spec | extra


def topics(_: dict[str, Any]) -> dict[str, Any]:
    return {"topics": TOPICS}


def skills(*names: str) -> Answer:
    """Every topic gets these names, with ``{t}`` replaced by a word of the topic's title."""

    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        word = payload["topic"].split()[0].lower()
        return {"skills": [{"name": n.format(t=word), "description": f"About {n}."} for n in names]}

    return answer


def query_types(_: dict[str, Any]) -> dict[str, Any]:
    return GOOD_QUERY_TYPES


def test_placeholder_and_copied_names_are_recognised() -> None:
    for name in ["[topic1]", "topic_1", "Topic 2", "topic3", "<skill>", "skill_name", "example_skill", "...",
                 "<snake_case>", "snake_case", "{name}", "Skill A", "one sentence"]:  # fmt: skip
        assert drop_reason(name, "skill") == "placeholder", name
    # the skills prompt shows persuasive_writing and statistical_reasoning; the label prompt shows the others
    for name in ["persuasive_writing", "Statistical Reasoning", "sql_join_debugging", "solving_linear_equations"]:
        assert drop_reason(name, "skill") == "copied", name
    for name in ["refund_negotiation", "Billing Skill 0", "Customer Support Area 1", "de_escalation"]:
        assert drop_reason(name, "skill") is None, name
    # the query-types prompt *suggests* these kinds: a model naming them has not copied anything
    assert drop_reason("information seeking", "query_type") is None
    assert drop_reason("<snake_case>", "query_type") == "placeholder"


async def test_the_bundled_models_placeholder_topics_fail_the_job(
    redis: ArqRedis, scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    """What a new user saw: topics named [topic1] .. [topic3] must not become a saved set."""
    server = scripted(topics=lambda _: {"topics": ["[topic1]", "[topic2]", "[topic3]"]})
    status, found = await run_job(redis, settings_for(tmp_path, server), body())
    assert status.state == "failed" and found is None and await versions(redis, keyed.TEAM, "support") == []
    assert status.message.startswith("the model gave no usable topics (asked for 3)"), status.message
    assert "dropped 9 topic names as placeholders: '[topic1]', '[topic2]', '[topic3]'" in status.message
    assert server.asked == ["topics"] * 3  # asked again for the missing topics, then gave up


async def test_skills_copied_from_the_prompt_fail_the_job(
    redis: ArqRedis, scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    """The rest of what the user saw: 2 skills, both the prompt's own examples."""
    server = scripted(
        topics=topics, skills=skills("persuasive_writing", "statistical_reasoning"), query_types=query_types
    )
    status, found = await run_job(redis, settings_for(tmp_path, server), body())
    assert status.state == "failed" and found is None and await versions(redis, keyed.TEAM, "support") == []
    assert (
        "asked for 12 skills over 3 topics, got 0 usable (dropped: 0 placeholders, 6 copied from the prompt's examples)"
        in status.message
    ), status.message
    assert (
        "dropped 6 skill names copied from the prompt's own examples: 'persuasive_writing', 'statistical_reasoning'"
        in (status.message)
    )


MIXED = skills("{t}_triage", "<skill>", "skill_name", "example_skill", "...", "persuasive_writing")


async def test_a_set_far_short_fails_unless_allowed(
    redis: ArqRedis, scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    server = scripted(topics=topics, skills=MIXED, query_types=lambda _: {"query_types": []})
    settings = settings_for(tmp_path, server)
    summary = "asked for 12 skills over 3 topics, got 3 usable (dropped: 12 placeholders, 3 copied from the prompt's"
    status, found = await run_job(redis, settings, body())
    assert status.state == "failed" and found is None and await versions(redis, keyed.TEAM, "support") == []
    assert status.message.startswith(summary), status.message
    assert "dropped 12 skill names as placeholders: '<skill>', 'skill_name', 'example_skill', '...'" in status.message
    assert "set allow_shortfall" in status.message

    status, found = await run_job(redis, settings, body(allow_shortfall=True))
    assert status.state == "completed" and found is not None and found.ref == status.result == "support@1"
    assert [s.name for s in found.skills] == ["billing_triage", "account_triage", "shipping_triage"]
    assert summary in status.message and "dropped 3 skill names copied" in status.message
    # no query types came back: the defaults are used, and the message says so
    assert found.query_types == DEFAULT_QUERY_TYPES
    assert "the 5 default query types were used instead of the 2 asked for" in status.message


async def test_a_small_shortfall_is_saved_and_reported(
    redis: ArqRedis, scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    server = scripted(
        topics=topics, skills=skills("{t}_triage", "{t}_escalation", "{t}_follow_up", "[skill4]"),
        query_types=lambda _: {"query_types": [{"name": "<snake_case>", "definition": "", "examples": []},
                                               *GOOD_QUERY_TYPES["query_types"]]},
    )  # fmt: skip
    status, found = await run_job(redis, settings_for(tmp_path, server), body())
    assert status.state == "completed" and found is not None, status.message
    assert len(found.skills) == 9 and [q.name for q in found.query_types] == ["complaint", "how_to"]
    assert "asked for 12 skills over 3 topics, got 9 usable (dropped: 3 placeholders, 0 copied" in status.message
    assert "dropped 3 skill names as placeholders: '[skill4]'" in status.message
    assert "dropped 1 query type name as a placeholder: '<snake_case>'" in status.message
    assert "default query types" not in status.message


async def test_a_full_set_from_the_fake_still_says_what_came_back(
    redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    from tests.extract.helpers import settings_for as fake_settings

    status, found = await run_job(redis, fake_settings(tmp_path, await fake_llm.astart()), body())
    assert status.state == "completed" and found is not None
    assert "asked for 12 skills over 3 topics, got 13 usable (dropped: 0 placeholders, 0 copied" in status.message
    assert "dropped" not in status.message.split("usable (dropped")[1].split(")", 1)[1]


def test_cli_allow_shortfall(
    processes: Processes, redis: ArqRedis, scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    """`skillmix extract agnostic --allow-shortfall` through a real API and worker."""
    server = scripted(topics=topics, skills=MIXED, query_types=query_types)
    env = service_env({"fake": server.endpoint()}, SKILLMIX_DATA_DIR=str(tmp_path), COLUMNS="1000")
    api = processes.api(env)
    processes.worker(env)
    argv = [sys.executable, "-m", "service.cli", "extract", "agnostic", "--name", "support", "--topics", "3",
            "--skills-per-topic", "4", "--query-types", "2", "--domain", "customer support", "--api", api]  # fmt: skip
    refused = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "asked for 12 skills over 3 topics, got 3 usable" in refused.stdout and "support@" not in refused.stdout
    allowed = subprocess.run(
        [*argv, "--allow-shortfall"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "support@1" in allowed.stdout and "asked for 12 skills over 3 topics, got 3 usable" in allowed.stdout
    job_id = allowed.stdout.split("submitted extraction job ")[1].split()[0]
    assert wait_for(api, job_id, finished, timeout=10)["result"] == "support@1"

"""The fake endpoint itself: deterministic answers, both pair formats, planted faults, its rate limit."""

import re
from typing import Any

import httpx
import orjson

from tests.fake_llm import CANNED, REFUSAL, VOCAB, FakeConfig, answer
from tests.plugins.fake_llm import FakeLLM, FakeLLMFactory

PAIR = re.compile(r"\A## Instruction\n(?P<instruction>.+)\n\n## Response\n(?P<response>.+)\Z", re.S)
SCHEMA = {
    "type": "object",
    "properties": {
        "instruction": {"type": "string"},
        "response": {"type": "string"},
        "skills": {"type": "array", "items": {"type": "string"}},
        "difficulty": {"type": "integer"},
        "safe": {"type": "boolean"},
    },
    "required": ["instruction", "response", "skills", "difficulty", "safe"],
}


def chat(fake: FakeLLM, content: str, **fields: Any) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], "max_tokens": 1000}
    return httpx.post(f"{fake.base_url}/chat/completions", json=body | fields, timeout=5)


def pair_request(content: str, **config: Any) -> tuple[str, str]:
    request = {"messages": [{"role": "user", "content": content}]}
    return answer(request, request["messages"], FakeConfig(**config))


def is_completion(response: httpx.Response) -> bool:
    try:
        return bool(orjson.loads(response.content)["choices"][0]["message"]["content"])
    except (ValueError, KeyError):
        return False


def words(text: str) -> set[str]:
    return set(text.lower().split())


def jaccard(a: str, b: str) -> float:
    return len(words(a) & words(b)) / len(words(a) | words(b))


def test_vocabulary_is_large_and_instructions_differ() -> None:
    assert len(set(VOCAB)) >= 2000
    first = PAIR.match(pair_request("## Instruction one")[0])
    second = PAIR.match(pair_request("## Instruction two")[0])
    assert first and second
    assert 30 <= len(first["instruction"].split()) <= 50 and 200 <= len(first["response"].split()) <= 300
    assert jaccard(first["instruction"], second["instruction"]) < 0.3


def test_planted_faults_follow_their_rates() -> None:
    dup = PAIR.match(pair_request("## Instruction a", exact_dup_rate=1.0)[0])
    assert dup and (dup["instruction"], dup["response"]) in CANNED
    near = PAIR.match(pair_request("## Instruction b", near_dup_rate=1.0)[0])
    assert near and max(jaccard(near["instruction"], c[0]) for c in CANNED) > 0.8
    refusal = PAIR.match(pair_request("## Instruction c", refusal_rate=1.0)[0])
    assert refusal and refusal["response"] == REFUSAL
    shirk = PAIR.match(pair_request("## Instruction d", shirker_rate=1.0)[0])
    assert shirk and (len(shirk["response"].split()) < 15 or shirk["response"].endswith(shirk["instruction"]))
    assert pair_request("## Instruction e", cutoff_rate=1.0)[1] == "cutoff"
    assert pair_request("plain prose", refusal_rate=1.0) == (pair_request("plain prose")[0], "")
    faults = [pair_request(f"## Instruction {i}", exact_dup_rate=0.2)[1] for i in range(500)]
    assert 60 <= faults.count("exact_dup") <= 140


def test_same_request_same_answer_and_both_pair_formats(fake_llm: FakeLLMFactory) -> None:
    fake = fake_llm()
    first, again = (
        chat(fake, "## Instruction\nwrite", seed=3).json(),
        chat(fake, "## Instruction\nwrite", seed=3).json(),
    )
    other = chat(fake, "## Instruction\nwrite", seed=4).json()
    assert first["choices"] == again["choices"] and first["usage"] == again["usage"] and first["id"] == again["id"]
    assert first["choices"] != other["choices"]
    content = first["choices"][0]["message"]["content"]
    assert PAIR.match(content) and first["choices"][0]["finish_reason"] == "stop"
    assert first["usage"]["completion_tokens"] == len(content.split()) and first["usage"]["prompt_tokens"] == 3

    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}
    data = orjson.loads(
        chat(fake, "anything", response_format=response_format).json()["choices"][0]["message"]["content"]
    )
    assert set(data) == set(SCHEMA["properties"])
    assert len(data["instruction"].split()) >= 30 and len(data["response"].split()) >= 200
    assert all(isinstance(s, str) for s in data["skills"]) and data["difficulty"] == 0 and data["safe"] is True

    prose = chat(fake, "Critique the answer above.").json()["choices"][0]["message"]["content"]
    assert len(prose.split()) == 80 and "## Instruction" not in prose
    cut = chat(fake, "## Instruction\nwrite", max_tokens=10).json()["choices"][0]
    assert len(cut["message"]["content"].split()) == 10 and cut["finish_reason"] == "length"


def test_rate_limit_answers_429_with_retry_after(fake_llm: FakeLLMFactory) -> None:
    fake = fake_llm(rpm=60)  # bucket of 1, one more per second
    assert chat(fake, "hi").status_code == 200
    limited = chat(fake, "hi")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["retry-after"] == "1" and 0 < int(limited.headers["retry-after-ms"]) <= 1000
    stats = fake.stats()
    assert (stats["requests"], stats["ok"], stats["rate_limited"], stats["max_rps_1s"]) == (2, 1, 1, 1)
    fake.configure(rpm=0, storm=2, storm_retry_after_s=2.5)
    assert [chat(fake, "hi").status_code for _ in range(3)] == [429, 429, 200]
    assert fake.reset()["requests"] == 0


def test_injected_faults_and_admin(fake_llm: FakeLLMFactory) -> None:
    fake = fake_llm(require_key="sekrit", model_strict="m1")
    assert chat(fake, "hi").status_code == 401
    auth = {"authorization": "Bearer sekrit"}
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    url = f"{fake.base_url}/chat/completions"
    assert httpx.post(url, json=body | {"model": "gpt"}, headers=auth).status_code == 404
    assert httpx.post(url, json=body | {"max_tokens": 0}, headers=auth).status_code == 400
    fake.configure(fail_next=1, fail_status=502, malformed_next=2)
    statuses = [httpx.post(url, json=body, headers=auth) for _ in range(4)]
    assert [r.status_code for r in statuses] == [502, 200, 200, 200]
    assert [is_completion(r) for r in statuses[1:]] == [False, False, True]
    stats = fake.stats()
    assert (stats["unauthorized"], stats["not_found"], stats["errors"], stats["malformed"]) == (1, 1, 1, 2)
    assert httpx.post(f"{fake.admin_url}/admin/config", json={"rpm": -1}).status_code == 422
    assert httpx.post(f"{fake.admin_url}/admin/config", json={"nope": 1}).status_code == 422
    assert httpx.get(f"{fake.base_url}/models").json()["data"][0]["id"] == "m1"
    assert httpx.get(f"{fake.admin_url}/health").json() == {"status": "ok"}


def test_scripted_judge_scores_every_skill_the_judge_asks_for_even_one_starting_with_a_digit() -> None:
    """The judge's own prompt and parser: a skill named ``3d_modeling`` (in the real data) gets its score."""
    from schemas.curation import JudgeSettings
    from schemas.examples import GeneratedItem
    from schemas.jobs import JobRecord, PromptsJobSpec
    from tests.fake_llm import response_sha
    from workers.curate.judge import Judge, parse_judgement

    output = "Export the mesh as STL at 0.1 mm, then slice it with 20% infill and a 0.2 mm layer height."
    skills = ["wound_management", "3d_modeling"]
    item = GeneratedItem(job_id="x", index=0, skills=skills, instruction="Print a splint.", output=output)
    spec = PromptsJobSpec.model_validate({"recipe": "prompts", "prompts": ["x"]})
    record = JobRecord(id="x", spec=spec, endpoint="judge", model="m", chunk_size=10, created_at=_now())
    judge = Judge(record, JudgeSettings(endpoint="judge", min_score=1), "judge", "m", True)
    messages = [{"role": m.role, "content": m.content} for m in judge.messages(item)]
    request = {"messages": messages, "response_format": {"type": "json_schema"}}
    config = FakeConfig(judge_script={response_sha(output): "good"})
    body, fault = answer(request, messages, config)
    scores, passed, _ = parse_judgement(body, skills)
    assert fault == "" and passed and "skill:3d_modeling" in scores, body
    assert min(scores.values()) >= 3  # a good label: 3-5 on every criterion


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)

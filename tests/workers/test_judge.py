"""The LLM judge (``quality.judge``): the grader itself against a scripted client, and whole jobs through the
real API and worker processes, real Redis and the fake endpoint (which answers judge prompts with JSON)."""

import time
from datetime import UTC, datetime
from typing import Any, Unpack

import orjson
import pytest
from arq.connections import ArqRedis

from schemas.curation import JudgeSettings, QualitySettings
from schemas.examples import GeneratedItem, JudgeVerdict, Reason
from schemas.jobs import JobCounters, JobRecord, JobState, JobStatus
from schemas.llm import ChatMessage, ChatResult, Usage
from service.quickstart import JUDGE_OFF, closing_notes
from tests import keyed
from tests.conftest import Processes, service_env
from tests.fake_llm import (
    JUDGE_PASS_REASON,
    JUDGE_REJECT_REASON,
    JUDGE_SHIRKER_REASON,
    FakeConfig,
    answer,
    is_planted_shirker,
)
from tests.test_end_to_end import STARTER, examples, finished, submit, wait_for
from workers.curate.judge import (
    ASKED,
    CRITERIA,
    UNPARSEABLE,
    Judge,
    JudgeAnswerInvalid,
    judge_schema,
    parse_judgement,
)
from workers.curate.quality import JudgeCheck, QualityFilter
from workers.llm.client import ChatOptions
from workers.llm.errors import LLMBadRequest

SKILLS = ["budgeting", "empathetic_communication"]
PER_SKILL = {f"skill:{s}": 5 for s in SKILLS}
GOOD = orjson.dumps(
    {"scores": dict.fromkeys(ASKED, 5), "skills": dict.fromkeys(SKILLS, 5), "verdict": "pass", "reason": "fine"}
).decode()


def all_fives(skills: list[str]) -> dict[str, int]:
    """A clean pass: every fixed criterion and every skill of the pair at 5."""
    return dict.fromkeys(CRITERIA, 5) | {f"skill:{s}": 5 for s in skills}


class Scripted:
    """A ChatClient answering from a list, recording what it was asked."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[ChatMessage], dict[str, Any]]] = []

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        self.calls.append((list(messages), dict(options)))
        nxt = self.answers.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return ChatResult(content=nxt, model="judge-m", usage=Usage(prompt_tokens=100, completion_tokens=20, calls=1))


def _record(judge: JudgeSettings | None = None) -> JobRecord:
    spec: dict[str, Any] = {"recipe": "instruct", "skill_set": "starter@1", "count": 5}
    if judge is not None:
        spec["quality"] = {"judge": judge.model_dump()}
    return JobRecord.model_validate(
        {"id": "j1", "spec": spec, "endpoint": "gen", "model": "m", "chunk_size": 8, "created_at": datetime.now(UTC)}
    )


def _item(**fields: Any) -> GeneratedItem:
    values: dict[str, Any] = {
        "job_id": "j1",
        "index": 3,
        "skills": ["budgeting", "empathetic_communication"],
        "query_type": "help seeking",
        "instruction": "My sister keeps borrowing $200 a month. How do I say no kindly?",
        "output": "Start by separating the money from the relationship. " * 10,
    }
    return GeneratedItem.model_validate(values | fields)


# --- the grader --------------------------------------------------------------------------------


def test_parse_judgement_is_lenient_but_not_credulous() -> None:
    scores, passed, reason = parse_judgement(f"Here you go:\n```json\n{GOOD}\n```\nThanks", SKILLS)
    assert scores == all_fives(SKILLS) and passed and reason == "fine"
    # criteria at the top level, a skill as skill:<name>, another by its bare name; uses_all_skills is their lowest
    top_level = {
        "Specific": "4/5",
        "skill:budgeting": 9,
        "Empathetic Communication": "2",
        **{c: 3.6 for c in ASKED[1:]},
    }
    scores, passed, _ = parse_judgement(orjson.dumps({**top_level, "verdict": "Reject."}).decode(), SKILLS)
    expected = {"specific": 4, "uses_all_skills": 2, **{c: 4 for c in ASKED[1:]}}
    assert scores == expected | {"skill:budgeting": 5, "skill:empathetic_communication": 2} and not passed
    assert parse_judgement(GOOD)[0] == dict.fromkeys(CRITERIA, 5)  # no skills asked: uses_all_skills 5
    no_skill = GOOD.replace('"empathetic_communication":5', '"other":5')
    for bad in ("no json here", '{"scores": {"specific": 5}, "verdict": "pass"}', GOOD.replace('"pass"', '"maybe"')):
        with pytest.raises(JudgeAnswerInvalid):
            parse_judgement(bad, SKILLS)
    with pytest.raises(JudgeAnswerInvalid, match="skill:empathetic_communication"):
        parse_judgement(no_skill, SKILLS)  # every required skill must be scored


async def test_judge_asks_with_the_rubric_and_a_schema_when_the_endpoint_has_one() -> None:
    judge = Judge(_record(JudgeSettings()), JudgeSettings(max_tokens=300), "strong", "big-model", json_schema=True)
    client = Scripted(GOOD)
    verdict = await judge.judge(_item(), client)
    assert verdict.verdict and verdict.scores == all_fives(SKILLS) and verdict.reason == "fine"
    assert (verdict.endpoint, verdict.model, verdict.template_version) == ("strong", "judge-m", "v2")
    assert verdict.usage.calls == 1 and verdict.usage.prompt_tokens == 100
    ((messages, options),) = client.calls
    prompt = messages[-1].content
    assert options["json_schema"] == judge_schema(SKILLS) and options["max_tokens"] == 300
    assert options["temperature"] == 0 and not verdict.opinions
    assert "You are grading" in prompt and "- budgeting" in prompt and "- empathetic_communication" in prompt
    assert "$200 a month" in prompt and "separating the money" in prompt
    for criterion in [*ASKED, *SKILLS]:
        assert f'"{criterion}": <1-5>' in prompt
    assert '"uses_all_skills"' not in prompt  # derived from the per-skill scores, not asked
    assert Judge(_record(), JudgeSettings(), "x").schema is None  # no JSON-schema support: plain text


async def test_unparseable_answer_is_retried_once_then_fails_the_item() -> None:
    judge = Judge(_record(), JudgeSettings(), "strong")
    client = Scripted("I think it is quite good!", GOOD)
    assert (await judge.judge(_item(), client)).verdict
    assert len(client.calls) == 2 and "not the JSON object" in client.calls[1][0][-1].content
    client = Scripted("hmm", "still no json", GOOD)
    verdict = await judge.judge(_item(), client)
    assert not verdict.verdict and verdict.reason == UNPARSEABLE and verdict.scores == {}
    assert len(client.calls) == 2 and verdict.usage.calls == 2


async def test_min_score_overrides_a_lenient_pass_and_a_refused_request_fails() -> None:
    lukewarm = orjson.dumps(
        {"scores": {**dict.fromkeys(ASKED, 4), "correct": 2}, "skills": dict.fromkeys(SKILLS, 4), "verdict": "pass"}
    )
    verdict = await Judge(_record(), JudgeSettings(min_score=3), "s").judge(_item(), Scripted(lukewarm.decode()))
    assert not verdict.verdict and "correct 2" in verdict.reason and verdict.scores["correct"] == 2
    verdict = await Judge(_record(), JudgeSettings(min_score=2), "s").judge(_item(), Scripted(lukewarm.decode()))
    assert verdict.verdict
    refused = await Judge(_record(), JudgeSettings(), "s").judge(_item(), Scripted(LLMBadRequest(400, "too long")))
    assert not refused.verdict and "refused" in refused.reason


def test_judge_check_runs_only_when_the_judge_is_configured() -> None:
    rejected = _item(judge=JudgeVerdict(verdict=False, reason="generic advice"))
    assert not any(isinstance(c, JudgeCheck) for c in QualityFilter(QualitySettings()).checks)
    assert QualityFilter(QualitySettings(checks=[])).verdict(rejected).accepted  # judge off: verdict ignored
    on = QualitySettings(checks=[], judge=JudgeSettings())
    verdict = QualityFilter(on).verdict(rejected)
    assert verdict.reasons == [Reason.JUDGE_REJECTED] and "generic advice" in verdict.detail
    assert QualityFilter(on).verdict(_item(judge=JudgeVerdict(verdict=True))).accepted
    assert QualityFilter(on).verdict(_item()).accepted  # not judged (e.g. failed before): nothing to reject
    placed = QualityFilter(QualitySettings(checks=["judge", "refusal"], judge=JudgeSettings()))
    assert [c.name for c in placed.checks][2:] == ["judge", "refusal"]
    assert not any(isinstance(c, JudgeCheck) for c in QualityFilter(on.model_copy(update={"enabled": False})).checks)


def test_fake_judges_deterministically_and_fails_its_own_shirkers() -> None:
    judge = Judge(_record(), JudgeSettings(), "fake")
    good, lazy = _item(), _item(output="Sure, here is a quick answer: it depends on the situation.")
    request = {"model": "m", "seed": 1}
    as_dicts = [m.model_dump() for m in judge.messages(good)]
    content, fault = answer(request, as_dicts, FakeConfig())
    assert parse_judgement(content)[1:] == (True, JUDGE_PASS_REASON) and fault == ""
    assert content.startswith("```json") and answer(request, as_dicts, FakeConfig()) == (content, fault)
    content, fault = answer(request, [m.model_dump() for m in judge.messages(lazy)], FakeConfig())
    assert parse_judgement(content)[1:] == (False, JUDGE_SHIRKER_REASON) and fault == "judge_shirker"
    content, fault = answer(request, as_dicts, FakeConfig(judge_reject_rate=1.0))
    assert parse_judgement(content)[1:] == (False, JUDGE_REJECT_REASON) and fault == "judge_reject"


def test_quick_start_says_the_judge_is_off_and_why_few_were_accepted() -> None:
    def status(accepted: int, reasons: dict[str, int]) -> JobStatus:
        counters = JobCounters(accepted=accepted, rejected_by_reason=reasons)
        return JobStatus(
            id="q", recipe="instruct", state=JobState.COMPLETED, count=10, endpoint="local",
            created_at=datetime.now(UTC), counters=counters,
        )  # fmt: skip

    assert closing_notes(status(10, {"too_short": 1}), 10) == [JUDGE_OFF]
    notes = "\n".join(closing_notes(status(4, {"too_short": 5, "refusal": 1, "vague": 2, "cut_off": 1}), 10))
    assert "LLM judge: off (the bundled 135M model cannot judge" in notes
    assert "top rejection reasons: too_short 5, vague 2, cut_off 1" in notes
    assert "SKILLMIX_LOCAL_MODEL=/path/model.gguf" in notes and "hosted endpoint" in notes


# --- whole jobs --------------------------------------------------------------------------------


def _stack(processes: Processes, endpoints: dict[str, Any]) -> str:
    settings = service_env(endpoints)
    api = processes.api(settings)
    processes.worker(settings)
    keyed.post(f"{api}/v1/skill-sets", json=STARTER).raise_for_status()
    return api


def _settled_calls(api: str, job_id: str, *fakes: Any) -> tuple[int, int]:
    """(job's llm_calls, requests the fakes saw) once both stop moving (calls in flight at completion end)."""
    last = (-1, -1)
    for _ in range(50):
        now = (
            keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]["llm_calls"],
            sum(f.stats()["requests"] for f in fakes),
        )
        if now == last and now[0] == now[1]:
            return now
        last = now
        time.sleep(0.2)
    return last


def test_judge_on_the_job_endpoint_catches_shirkers_and_counts_in_usage(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake = fake_llm(rpm=0, latency_ms=10, shirker_rate=0.25, judge_reject_rate=0.2)
    api = _stack(processes, {"fake": fake.endpoint_settings()})
    # heuristic checks off: every shirker that is kept out is kept out by the judge
    job_id = submit(
        api, recipe="instruct", skill_set="starter@1", count=40, seed=5, quality={"checks": [], "judge": {}}
    )
    status = wait_for(api, job_id, finished, timeout=120)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 40, status
    assert c["rejected_by_reason"].get("judge_rejected", 0) >= 5, c

    calls, requests = _settled_calls(api, job_id, fake)
    assert calls == requests, (calls, requests)  # the judge's calls are metered like the generator's
    planted = fake.stats()["planted"]
    assert planted.get("judge_shirker", 0) > 0 and planted.get("judge_reject", 0) > 0, planted

    accepted, rejected = examples(api, job_id), examples(api, job_id, "rejected")
    for e in accepted:
        assert e["judge"]["verdict"] is True and e["judge"]["scores"] == all_fives(e["skills"]), e["judge"]
        assert e["judge"]["reason"] == JUDGE_PASS_REASON and e["judge"]["endpoint"] == "fake"
        assert not is_planted_shirker(e["output"])
    judged_out = [e for e in rejected if e["verdict"]["reasons"][0] == "judge_rejected"]
    assert len(judged_out) == c["rejected_by_reason"]["judge_rejected"]
    assert {e["judge"]["reason"] for e in judged_out} == {JUDGE_SHIRKER_REASON, JUDGE_REJECT_REASON}
    for e in judged_out:
        assert e["judge"]["verdict"] is False and e["judge"]["reason"] in e["verdict"]["detail"]
        assert (e["judge"]["reason"] == JUDGE_SHIRKER_REASON) == is_planted_shirker(e["output"])
    assert not [e for e in rejected if is_planted_shirker(e["output"]) and e["verdict"]["reasons"][0] == "surplus"]
    # the judge's tokens are in the job's tokens, on top of the generator's
    stored = accepted + rejected
    judge_tokens = sum(e["judge"]["usage"]["prompt_tokens"] for e in stored if e["judge"])
    assert judge_tokens > 0
    assert c["prompt_tokens"] >= judge_tokens + sum(e["usage"]["prompt_tokens"] for e in stored)
    assert all(e["judge"]["usage"]["calls"] == 1 for e in stored if e["judge"])


def test_judge_on_another_endpoint_is_used_for_judging_only(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    # were the generator's endpoint asked to judge, it would fail everything and the job would fall short
    gen = fake_llm(rpm=0, latency_ms=10, judge_reject_rate=1.0)
    strong = fake_llm(rpm=0, latency_ms=10, judge_reject_rate=0.3, model_strict="judge-model")
    endpoints = {"fake": gen.endpoint_settings(), "strong": strong.endpoint_settings(json_schema=False)}
    api = _stack(processes, endpoints)
    bad = keyed.post(
        f"{api}/v1/jobs",
        json={"recipe": "instruct", "skill_set": "starter@1", "count": 5, "quality": {"judge": {"endpoint": "nope"}}},
    )
    assert bad.status_code == 422 and "quality.judge.endpoint" in bad.text, bad.text

    job_id = submit(
        api, recipe="instruct", skill_set="starter@1", count=30, seed=9, quality={"judge": {"endpoint": "strong"}}
    )
    status = wait_for(api, job_id, finished, timeout=120)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 30, status
    assert c["rejected_by_reason"].get("judge_rejected", 0) > 0, c

    calls, requests = _settled_calls(api, job_id, gen, strong)
    assert calls == requests, (calls, requests)
    gen_stats, strong_stats = gen.stats(), strong.stats()
    assert not any(k.startswith("judge") for k in gen_stats["planted"]), gen_stats  # generator never judged
    assert strong_stats["not_found"] == 0 and strong_stats["requests"] >= c["processed"], strong_stats
    # one judge call per generated item (the generator's own take 3): it never generated
    assert strong_stats["requests"] <= c["generated"] + 8, (strong_stats, c)

    accepted, rejected = examples(api, job_id), examples(api, job_id, "rejected")
    for e in accepted:
        assert e["model"] == "fake-model" and e["endpoint"] == "fake"
        assert e["judge"]["model"] == "judge-model" and e["judge"]["endpoint"] == "strong" and e["judge"]["verdict"]
        assert e["judge"]["scores"] == all_fives(e["skills"]) and len(e["skills"]) >= 2
    judged_out = [e for e in rejected if "judge_rejected" in e["verdict"]["reasons"]]
    assert judged_out and all(e["judge"]["reason"] == JUDGE_REJECT_REASON for e in judged_out)

"""More than one opinion (``quality.judge`` n / endpoints / combine) and reference-guided judging: the combine
rules against a scripted client, then whole jobs through the real API and worker processes, real Redis and
the fake endpoint, whose judge verdicts are drawn from each request's hash (so each seed is its own opinion)."""

import itertools
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis

from schemas.curation import JudgeSettings
from schemas.examples import JudgeOpinion
from tests import keyed
from tests.conftest import Processes
from tests.fake_llm import JUDGE_REJECT_REASON
from tests.test_end_to_end import examples, finished, submit, wait_for
from tests.workers.test_judge import GOOD, SKILLS, Scripted, _item, _record, _settled_calls, _stack, all_fives
from tests.workers.test_math import _math_stack
from workers.curate.judge import ASKED, UNPARSEABLE, Judge, JudgePanel, combine

BAD = GOOD.replace('"pass"', '"fail"').replace('"fine"', '"wrong total"')


def _answer(score: int, verdict: str) -> str:
    body = {"scores": dict.fromkeys(ASKED, score), "skills": dict.fromkeys(SKILLS, score), "verdict": verdict}
    return orjson.dumps(body | {"reason": f"{verdict} {score}"}).decode()


# --- the combine rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["all", "majority"])
async def test_every_pattern_of_three_opinions_combines_by_the_rule(rule: str) -> None:
    settings = JudgeSettings(n=3, combine=rule)
    for pattern in itertools.product([True, False], repeat=3):
        client = Scripted(*(GOOD if ok else BAD for ok in pattern))
        verdict = await Judge(_record(settings), settings, "strong").judge(_item(), client)
        expected = all(pattern) if rule == "all" else sum(pattern) >= 2
        assert verdict.verdict is expected, (rule, pattern, verdict)
        assert [o.verdict for o in verdict.opinions] == list(pattern) and verdict.combine == rule
        assert verdict.reason.startswith(f"{sum(pattern)} of 3 opinions passed ({rule})")
        assert verdict.usage.calls == 3 and verdict.endpoint == "strong"
        seeds = [o.seed for o in verdict.opinions]
        assert len(set(seeds)) == 3 and [c[1]["seed"] for c in client.calls] == seeds
        assert {c[1]["temperature"] for c in client.calls} == {0.7}  # at 0 the seeds would not differ


async def test_a_tie_fails_a_majority_and_an_unreadable_opinion_never_passes() -> None:
    settings = JudgeSettings(n=2, combine="majority")
    verdict = await Judge(_record(settings), settings, "s").judge(_item(), Scripted(GOOD, BAD))
    assert not verdict.verdict and verdict.reason.startswith("1 of 2 opinions passed")
    settings = JudgeSettings(n=3, combine="majority", temperature=0.2)
    client = Scripted(GOOD, "no idea", "still none", GOOD)  # opinion 2 unreadable twice
    verdict = await Judge(_record(settings), settings, "s").judge(_item(), client)
    assert verdict.verdict and [o.reason for o in verdict.opinions][1] == UNPARSEABLE
    assert not verdict.opinions[1].verdict and verdict.opinions[1].scores == {}
    assert verdict.usage.calls == 4 and {c[1]["temperature"] for c in client.calls} == {0.2}
    client = Scripted(GOOD, "no idea", "still none", GOOD)
    settings = JudgeSettings(n=3, combine="all")
    assert not (await Judge(_record(settings), settings, "s").judge(_item(), client)).verdict


def test_scores_combine_lowest_under_all_and_lower_median_under_majority() -> None:
    def opinion(score: int, ok: bool) -> JudgeOpinion:
        return JudgeOpinion(scores={"correct": score, "skill:budgeting": 6 - score}, verdict=ok)

    opinions = [opinion(5, True), opinion(2, False), opinion(4, True), JudgeOpinion(verdict=False)]
    assert combine(opinions, "all") == (False, {"correct": 2, "skill:budgeting": 1})
    assert combine(opinions, "majority") == (False, {"correct": 4, "skill:budgeting": 2})  # 2 of 4: a tie
    assert combine(opinions[:3], "majority") == (True, {"correct": 4, "skill:budgeting": 2})


async def test_a_panel_asks_every_endpoint_n_times() -> None:
    settings = JudgeSettings(endpoints=["a", "b"], n=2, combine="majority")
    record = _record(settings)
    first, second = Scripted(GOOD, BAD), Scripted(GOOD, GOOD)
    panel = JudgePanel(
        [(Judge(record, settings, "a"), first), (Judge(record, settings, "b", seat=1), second)], settings
    )
    verdict = await panel.judge(_item())
    assert verdict.verdict and verdict.endpoint == "a,b" and panel.endpoint_name == "a,b"
    assert [(o.endpoint, o.verdict) for o in verdict.opinions] == [("a", True), ("a", False), ("b", True), ("b", True)]
    assert len({o.seed for o in verdict.opinions}) == 4 and verdict.usage.calls == 4
    with pytest.raises(ValueError, match="not both"):
        JudgeSettings(endpoint="a", endpoints=["b"])


# --- references ----------------------------------------------------------------------------------


async def test_a_brought_rows_reference_column_goes_into_the_prompt() -> None:
    row = {"instruction": "How much is 17 x 23?", "output": "It is 381.", "gold": "17 x 23 = 391"}
    item = _item(instruction=row["instruction"], output=row["output"], skills=[], recipe="curate", source_row=row)
    settings = JudgeSettings(reference_column="gold")
    client = Scripted(GOOD)
    verdict = await Judge(_record(settings), settings, "s").judge(item, client)
    prompt = client.calls[0][0][-1].content
    assert "<reference>\n17 x 23 = 391\n</reference>" in prompt and "column gold" in prompt
    assert verdict.reference_used
    off = JudgeSettings(reference_column="gold", reference=False)
    assert "<reference>" not in Judge(_record(off), off, "s").messages(item)[-1].content
    other = JudgeSettings(reference_column="missing")
    assert "<reference>" not in Judge(_record(other), other, "s").messages(item)[-1].content


# --- whole jobs ----------------------------------------------------------------------------------


def _failing_opinions(stored: list[dict[str, Any]], endpoint: str | None = None) -> int:
    return sum(
        not o["verdict"]
        for e in stored
        if e["judge"]
        for o in e["judge"]["opinions"]
        if endpoint in (None, o["endpoint"])
    )


def test_three_opinions_by_majority_on_the_fake(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5, judge_reject_rate=0.4)
    api = _stack(processes, {"fake": fake.endpoint_settings()})
    quality = {"checks": [], "judge": {"n": 3, "combine": "majority"}}
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=12, seed=3, quality=quality)
    status = wait_for(api, job_id, finished, timeout=180)
    c = status["counters"]
    assert status["state"] == "completed" and c["accepted"] == 12, status
    stored = examples(api, job_id) + examples(api, job_id, "rejected")
    judged = [e for e in stored if e["judge"]]
    split = 0
    for e in judged:
        j = e["judge"]
        votes = [o["verdict"] for o in j["opinions"]]
        assert len(votes) == 3 and len({o["seed"] for o in j["opinions"]}) == 3, j
        assert j["verdict"] is (sum(votes) >= 2) and j["combine"] == "majority", j
        assert j["usage"]["calls"] == 3 and j["template_version"] == "v2"
        for o in j["opinions"]:  # the fake's scripted judge: a clean pass, or "correct" 2 and a fact wrong
            assert o["scores"] == (all_fives(e["skills"]) if o["verdict"] else o["scores"] | {"correct": 2}), o
            assert o["verdict"] or JUDGE_REJECT_REASON in o["reason"]
            assert {f"skill:{s}" for s in e["skills"]} <= set(o["scores"]) and len(e["skills"]) >= 2
        assert {f"skill:{s}" for s in e["skills"]} <= set(j["scores"])
        rejected_here = "judge_rejected" in (e.get("verdict") or {}).get("reasons", [])
        assert rejected_here is (not j["verdict"]), e
        split += 0 < sum(votes) < 3
    assert split > 0  # opinions really differ per seed: the majority decided something
    assert c["rejected_by_reason"].get("judge_rejected", 0) == sum(not e["judge"]["verdict"] for e in judged) > 0
    assert fake.stats()["planted"]["judge_reject"] == _failing_opinions(judged)  # every failing opinion was a call
    calls, requests = _settled_calls(api, job_id, fake)
    assert calls == requests


def test_two_endpoints_must_both_pass(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    first = fake_llm(rpm=0, latency_ms=5, judge_reject_rate=0.25)
    second = fake_llm(rpm=0, latency_ms=5, judge_reject_rate=0.25, model_strict="judge-model")
    endpoints = {"fake": first.endpoint_settings(), "strong": second.endpoint_settings(json_schema=False)}
    api = _stack(processes, endpoints)
    bad = keyed.post(
        f"{api}/v1/jobs",
        json={
            "recipe": "instruct",
            "skill_set": "starter@1",
            "count": 2,
            "quality": {"judge": {"endpoints": ["nope"]}},
        },
    )
    assert bad.status_code == 422 and "quality.judge.endpoints[0]" in bad.text, bad.text
    quality = {"checks": [], "judge": {"endpoints": ["fake", "strong"], "combine": "all"}}
    job_id = submit(api, recipe="instruct", skill_set="starter@1", count=10, seed=4, quality=quality)
    status = wait_for(api, job_id, finished, timeout=180)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 10, status
    judged = [e for e in examples(api, job_id) + examples(api, job_id, "rejected") if e["judge"]]
    for e in judged:
        j = e["judge"]
        assert [o["endpoint"] for o in j["opinions"]] == ["fake", "strong"] and j["endpoint"] == "fake,strong"
        assert j["opinions"][1]["model"] == "judge-model"
        assert j["verdict"] is all(o["verdict"] for o in j["opinions"]), j
    assert any(e["judge"]["opinions"][0]["verdict"] != e["judge"]["opinions"][1]["verdict"] for e in judged)
    assert first.stats()["planted"].get("judge_reject", 0) == _failing_opinions(judged, "fake")
    assert second.stats()["planted"].get("judge_reject", 0) == _failing_opinions(judged, "strong") > 0
    calls, requests = _settled_calls(api, job_id, first, second)
    assert calls == requests


def test_math_judge_sees_the_verified_answer(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake, api = _math_stack(processes, fake_llm)
    spec = {"recipe": "math", "skill_set": "mathskills@1", "count": 2, "seed": 7, "n_solves": 3, "n_validations": 1}
    job_id = submit(api, **spec, quality={"judge": {}})
    status = wait_for(api, job_id, finished, timeout=180)
    assert status["state"] == "completed" and status["counters"]["accepted"] == 2, status
    prompts = [
        m["content"]
        for r in fake._admin("GET", "/admin/requests")["requests"]
        for m in r.get("messages", [])
        if m["role"] == "user" and "You are grading" in m["content"]
    ]
    for e in examples(api, job_id):
        assert e["judge"]["verdict"] and e["judge"]["reference_used"], e["judge"]
        assert {f"skill:{s}" for s in e["skills"]} <= set(e["judge"]["scores"])
        mine = [p for p in prompts if e["instruction"] in p]
        assert mine, (e["instruction"], len(prompts))
        assert all(f"<reference>\nFinal answer: {e['answer']} (reached by" in p for p in mine), mine[0]

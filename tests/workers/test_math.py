"""The MATH^2 recipe (``workers/recipes/math.py``): each stage's verdict against the fake endpoint's math
answers (called in process, so tests can count and override stages), the invalid-pair memory in Redis, and
whole math jobs through the real API and worker processes, with the MATH-style export."""

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Unpack

import pytest
from arq.connections import ArqRedis

from schemas.examples import GeneratedItem, Reason
from schemas.jobs import JobRecord, MathJobSpec
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.math import MathHistory
from schemas.settings import EndpointSettings
from store import keys
from tests import keyed
from tests.conftest import Processes
from tests.fake_llm import FakeConfig, answer, math_notation, math_pair, math_stage, math_truth, word_count
from tests.test_end_to_end import examples, finished, start_stack, submit, wait_for
from workers.llm.client import ChatOptions
from workers.recipes import recipe_for
from workers.recipes.math import MathRecipe, close_equivalence, pair_key, read_fields, yes
from workers.sampler import SkillSampler

SKILLS = [
    ("modular_arithmetic", "work with remainders and congruences", "Find the remainder of 7^100 modulo 13."),
    ("quadratic_equations", "solve and reason about quadratics", "For which k does x^2+kx+9=0 have a double root?"),
    ("counting_principles", "count arrangements and selections", "How many 4-letter strings use ABCDEF once each?"),
    ("probability", "compute probabilities of events", "Two dice are rolled; what is P(sum = 7)?"),
    ("geometry_of_circles", "inscribed angles, chords, tangents", "A chord of length 6 is 4 from the centre: radius?"),
    ("sequences_and_series", "arithmetic and geometric sums", "Sum the first 20 odd numbers."),
    ("number_theory_divisors", "divisor counts and sums", "How many positive divisors does 360 have?"),
    ("functional_equations", "solve for unknown functions", "Find f if f(x+y) = f(x) + f(y) and f(1) = 3."),
]
MATH_SET: dict[str, Any] = {
    "name": "mathskills",
    "description": "a few MATH-style skills, each with an exemplar",
    "skills": [{"name": n, "description": d, "examples": [e]} for n, d, e in SKILLS],
    "query_types": [{"name": "problem", "definition": "a competition-style problem"}],
}


class FakeMath:
    """A ChatClient answering with the fake endpoint's own ``answer`` (in process), counting each stage's
    calls; ``override(stage, n, content)`` may replace the n-th answer of a stage."""

    def __init__(
        self, config: FakeConfig | None = None, override: Callable[[str, int, str], str] | None = None
    ) -> None:
        self.config, self.override = config or FakeConfig(), override
        self.stages: Counter[str] = Counter()
        self.pairs: Counter[str] = Counter()

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        wire = [{"role": m.role, "content": m.content} for m in messages]
        request: dict[str, Any] = {"messages": wire, "seed": options.get("seed")}
        if options.get("json_schema") is not None:
            request["response_format"] = {"type": "json_schema", "json_schema": {"schema": options["json_schema"]}}
        stage = math_stage(wire) or "other"
        content, _ = answer(request, wire, self.config)
        n = self.stages[stage]
        self.stages[stage] += 1
        if stage == "pair":
            self.pairs[math_pair(wire) or ""] += 1
        if self.override is not None:
            content = self.override(stage, n, content)
        usage = Usage(prompt_tokens=sum(word_count(m.content) for m in messages), completion_tokens=9, calls=1)
        return ChatResult(content=content, finish_reason="stop", model="fake-model", usage=usage)


def _record(job_id: str = "m1", json_schema: bool = True, **spec: Any) -> tuple[JobRecord, EndpointSettings]:
    values = {"recipe": "math", "skill_set": "mathskills@1", "count": 5, "seed": 3} | spec
    record = JobRecord.model_validate(
        {
            "id": job_id,
            "spec": values,
            "skill_set": {**MATH_SET, "version": 1},
            "endpoint": "fake",
            "model": "fake-model",
            "chunk_size": 8,
            "created_at": datetime.now(UTC),
        }
    )
    endpoint = EndpointSettings.model_validate(
        {"base_url": "http://fake.invalid/v1", "model": "fake-model", "json_schema": json_schema}
    )
    return record, endpoint


class MathItem(GeneratedItem):
    """A math record with its extras (``MathExtras``) as typed fields, for the assertions."""

    answer: str | None = None
    math: MathHistory | None = None


def typed(item: GeneratedItem) -> MathItem:
    return MathItem.model_validate(item.model_dump(mode="json"))


async def _generate(redis: ArqRedis, llm: FakeMath, index: int = 0, job_id: str = "m1", **spec: Any) -> MathItem:
    record, endpoint = _record(job_id, **spec)
    recipe = recipe_for(record, "fake", endpoint)
    assert isinstance(recipe, MathRecipe)
    await recipe.prepare(redis, [index])
    return typed(await recipe.generate(recipe.item(index), llm))


@pytest.fixture(autouse=True)
def _equivalence_pool() -> Iterator[None]:
    yield
    close_equivalence()


def _verdict(word: str) -> str:
    return json.dumps({"reasoning": "checked every rubric point", "verdict": word})


# --- stages --------------------------------------------------------------------------------------


async def test_a_good_question_keeps_its_whole_history(redis: ArqRedis) -> None:
    llm = FakeMath()
    item = await _generate(redis, llm, index=2)
    assert item.error is None, item.error_detail
    assert item.recipe == "math" and item.template_version == "v1" and len(item.skills) == 2
    history = item.math
    assert history is not None and history.template_version == "v1" and history.pair == item.skills
    assert history.pair_check is not None and history.pair_check.valid
    assert "### Task: skill pair" in history.pair_check.prompt
    assert history.question_turns and history.question_turns[-1].question == item.instruction
    assert item.output == history.question_turns[-1].solution and item.answer == history.question_turns[-1].answer
    p, q = math_truth(item.instruction)
    assert item.answer == math_notation(p, q, 0.0)
    assert history.sceptic is not None and history.sceptic.flaws == "none"
    assert len(history.validations) == 3 and all(v.verdict and v.reasoning for v in history.validations)
    assert len(history.solves) == 5 and history.vote is not None
    assert history.vote.votes == 5 and history.vote.matches_question is True
    assert llm.stages["validate"] == 3 and llm.stages["solve"] == 5 and llm.stages["pair"] == 1
    assert item.usage.calls == sum(llm.stages.values())
    # the same item's pair is the one instruct's sampler draws for (seed, index, attempt)
    assert item.skills == SkillSampler([s[0] for s in SKILLS], ["problem"], 2, 3).item(2).skills


async def test_solves_in_other_notations_still_agree(redis: ArqRedis) -> None:
    """The fake writes agreeing answers as \\frac{p}{q}, p/q, decimals...: equal by value, not by text."""
    differing = 0
    for index in range(4):
        item = await _generate(redis, FakeMath(), index=index)
        assert item.error is None and item.math is not None and item.math.vote is not None, item.error_detail
        assert item.math.vote.votes == 5
        differing += sum(s.answer != item.answer for s in item.math.solves)
    assert differing > 0  # the vote and the final check really compared values


@pytest.mark.parametrize(("verdicts", "passes"), [(["Yes", "No", "Yes"], True), (["No", "Yes", "No"], False)])
async def test_rubric_needs_a_strict_majority(redis: ArqRedis, verdicts: list[str], passes: bool) -> None:
    def override(stage: str, n: int, content: str) -> str:
        return _verdict(verdicts[n]) if stage == "validate" else content

    llm = FakeMath(override=override)
    item = await _generate(redis, llm, index=1)
    assert item.math is not None and [v.verdict for v in item.math.validations] == [w == "Yes" for w in verdicts]
    if passes:
        assert item.error is None and llm.stages["solve"] == 5
    else:
        assert item.error == Reason.RUBRIC_FAILED and "1 of 3" in item.error_detail
        assert llm.stages["solve"] == 0 and not item.math.solves  # no solve is paid for a failed question
        assert item.instruction and item.answer  # the rejected question is still on the record


async def test_rubric_fail_rate_of_the_fake_rejects(redis: ArqRedis) -> None:
    item = await _generate(redis, FakeMath(FakeConfig(math_rubric_fail_rate=1.0)))
    assert item.error == Reason.RUBRIC_FAILED


async def test_disagreeing_solves_are_discarded(redis: ArqRedis) -> None:
    item = await _generate(redis, FakeMath(FakeConfig(math_solve_disagree_rate=1.0)))
    assert item.error == Reason.NO_MAJORITY
    assert item.math is not None and item.math.vote is not None
    assert item.math.vote.answer is None and len(item.math.vote.groups) == 5


async def test_two_two_one_is_no_majority_and_three_of_five_is(redis: ArqRedis) -> None:
    def solves(answers: list[str]) -> Callable[[str, int, str], str]:
        return lambda stage, n, content: (
            json.dumps({"solution": "work", "answer": answers[n]}) if stage == "solve" else content
        )

    item = await _generate(redis, FakeMath(override=solves(["1", "1", "2", "2", "3"])))
    assert item.error == Reason.NO_MAJORITY and item.math is not None and item.math.vote is not None
    assert sorted(len(g) for g in item.math.vote.groups) == [1, 2, 2]

    first = await _generate(redis, FakeMath(), index=0)
    truth = first.answer or ""
    item = await _generate(redis, FakeMath(override=solves([truth, "7777", truth, "8888", truth])), index=0)
    assert item.error is None and item.math is not None and item.math.vote is not None
    assert item.math.vote.votes == 3


async def test_majority_against_the_questions_own_answer_is_a_mismatch(redis: ArqRedis) -> None:
    item = await _generate(redis, FakeMath(FakeConfig(math_wrong_answer_rate=1.0)))
    assert item.error == Reason.ANSWER_MISMATCH
    assert item.math is not None and item.math.vote is not None
    assert item.math.vote.votes == 5 and item.math.vote.matches_question is False
    p, q = math_truth(item.instruction)
    assert item.answer == math_notation(p + q, q, 0.0)  # the question's own answer: off by one


async def test_text_answers_are_read_without_a_schema(redis: ArqRedis) -> None:
    item = await _generate(redis, FakeMath(), json_schema=False)
    assert item.error is None, item.error_detail
    assert item.math is not None and not item.math.pair_check.response.startswith("{")  # type: ignore[union-attr]
    assert read_fields("Reasoning: fine\nVerdict: **No**") == {"reasoning": "fine", "verdict": "**No**"}
    assert yes("**No**") is False and yes("Yes.") is True and yes("maybe") is None


async def test_review_turns_are_bounded(redis: ArqRedis) -> None:
    def never_happy(stage: str, n: int, content: str) -> str:
        if stage != "review":
            return content
        data = json.loads(content)
        return json.dumps({**data, "solvable": False, "critique": "still frustrating"})

    llm = FakeMath(override=never_happy)
    item = await _generate(redis, llm, max_question_turns=2)
    assert item.math is not None and len(item.math.question_turns) == 3  # write + 2 reviews
    assert llm.stages["question"] == 1 and llm.stages["review"] == 2
    llm = FakeMath()
    item = await _generate(redis, llm, max_question_turns=0)
    assert item.math is not None and len(item.math.question_turns) == 1 and llm.stages["review"] == 0


# --- the invalid-pair memory -----------------------------------------------------------------------


async def test_an_invalid_pair_is_remembered_and_never_validated_again(redis: ArqRedis) -> None:
    bad = FakeMath(FakeConfig(math_invalid_pair_rate=1.0))
    first = await _generate(redis, bad, index=4, job_id="a")
    pair = pair_key(first.skills)
    assert first.error == Reason.INVALID_PAIR and bad.pairs == {pair: 1} and bad.stages["question"] == 0
    assert first.math is not None and first.math.pair_check is not None and not first.math.pair_check.valid
    assert await redis.smembers(keys.invalid_pairs("", "mathskills@1")) == {pair.encode()}

    # a later job on the same skill set (same seed, so the same first draw) skips the pair with no call
    good = FakeMath()
    second = await _generate(redis, good, index=4, job_id="b")
    assert second.error is None and pair_key(second.skills) != pair
    assert good.pairs[pair] == 0 and good.stages["pair"] == 1
    assert second.math is not None and second.math.skipped_pairs == [pair]
    # another version of the set has its own memory
    assert not await redis.exists(keys.invalid_pairs("", "mathskills@2"))


def test_math_spec_defaults() -> None:
    spec = MathJobSpec.model_validate({"recipe": "math", "skill_set": "mathskills", "count": 3})
    assert (spec.k, spec.n_validations, spec.n_solves, spec.max_question_turns) == (2, 3, 5, 2)
    assert spec.quality.checks == ["empty_response", "refusal", "placeholder"]
    assert spec.dedup.exact and spec.dedup.near


# --- whole jobs ------------------------------------------------------------------------------------


def _math_stack(processes: Processes, fake_llm: Any, **config: Any) -> tuple[Any, str]:
    fake = fake_llm(rpm=0, latency_ms=2, **config)
    api = start_stack(processes, fake)
    keyed.post(f"{api}/v1/skill-sets", json=MATH_SET).raise_for_status()
    return fake, api


def test_math_job_end_to_end_verified_answers_and_export(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    _, api = _math_stack(
        processes,
        fake_llm,
        math_invalid_pair_rate=0.15,
        math_rubric_fail_rate=0.3,
        math_solve_disagree_rate=0.2,
        math_wrong_answer_rate=0.15,
    )
    job_id = submit(api, recipe="math", skill_set="mathskills@1", count=30, seed=5)
    status = wait_for(api, job_id, finished, timeout=240)
    assert status["state"] == "completed", status
    c = status["counters"]
    assert c["accepted"] == 30, status
    reasons = c["rejected_by_reason"]
    assert reasons.get("invalid_pair", 0) > 0 and reasons.get("rubric_failed", 0) > 0, reasons
    assert reasons.get("answer_mismatch", 0) > 0, reasons

    accepted = examples(api, job_id)
    assert len(accepted) == 30 and len({e["instruction"] for e in accepted}) == 30
    for e in accepted:
        p, q = math_truth(e["instruction"])
        assert e["answer"] == math_notation(p, q, 0.0), e  # only questions whose own answer is right
        h = e["math"]
        assert e["recipe"] == "math" and h["template_version"] == "v1" and h["pair"] == e["skills"]
        assert h["pair_check"]["valid"] and h["pair_check"]["prompt"] and h["pair_check"]["response"]
        assert h["question_turns"] and h["question_turns"][-1]["question"] == e["instruction"]
        assert h["sceptic"]["response"] and h["validation_prompt"] and h["solve_prompt"]
        assert len(h["validations"]) == 3 and sum(v["verdict"] for v in h["validations"]) >= 2
        assert len(h["solves"]) == 5 and h["vote"]["votes"] >= 3 and h["vote"]["matches_question"] is True
    rejected = examples(api, job_id, "rejected")
    by_reason = Counter(r["verdict"]["reasons"][0] for r in rejected)
    assert by_reason["answer_mismatch"] >= reasons["answer_mismatch"]  # (late surplus items keep their reason)
    for r in rejected:
        assert r["math"]["pair"], r  # the rejected keep their history too
        if r["verdict"]["reasons"][0] == "answer_mismatch":
            assert r["math"]["vote"]["matches_question"] is False and r["answer"]

    export = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "math", "state": "needs_review"})
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in export.text.splitlines() if line]
    assert len(rows) == 30 and all(set(row) == {"problem", "solution", "answer", "skills"} for row in rows)
    assert {row["problem"] for row in rows} == {e["instruction"] for e in accepted}
    assert all(row["answer"] and len(row["skills"]) == 2 and row["solution"] for row in rows)


def test_invalid_pairs_are_not_drawn_by_a_second_job(processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake, api = _math_stack(processes, fake_llm, math_invalid_pair_rate=0.3)
    first = submit(api, recipe="math", skill_set="mathskills@1", count=8, seed=9, n_solves=1, n_validations=1)
    assert wait_for(api, first, finished, timeout=120)["state"] == "completed"
    invalid = {"|".join(sorted(r["skills"])) for r in examples(api, first, "rejected")
               if r["verdict"]["reasons"][0] == "invalid_pair"}  # fmt: skip
    assert invalid
    time.sleep(1.0)  # calls of items still in flight when the job completed are cancelled by now
    checks = fake.stats()["math_pair_checks"]
    assert all(checks[p] >= 1 for p in invalid)

    # same seed: the second job's first draws are the first job's, invalid pairs included
    second = submit(api, recipe="math", skill_set="mathskills@1", count=8, seed=9, n_solves=1, n_validations=1)
    status = wait_for(api, second, finished, timeout=120)
    assert status["state"] == "completed", status
    after = fake.stats()["math_pair_checks"]
    assert {p: after[p] for p in invalid} == {p: checks[p] for p in invalid}  # never validated again
    drawn = examples(api, second) + examples(api, second, "rejected")
    assert not {"|".join(sorted(e["skills"])) for e in drawn} & invalid
    skipped = {p for e in drawn for p in e["math"]["skipped_pairs"]}
    assert skipped & invalid  # they were drawn first and skipped without a call


async def test_an_item_unparseable_on_every_try_keeps_its_history(redis: ArqRedis) -> None:
    """The small local model cuts its answers off: the rejected item must still show what each stage said."""
    from workers.generate import generate_item

    record, endpoint = _record("m-unparseable")
    recipe = recipe_for(record, "fake", endpoint)
    await recipe.prepare(redis, [0])
    llm = FakeMath(override=lambda stage, n, content: "the question stops mid" if stage == "question" else content)
    raw, failures = await generate_item(recipe, llm, 0, retries=1)
    item = typed(raw)
    assert item.error == Reason.UNPARSEABLE and failures == 2
    assert item.math is not None and item.math.pair_check is not None and item.math.question_turns, item.math

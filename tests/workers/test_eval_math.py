"""eval-math's pure parts: the square-law fit, answer extraction and the plot; and the recipe's grading
against a scripted client (math-verify in the process pool, the judge's verdict on the steps)."""

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Unpack

import pytest

from schemas.answers import final_answer, last_boxed, reference_answer
from schemas.examples import extras_of
from schemas.jobs import EvalExtras, EvalMathJobSpec, JobRecord
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.settings import EndpointSettings
from service.square_law import ModelPoint, fit_power_law, plot
from tests import keyed
from workers.llm.client import ChatOptions
from workers.recipes import recipe_for
from workers.recipes.eval_math import EvalMathRecipe, read_verdict
from workers.recipes.math import close_equivalence


def synthetic_models(rng: random.Random, n_models: int, n_skills: int, a: float = 2.0) -> list[tuple[float, float]]:
    """Per model: per-skill success rates in [0.3, 0.95]; a pair of skills succeeds with the product of its two
    rates (a = 2), or (for other a) each rate to the power a/2. X = mean single rate, Y = mean pair rate."""
    points = []
    for _ in range(n_models):
        centre = rng.uniform(0.35, 0.9)
        rates = [min(0.95, max(0.3, centre + rng.uniform(-0.05, 0.05))) for _ in range(n_skills)]
        pairs = [(rates[i] * rates[j]) ** (a / 2) for i in range(n_skills) for j in range(i + 1, n_skills)]
        points.append((sum(rates) / n_skills, sum(pairs) / len(pairs)))
    return points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_the_square_law(seed: int) -> None:
    fit = fit_power_law(synthetic_models(random.Random(seed), 25, 30))
    assert abs(fit.a - 2) <= 0.1
    assert fit.ci_low is not None and fit.ci_high is not None and fit.ci_low <= fit.a <= fit.ci_high
    assert fit.r2 is not None and fit.r2 > 0.99
    assert fit.n == 25


def test_fit_recovers_a_known_other_exponent_and_widens_with_noise() -> None:
    rng = random.Random(5)
    exact = fit_power_law([(x, x**1.5) for x in (0.2, 0.4, 0.6, 0.8, 0.9)])
    assert exact.a == pytest.approx(1.5) and exact.r2 == pytest.approx(1.0)
    noisy = [(x, min(1.0, x**1.5 * rng.uniform(0.9, 1.1))) for x in (rng.uniform(0.3, 0.95) for _ in range(40))]
    fit = fit_power_law(noisy)
    assert abs(fit.a - 1.5) <= 0.1
    assert fit.ci_low is not None and fit.ci_high is not None and fit.ci_low < 1.5 < fit.ci_high
    assert fit.ci_high - fit.ci_low > exact.ci_high - exact.ci_low  # type: ignore[operator]


def test_fit_drops_uninformative_points_and_needs_one() -> None:
    fit = fit_power_law([(0.5, 0.25), (1.0, 1.0), (0.0, 0.0), (0.7, 0.0)])
    assert fit.a == pytest.approx(2.0) and fit.n == 1 and fit.dropped == 3 and fit.ci_low is None
    with pytest.raises(ValueError):
        fit_power_law([(1.0, 1.0)])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    models = [ModelPoint("small", 0.4, 0.17), ModelPoint("mid", 0.6, 0.35), ModelPoint("big", 0.85, 0.7)]
    fit = fit_power_law([(m.x, m.y) for m in models])
    out = plot(models, fit, tmp_path / "sub" / "square.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_reference_and_final_answers() -> None:
    solution = r"So $x = \frac{1}{2}$ first, and finally $\boxed{\frac{1}{\sqrt{2}}}$ or $\boxed{\frac{1}{2}}$."
    assert last_boxed(solution) == r"\frac{1}{2}"
    assert reference_answer({"problem": "p", "solution": solution}) == r"\frac{1}{2}"
    assert reference_answer({"answer": r"\boxed{3}", "solution": r"\boxed{4}"}) == "3"
    assert reference_answer({"answer": 7}) == "7"
    assert reference_answer({"solution": "no box"}) is None
    assert last_boxed(r"\boxed{\left\{1, 2\right\}}") == r"\left\{1, 2\right\}"
    assert last_boxed(r"it is \boxed 5$.") == "5"
    assert final_answer(r"work... \fbox{x^{2}+1}") == "x^{2}+1"
    assert final_answer("Some steps.\nThe final answer is 3.5.") == "3.5"
    assert final_answer("Answer: $\\frac{3}{4}$") == "\\frac{3}{4}"
    assert final_answer("no conclusion at all") == ""
    assert final_answer("**Final Answer:** 5") == "5"
    assert final_answer("Final Answer: The final answer is $5$. I hope it is correct.") == "5"
    assert final_answer("The answer is 12.\nSo that is it.") == "12"


def test_read_verdict() -> None:
    assert read_verdict('```json\n{"steps_valid": false, "reason": "divides by zero"}\n```') == (
        False,
        "divides by zero",
    )
    assert read_verdict('{"steps_valid": true, "reason": "ok"}') == (True, "ok")
    verdict, reason = read_verdict("I think so")
    assert verdict is None and "unparseable" in reason


class Scripted:
    """A chat client answering the solve prompt per problem, and the judge prompt by a marker in the solution."""

    def __init__(self, solutions: dict[str, str]) -> None:
        self.solutions = solutions
        self.calls = 0

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        self.calls += 1
        prompt = messages[-1].content
        if "### Task: eval judge" in prompt:
            bad = "BAD" in prompt.partition("<solution>")[2]
            content = f'{{"steps_valid": {"false" if bad else "true"}, "reason": "{"bad step" if bad else "fine"}"}}'
        else:
            problem = prompt.partition("Problem:\n")[2].strip()
            content = self.solutions[problem]
        return ChatResult(
            content=content, model="m", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=2)
        )


def record(judge: str | None, questions: list[dict[str, Any]]) -> JobRecord:
    spec = EvalMathJobSpec.model_validate({"questions": questions, "judge_endpoint": judge})
    assert spec.count == len(questions) and not spec.quality.enabled and not spec.dedup.exact
    return JobRecord(
        team=keyed.TEAM, id="j", spec=spec, endpoint="e", model="m", chunk_size=10, created_at=datetime.now(UTC)
    )


async def test_recipe_grades_by_value_and_by_the_judge() -> None:
    questions: list[dict[str, Any]] = [
        {"id": "a", "problem": "half?", "answer": r"\frac{1}{2}", "skills": ["s1", "s2"]},
        {"id": "b", "problem": "three quarters?", "answer": "3/4"},
        {"id": "c", "problem": "seven?", "answer": "7"},
        {"id": "d", "problem": "lucky?", "answer": "10"},
        {"id": "e", "problem": "silent?", "answer": "1"},
    ]
    solutions = {
        "half?": r"Steps. So $\boxed{0.5}$",  # right, other notation
        "three quarters?": r"Steps. \boxed{\dfrac{3}{4}}",  # right, other notation
        "seven?": r"Steps. \boxed{8}",  # wrong
        "lucky?": r"BAD step. \boxed{10}",  # right answer, wrong steps
        "silent?": "I do not know.",  # no final answer
    }
    try:
        for judge, expected in ((None, [True, True, False, True, False]), ("j", [True, True, False, False, False])):
            rec = record(judge, questions)
            recipe = recipe_for(rec, "e", EndpointSettings(base_url="http://127.0.0.1:9/v1", model="m"))
            assert isinstance(recipe, EvalMathRecipe)
            client = Scripted(solutions)
            recipe.judge_llm = client if judge else None
            items = [await recipe.generate(recipe.item(i), client) for i in range(len(questions))]
            evals = [extras_of(it, EvalExtras).eval for it in items]  # the recipe's record extras, typed
            assert [e.correct for e in evals if e] == expected
            assert items[0].skills == ["s1", "s2"] and evals[0] and evals[0].extracted == "0.5"
            assert evals[4] and evals[4].extracted == "" and not evals[4].equivalent
            lucky = evals[3]
            assert lucky is not None and lucky.equivalent
            if judge:
                assert lucky.judge_verdict is False and lucky.judge_reason == "bad step"
                assert client.calls == 2 * len(questions) and items[0].usage.prompt_tokens == 6
            else:
                assert lucky.judge_verdict is None and client.calls == len(questions)
    finally:
        close_equivalence()

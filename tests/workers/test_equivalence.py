"""Answer equivalence for MATH^2's majority vote: math-verify in a process pool, never on the event loop."""

import asyncio
from collections.abc import Iterator

import pytest

from workers.math.equivalence import Equivalence

EQUAL = [
    ("\\frac12", "0.5"),
    ("1/2", "\\frac{1}{2}"),
    ("0.5", "1/2"),
    ("2\\sqrt2", "\\sqrt8"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("x=3", "3"),
    ("\\boxed{7}", "7"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("[1,2)", "[1,2)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("(0,\\infty)", "(0, \\infty)"),
    ("10", "10.0"),
    ("-3", "-3"),
    ("\\dfrac{6}{4}", "\\frac{3}{2}"),
    ("\\pi", "\\pi"),
    ("2\\pi", "\\pi \\cdot 2"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("50\\%", "50\\%"),
    ("1,000", "1000"),
    ("3^{2}", "9"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("e^{0}", "1"),
    ("\\log_2 8", "3"),
]
NOT_EQUAL = [
    ("\\frac12", "0.25"),
    ("2\\sqrt2", "\\sqrt2"),
    ("x=3", "4"),
    ("\\boxed{7}", "8"),
    ("[1,2)", "[1,2]"),
    ("(1,2]", "[1,2]"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("10", "100"),
    ("-3", "3"),
    ("\\pi", "3"),
    ("x^2+1", "(x+1)^2"),
    ("1/3", "0.3"),
    ("\\sqrt{12}", "3\\sqrt{2}"),
    ("5", ""),
    ("", ""),
    ("2", "\\frac{5}{2}"),
    ("0", "1"),
]


@pytest.fixture(scope="module")
def equivalence() -> Iterator[Equivalence]:
    checker = Equivalence(processes=2)
    yield checker
    checker.close()


def test_the_table_has_enough_cases() -> None:
    assert len(EQUAL) + len(NOT_EQUAL) >= 40


@pytest.mark.parametrize(("a", "b"), EQUAL)
async def test_equal_answers(equivalence: Equivalence, a: str, b: str) -> None:
    assert await equivalence.equal(a, b), (a, b)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
async def test_different_answers(equivalence: Equivalence, a: str, b: str) -> None:
    assert not await equivalence.equal(a, b), (a, b)


async def test_a_strict_majority_wins_in_any_notation(equivalence: Equivalence) -> None:
    vote = await equivalence.vote(["\\frac12", "0.5", "1/3", "\\boxed{\\frac{1}{2}}", "2"])
    assert vote.answer == "\\frac12" and vote.votes == 3 and sorted(vote.groups[0]) == [0, 1, 3]


async def test_no_strict_majority_is_no_answer(equivalence: Equivalence) -> None:
    vote = await equivalence.vote(["1", "1.0", "2", "2.0"])
    assert vote.answer is None and vote.votes == 2


async def test_comparisons_leave_the_event_loop_free(equivalence: Equivalence) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.gather(*(equivalence.equal(f"\\frac{{{i}}}{{2}}", f"{i / 2}") for i in range(20)))
    ticker.cancel()
    assert ticks >= 3


async def test_a_comparison_past_the_hard_timeout_is_not_equal_and_the_pool_recovers() -> None:
    checker = Equivalence(processes=1, timeout_s=0.001)  # nothing finishes in a millisecond, not even the spawn
    try:
        assert not await checker.equal("1", "1")
        checker.timeout_s = 60
        assert await checker.equal("1", "1.0")
    finally:
        checker.close()

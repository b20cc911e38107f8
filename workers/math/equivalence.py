"""Are two final answers the same number, set, interval or expression? ``math-verify`` decides.

``\\frac12`` = ``0.5`` = ``1/2``, ``2\\sqrt2`` = ``\\sqrt8``, ``x=3`` = ``3``, ``\\boxed{}`` unwrapped, intervals
and sets compared as such. math-verify bounds its own parsing and comparison with ``signal.alarm``, which
works only in a process's main thread, and sympy can still spin for a long time on hostile input: so every
comparison runs in a small process pool (each task in a worker's main thread) under a hard outer timeout,
never on the event loop. A pool whose worker is stuck past the timeout is replaced (the stuck process is
killed), and the comparison counts as "not equal" with ``timed_out`` set.
"""

import asyncio
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)
INNER_TIMEOUT_S = 5  # math-verify's own alarm, per parse and per verify
OUTER_TIMEOUT_S = 20.0  # the pool's hard limit for one comparison (two parses and a verify)


def _parse(answer: str) -> list[object]:
    from math_verify import parse

    text = answer.strip()
    if not text:
        return []
    wrapped = text if text.startswith("$") or "\\boxed" in text else f"${text}$"
    parsed: list[object] = parse(wrapped, parsing_timeout=INNER_TIMEOUT_S) or parse(
        text, parsing_timeout=INNER_TIMEOUT_S
    )
    return parsed


def compare(a: str, b: str) -> bool:
    """In a pool worker's main thread: whether ``a`` and ``b`` are mathematically equal."""
    from math_verify import verify

    gold, target = _parse(a), _parse(b)
    if not gold or not target:
        return a.strip() != "" and a.strip() == b.strip()
    return bool(verify(gold, target, timeout_seconds=INNER_TIMEOUT_S))


@dataclass(frozen=True)
class Vote:
    """The answer a strict majority agrees on (``None`` when there is none) and the size of each group."""

    answer: str | None
    votes: int
    groups: list[list[int]]  # indexes of the answers in each group of equal answers, largest first


class Equivalence:
    def __init__(self, processes: int = 1, timeout_s: float = OUTER_TIMEOUT_S) -> None:
        self.processes, self.timeout_s = processes, timeout_s
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def equal(self, a: str, b: str) -> bool:
        """Whether two answers are equal; a comparison that exceeds the timeout is "not equal"."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), compare, a, b)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            log.warning("answer comparison timed out after %ss: %.80r vs %.80r", self.timeout_s, a, b)
            self._replace_pool()
            return False

    async def vote(self, answers: Sequence[str]) -> Vote:
        """Group equal answers (each compared with one representative per group); strict majority wins."""
        groups: list[list[int]] = []
        for i, answer in enumerate(answers):
            for group in groups:
                if await self.equal(answers[group[0]], answer):
                    group.append(i)
                    break
            else:
                groups.append([i])
        groups.sort(key=len, reverse=True)
        if groups and len(groups[0]) * 2 > len(answers):
            return Vote(answers[groups[0][0]], len(groups[0]), groups)
        return Vote(None, len(groups[0]) if groups else 0, groups)

    def _replace_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):  # a stuck sympy call never returns
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

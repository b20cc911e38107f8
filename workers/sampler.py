"""Deterministic skill-combination sampling (papers.md §A stage 2).

Every item is a pure function of (seed, index, attempt): any worker can regenerate any chunk and get the
same draws, so a retried chunk or a re-run job is reproducible. Skills are drawn uniformly without
replacement; query types come from a shuffled, tiled list so each appears about equally often.
"""

import hashlib
import random
from collections import Counter
from collections.abc import Iterable
from itertools import combinations

from schemas.base import StrictModel
from schemas.examples import WorkItem


def derive_rng(*parts: object) -> random.Random:
    """A PRNG seeded by a stable hash (Python's ``hash`` is salted per process, so it is not used)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class SkillSampler:
    def __init__(self, skills: list[str], query_types: list[str], k: int, seed: int) -> None:
        if k > len(skills):
            raise ValueError(f"k={k} but only {len(skills)} skills")
        if not query_types:
            raise ValueError("at least one query type is needed")
        self.skills, self.query_types, self.k, self.seed = skills, query_types, k, seed

    def query_type(self, index: int) -> str:
        block, offset = divmod(index, len(self.query_types))
        order = list(self.query_types)
        derive_rng(self.seed, "qt", block).shuffle(order)
        return order[offset]

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        """A fresh attempt redraws the skills but keeps the query type, so balance survives retries."""
        skills = derive_rng(self.seed, "skills", index, attempt).sample(self.skills, self.k)
        return WorkItem(index=index, attempt=attempt, skills=skills, query_type=self.query_type(index))


class Coverage(StrictModel):
    items: int
    skills_total: int
    skills_covered: int
    pairs_total: int
    pairs_covered: int
    min_uses_per_skill: int
    max_uses_per_skill: int
    query_types: dict[str, int]


def coverage(draws: Iterable[tuple[list[str], str | None]], all_skills: list[str]) -> Coverage:
    """How much of the skill and skill-pair space a set of examples touches."""
    uses: Counter[str] = Counter()
    pairs: set[tuple[str, str]] = set()
    types: Counter[str] = Counter()
    n = 0
    for skills, query_type in draws:
        n += 1
        uses.update(skills)
        pairs.update(combinations(sorted(skills), 2))
        if query_type:
            types[query_type] += 1
    per_skill = [uses.get(s, 0) for s in all_skills] or [0]
    total = len(all_skills)
    return Coverage(
        items=n,
        skills_total=total,
        skills_covered=sum(1 for c in per_skill if c),
        pairs_total=total * (total - 1) // 2,
        pairs_covered=len(pairs),
        min_uses_per_skill=min(per_skill),
        max_uses_per_skill=max(per_skill),
        query_types=dict(sorted(types.items())),
    )

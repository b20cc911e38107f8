"""Pure sampling helpers both sides share: seeds derived from stable hashes (so any process draws the same
thing), and how much of a skill set's space a set of examples covers (``GET /v1/jobs/{id}/coverage``).

The skill sampler itself is the engine's (``workers.sampler``).
"""

import hashlib
import random
from collections import Counter
from collections.abc import Iterable
from itertools import combinations

from schemas.base import StrictModel


def derive_rng(*parts: object) -> random.Random:
    """A PRNG seeded by a stable hash (Python's ``hash`` is salted per process, so it is not used)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


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

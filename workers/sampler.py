"""Deterministic skill-combination sampling (papers.md §A stage 2).

Every item is a pure function of (seed, index, attempt): any worker can regenerate any chunk and get the
same draws, so a retried chunk or a re-run job is reproducible. Skills are drawn uniformly without
replacement; query types come from a shuffled, tiled list so each appears about equally often.
"""

from schemas.examples import WorkItem
from schemas.sampling import derive_rng


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

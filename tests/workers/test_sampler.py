from collections import Counter
from itertools import combinations

from schemas.sampling import coverage
from workers.sampler import SkillSampler

SKILLS = [f"skill_{i}" for i in range(30)]
TYPES = [f"type_{i}" for i in range(16)]


def test_items_are_a_pure_function_of_seed_index_attempt() -> None:
    a, b = SkillSampler(SKILLS, TYPES, 2, seed=7), SkillSampler(SKILLS, TYPES, 2, seed=7)
    assert [a.item(i) for i in range(200)] == [b.item(i) for i in reversed(range(200))][::-1]
    assert a.item(5, attempt=1).skills != a.item(5, attempt=0).skills or a.item(5, 2).skills != a.item(5).skills
    assert a.item(5, attempt=1).query_type == a.item(5).query_type
    other = SkillSampler(SKILLS, TYPES, 2, seed=8)
    assert [a.item(i).skills for i in range(50)] != [other.item(i).skills for i in range(50)]


def test_k_distinct_skills_uniformly() -> None:
    sampler = SkillSampler(SKILLS, TYPES, 3, seed=1)
    uses: Counter[str] = Counter()
    for i in range(6000):
        skills = sampler.item(i).skills
        assert len(set(skills)) == 3
        uses.update(skills)
    expected = 6000 * 3 / len(SKILLS)
    assert all(abs(n - expected) < 0.2 * expected for n in uses.values())


def test_query_types_balanced_by_tiling() -> None:
    sampler = SkillSampler(SKILLS, TYPES, 2, seed=3)
    counts = Counter(sampler.item(i).query_type for i in range(16 * 25))
    assert set(counts.values()) == {25}
    first_block = [sampler.item(i).query_type for i in range(16)]
    assert sorted(t or "" for t in first_block) == sorted(TYPES) and first_block != TYPES  # shuffled, not in order


def test_coverage_counts_skills_and_pairs() -> None:
    sampler = SkillSampler(SKILLS[:6], TYPES[:2], 2, seed=0)
    draws = [(sampler.item(i).skills, sampler.item(i).query_type) for i in range(200)]
    report = coverage(draws, SKILLS[:6])
    assert report.skills_covered == 6 and report.pairs_total == 15
    assert report.pairs_covered == len({tuple(sorted(s)) for s, _ in draws}) == 15
    assert sum(report.query_types.values()) == 200
    assert report.pairs_covered <= len(list(combinations(SKILLS[:6], 2)))

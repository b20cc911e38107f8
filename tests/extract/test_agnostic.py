"""Model-only extraction in-process: topics, skills per topic, query types; names normalised."""

from pathlib import Path

from arq.connections import ArqRedis

from store.skill_sets import get_skill_set
from tests import keyed
from tests.extract.helpers import run_job, settings_for
from tests.plugins.fake_llm import FakeLLMFactory

BODY = {
    "recipe": "extract-agnostic",
    "skill_set_name": "support",
    "num_topics": 4,
    "skills_per_topic": 3,
    "num_query_types": 5,
    "domain": "customer support",
}


async def test_topics_skills_and_query_types(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, await fake_llm.astart())
    status, found = await run_job(redis, settings, BODY)
    assert status.state == "completed", status.message
    c = status.counters
    assert (status.count, c.planned, c.processed, c.accepted, c.rejected) == (6, 6, 6, 6, 0)
    assert c.llm_calls == 6  # topics, one per topic, query types
    assert found is not None and found.ref == status.result == "support@1"

    topics = [f"customer_support_area_{i}" for i in range(1, 5)]
    names = [s.name for s in found.skills]
    # the fake repeats each topic as a skill and gives every topic "Clear Writing": both normalised away
    assert not set(names) & set(topics)
    assert names.count("clear_writing") == 1
    assert names == ["clear_writing"] + [f"{t}_skill_{j}" for t in topics for j in range(3)]  # topic order
    assert all(s.frequency is None and not s.examples and s.description for s in found.skills)
    assert [q.name for q in found.query_types] == [f"query_type_{i}" for i in range(1, 6)]  # duplicate dropped
    assert "customer support" in found.description
    # what came back against what was asked, even when nothing is short (the fake adds "clear_writing")
    assert "asked for 12 skills over 4 topics, got 13 usable (dropped: 0 placeholders, 0 copied" in status.message
    assert "default query types" not in status.message


async def test_a_rerun_is_a_new_version(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, await fake_llm.astart())
    _, first = await run_job(redis, settings, BODY)
    _, second = await run_job(redis, settings, BODY | {"num_topics": 2})
    assert first is not None and second is not None and (first.version, second.version) == (1, 2)
    assert await get_skill_set(redis, keyed.TEAM, "support", 1) == first  # version 1 unchanged
    assert len(second.skills) == 1 + 2 * 3


async def test_unusable_answers_fail_the_job(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, await fake_llm.astart(extract_garbage_rate=1.0))
    status, found = await run_job(redis, settings, BODY)
    assert status.state == "failed" and "no usable topics" in status.message and found is None
    assert status.counters.llm_calls == 3 and status.counters.parse_failures == 3

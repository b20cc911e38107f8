"""Duplicate detection against a real Redis (the test database, flushed around every test)."""

import asyncio
import inspect
import random
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from redis.asyncio import Redis

from schemas.curation import DedupSettings
from schemas.examples import Reason
from store import keys
from tests.conftest import REDIS_URL
from workers.curate.dedup import (
    Deduper,
    DedupResult,
    band_params,
    exact_hash,
    jaccard,
    shingle_jaccard,
    shingles,
    signature,
)

JOB = "job-a"
NEAR_ONLY = DedupSettings(exact=False)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, decode_responses=False)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def resolved(value: Awaitable[Any] | Any) -> Any:
    """redis-py types its commands as sync-or-async (and str): the asyncio client returns awaitables."""
    return await value if inspect.isawaitable(value) else value


def vocabulary(size: int = 20_000, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    made = {"".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 9))) for _ in range(size)}
    return sorted(made)


VOCAB = vocabulary()


def random_words(rnd: random.Random, n: int = 40) -> list[str]:
    return [rnd.choice(VOCAB) for _ in range(n)]


def change_words(rnd: random.Random, text_words: list[str], n: int) -> list[str]:
    changed = list(text_words)
    for pos in rnd.sample(range(len(changed)), n):
        changed[pos] = rnd.choice(VOCAB)
    return changed


async def add(redis: Redis, example_id: str, text: str, settings: DedupSettings, job: str = JOB) -> DedupResult:
    return await Deduper().check_and_add(redis, job, example_id, text, settings)


def test_signature_is_stable_and_sized() -> None:
    text = "Explain how a heat pump moves heat from a cold place to a warm one."
    assert signature(text, 128) == signature(text, 128)
    assert len(signature(text, 64)) == 64
    assert all(0 <= v < 2**32 for v in signature(text, 128))
    # Shingles are single words: near-duplicate means similar word sets.
    assert shingles("Hello, World") == {"hello", "world"}


def test_band_params_use_all_bands_within_num_perm() -> None:
    bands, rows = band_params(0.7, 128)
    assert bands >= 2 and bands * rows <= 128


def test_jaccard_on_normalised_words() -> None:
    assert jaccard("The cat sat.", "the CAT sat") == 1.0
    assert jaccard("a b c d", "a b e f") == pytest.approx(2 / 6)


async def test_new_text_is_stored_under_the_job_keys(redis: Redis) -> None:
    result = await add(redis, "ex-1", "Write a haiku about the sea at night.", DedupSettings())
    assert result == DedupResult()
    assert await resolved(redis.hget(keys.exact(JOB), exact_hash("write a haiku about the sea at night"))) == b"ex-1"
    bands, _ = band_params(0.7, 128)
    assert len(await resolved(redis.hgetall(f"{keys.lsh_prefix(JOB)}{bands - 1}"))) == 1
    assert len(await resolved(redis.hget(keys.signatures(JOB), "ex-1")) or b"") == 4 * 128


@pytest.mark.parametrize(
    "variant",
    [
        "write a haiku about the sea at night",
        "  WRITE a Haiku,   about the SEA at night!!  ",
        "Write a haiku about the sea at night…",
        "Write a haiku\nabout the sea\tat night?",
    ],
)
async def test_exact_duplicates_ignore_case_space_and_punctuation(redis: Redis, variant: str) -> None:
    assert await add(redis, "first", "Write a haiku about the sea at night.", DedupSettings()) == DedupResult()
    result = await add(redis, "second", variant, DedupSettings())
    assert result == DedupResult(Reason.EXACT_DUPLICATE, "first")


async def test_exact_hash_keeps_operators() -> None:
    assert exact_hash("Solve x+1 = 3.") != exact_hash("Solve x*1 = 3.")


async def test_near_duplicate_with_two_adjacent_words_changed(redis: Redis) -> None:
    rnd = random.Random(7)
    base = random_words(rnd)
    changed = list(base)
    changed[20:22] = ["zzzaaa", "zzzbbb"]
    a, b = " ".join(base), " ".join(changed)
    assert shingle_jaccard(a, b) == pytest.approx(38 / 42)
    assert await add(redis, "a", a, NEAR_ONLY) == DedupResult()
    assert await add(redis, "b", b, NEAR_ONLY) == DedupResult(Reason.NEAR_DUPLICATE, "a")


async def test_near_duplicates_with_two_of_forty_words_changed(redis: Redis) -> None:
    """Two changed words in 40 leave a word-set Jaccard of about 0.9: MinHash LSH catches them all."""
    rnd = random.Random(11)
    pairs = 100
    caught = 0
    for i in range(pairs):
        base = random_words(rnd)
        a, b = " ".join(base), " ".join(change_words(rnd, base, 2))
        assert 0.8 <= shingle_jaccard(a, b) <= 0.95
        assert await add(redis, f"a{i}", a, NEAR_ONLY, job=f"pair-{i}") == DedupResult()
        result = await add(redis, f"b{i}", b, NEAR_ONLY, job=f"pair-{i}")
        assert result.reason in (None, Reason.NEAR_DUPLICATE)
        caught += result.reason is Reason.NEAR_DUPLICATE
    assert caught >= 0.98 * pairs


async def test_random_texts_give_no_false_positives(redis: Redis) -> None:
    rnd = random.Random(3)
    for i in range(1000):
        result = await add(redis, f"ex-{i}", " ".join(random_words(rnd)), DedupSettings())
        assert result == DedupResult(), i
    assert await resolved(redis.hlen(keys.signatures(JOB))) == 1000


def half_similar_pair() -> tuple[str, str]:
    """40-word texts sharing their first 28 words: word-set Jaccard 28/52 = 0.54."""
    rnd = random.Random(5)
    base = random_words(rnd)
    other = base[:28] + random_words(rnd, 12)
    return " ".join(base), " ".join(other)


async def test_threshold_is_honoured(redis: Redis) -> None:
    a, b = half_similar_pair()
    assert shingle_jaccard(a, b) == pytest.approx(28 / 52)
    strict, loose = DedupSettings(exact=False, threshold=0.7), DedupSettings(exact=False, threshold=0.4)
    assert await add(redis, "a", a, strict, job="strict") == DedupResult()
    assert await add(redis, "b", b, strict, job="strict") == DedupResult()
    assert await add(redis, "a", a, loose, job="loose") == DedupResult()
    assert await add(redis, "b", b, loose, job="loose") == DedupResult(Reason.NEAR_DUPLICATE, "a")


async def test_concurrent_inserts_of_one_text_keep_exactly_one(redis: Redis) -> None:
    deduper = Deduper()
    text = "Plan a three-day trip to Lisbon for a family with two small children."
    results = await asyncio.gather(
        *(deduper.check_and_add(redis, JOB, f"ex-{i}", text, DedupSettings()) for i in range(20))
    )
    new = [i for i, r in enumerate(results) if r.reason is None]
    assert len(new) == 1
    assert {r.duplicate_of for r in results if r.reason is not None} == {f"ex-{new[0]}"}
    assert {r.reason for r in results} == {None, Reason.EXACT_DUPLICATE}


async def test_concurrent_near_only_inserts_keep_exactly_one(redis: Redis) -> None:
    deduper = Deduper()
    text = "Plan a three-day trip to Lisbon for a family with two small children."
    results = await asyncio.gather(*(deduper.check_and_add(redis, JOB, f"ex-{i}", text, NEAR_ONLY) for i in range(20)))
    assert sum(r.reason is None for r in results) == 1
    assert {r.reason for r in results} == {None, Reason.NEAR_DUPLICATE}


async def test_exact_off_near_off(redis: Redis) -> None:
    text = "Describe the water cycle to a ten-year-old using a kitchen analogy."
    exact_only = DedupSettings(near=False)
    assert await add(redis, "a", text, exact_only) == DedupResult()
    assert await add(redis, "b", text.upper(), exact_only) == DedupResult(Reason.EXACT_DUPLICATE, "a")
    assert await resolved(redis.exists(keys.signatures(JOB))) == 0
    # A near duplicate goes through when only exact matching is on.
    assert await add(redis, "c", text.replace("ten-year-old", "nine-year-old"), exact_only) == DedupResult()

    off = DedupSettings(exact=False, near=False)
    assert await add(redis, "d", text, off, job="off") == DedupResult()
    assert await add(redis, "e", text, off, job="off") == DedupResult()
    assert await resolved(redis.dbsize()) == 1  # only job-a's exact hash


async def test_near_only_does_not_record_exact_hashes(redis: Redis) -> None:
    text = "Compare two budgeting methods for a freelancer with irregular monthly income."
    assert await add(redis, "a", text, NEAR_ONLY) == DedupResult()
    assert await add(redis, "b", text, NEAR_ONLY) == DedupResult(Reason.NEAR_DUPLICATE, "a")
    assert await resolved(redis.exists(keys.exact(JOB))) == 0


async def test_jobs_are_isolated(redis: Redis) -> None:
    text = "Suggest three icebreakers for a remote team meeting of new hires."
    assert await add(redis, "a", text, DedupSettings(), job="job-1") == DedupResult()
    assert await add(redis, "a", text, DedupSettings(), job="job-2") == DedupResult()
    assert await add(redis, "b", text, DedupSettings(), job="job-2") == DedupResult(Reason.EXACT_DUPLICATE, "a")


async def test_re_adding_the_same_example_is_idempotent(redis: Redis) -> None:
    """A crashed worker's item is curated again: it must not become a duplicate of itself."""
    text = "Outline a weekly meal plan for a vegetarian marathon runner."
    assert await add(redis, "a", text, DedupSettings()) == DedupResult()
    assert await add(redis, "a", text, DedupSettings()) == DedupResult()
    assert await add(redis, "a", text, NEAR_ONLY) == DedupResult()

"""The batch manager's worst moments, driven step by step against real Redis and the fake Batch API:
a worker that died between creating a batch and noting its id, a failed validation, a transient one."""

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from arq.connections import ArqRedis

from schemas.batches import BatchRecord, RequestLine
from schemas.jobs import JobRecord, JobState, PromptsJobSpec
from schemas.settings import Settings
from store import batches, keys, records
from store.batches import Group
from store.clock import now_iso
from tests.plugins.fake_llm import FakeLLMFactory
from workers.batch.manager import METADATA_KEY, BatchManager
from workers.batch.provider import BatchAPI
from workers.runner.resources import Resources

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 32}


async def _job(redis: ArqRedis, lines: int) -> tuple[JobRecord, list[str]]:
    spec = PromptsJobSpec.model_validate({"prompts": ["x"], "mode": "batch"})
    record = JobRecord(
        id=uuid.uuid4().hex, spec=spec, endpoint="fake", model="fake-model", chunk_size=8, created_at=datetime.now(UTC)
    )
    await redis.set(keys.job(record.id), record.model_dump_json())
    await redis.hset(keys.meta(record.id), mapping={"state": JobState.RUNNING.value})
    group = Group(record.id, "fake")
    cids = []
    for i in range(lines):
        cid = batches.custom_id(0, f"{i}:0:d{i}:0")
        body = BODY | {"messages": [{"role": "user", "content": f"Say hi {i}."}]}
        line = RequestLine(custom_id=cid, body=body).model_dump_json()
        assert (await batches.park(redis, group, cid, line, "unit", keys.replay(record.id, 0), cid))[0] == "parked"
        cids.append(cid)
    return record, cids


async def _manager(redis: ArqRedis, fake: Any) -> tuple[BatchManager, Resources]:
    endpoint = fake.endpoint_settings(batch=True, batch_poll_s=0.1)
    settings = Settings(endpoints={"fake": endpoint}, default_endpoint="fake", redis_url="redis://x")
    resources = Resources(redis, settings)
    return BatchManager(redis, settings, resources), resources


async def _cut(manager: BatchManager, record: JobRecord, cids: list[str]) -> BatchRecord:
    group = Group(record.id, "fake")
    endpoint = (await manager.resources.client("fake")).endpoint
    raw = await manager.redis.lrange(group.open, 0, -1)
    batch, taken = manager._cut(record.id, "fake", endpoint, raw)
    assert await batches.take(manager.redis, group, batch, taken, True, now_iso()) == "ok"
    assert taken == cids
    return batch


async def _until_done(manager: BatchManager, bid: str, fake: Any) -> None:
    for _ in range(200):
        if await manager._advance(bid) is None:
            return
        await fake.astats()  # the fake moves batches on as they are read
    raise AssertionError("batch never finished")


async def test_a_batch_created_by_a_worker_that_died_is_adopted_not_created_again(
    redis: ArqRedis, fake_llm: FakeLLMFactory
) -> None:
    fake = await fake_llm.astart(batch_latency_s=0.2)
    manager, resources = await _manager(redis, fake)
    record, cids = await _job(redis, 5)
    batch = await _cut(manager, record, cids)
    # what a worker did before it was killed: noted "uploading", uploaded, created the batch, and died
    batch.status = "uploading"
    await batches.save(redis, batch)
    api = BatchAPI("fake", fake.endpoint_settings())
    content = b"\n".join(await batches.file_lines(redis, batch.id)) + b"\n"
    file_id = await api.upload(content, "x.jsonl")
    await api.create(file_id, {METADATA_KEY: batch.id}, 24)
    await api.aclose()

    await _until_done(manager, batch.id, fake)
    stats = await fake.astats()
    assert stats["batches_created"] == 1 and stats["batch_lines_billed"] == 5 and stats["batch_rebilled"] == 0
    kept = await redis.hgetall(keys.replay(record.id, 0))
    assert len(kept) == 5  # every answer kept for its unit
    counters = await redis.hgetall(keys.counters(record.id))
    assert int(counters[b"llm_calls"]) == 5 and int(counters[b"batches_done"]) == 1
    assert int(counters[b"batch_reserved_micro_usd"]) == 0  # the reservation is released once
    assert not await redis.hlen(Group(record.id, "fake").lines)  # no line left waiting
    assert await redis.zcard(keys.BATCHES_WAKE) == 1  # its unit is to be woken
    await resources.aclose()


async def test_a_failed_validation_fails_the_job_with_the_providers_errors(
    redis: ArqRedis, fake_llm: FakeLLMFactory
) -> None:
    fake = await fake_llm.astart(batch_latency_s=0.2)
    manager, resources = await _manager(redis, fake)
    record, cids = await _job(redis, 3)
    line = orjson.loads(await redis.lindex(Group(record.id, "fake").open, 1))
    line["url"] = "/v1/embeddings"  # a line the provider refuses at validation
    await redis.lset(Group(record.id, "fake").open, 1, orjson.dumps(line))
    batch = await _cut(manager, record, cids)
    await _until_done(manager, batch.id, fake)
    status = await records.get_state(redis, record.id)
    meta = await redis.hget(keys.meta(record.id), "message")
    assert status is JobState.FAILED and b"failed validation" in meta and b"invalid_url" in meta, meta
    assert (await fake.astats())["batch_lines_billed"] == 0
    await resources.aclose()


async def test_a_transient_validation_failure_is_submitted_once_more(redis: ArqRedis, fake_llm: FakeLLMFactory) -> None:
    fake = await fake_llm.astart(batch_latency_s=0.2, batch_reject_next=1)
    manager, resources = await _manager(redis, fake)
    record, cids = await _job(redis, 4)
    batch = await _cut(manager, record, cids)
    await _until_done(manager, batch.id, fake)
    stats = await fake.astats()
    assert stats["batches_created"] == 2 and stats["batch_lines_billed"] == 4, stats
    assert await records.get_state(redis, record.id) is JobState.RUNNING
    assert len(await redis.hgetall(keys.replay(record.id, 0))) == 4
    await resources.aclose()

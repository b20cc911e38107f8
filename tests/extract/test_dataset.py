"""Dataset extraction in-process (real Redis, the fake endpoint over HTTP): label, merge rounds, map back."""

import json
from pathlib import Path
from typing import Any

import orjson
from arq.connections import ArqRedis

from schemas.extract import MAX_EXEMPLARS, ExtractDatasetSpec, UnlabelledRow
from schemas.jobs import JobState
from store import keys, records
from store.extraction import ExtractStore
from tests.extract.helpers import (
    coarse_of,
    hierarchical_label,
    row_text,
    run_job,
    run_steps,
    settings_for,
    write_jsonl,
)
from tests.plugins.fake_llm import FakeLLMFactory
from workers.extract.merge import merge_batch_size


def dataset_body(name: str = "seeded", **extra: Any) -> dict[str, Any]:
    return {"recipe": "extract-from-dataset", "skill_set_name": name, "source": {"path": "seed.jsonl"}} | extra


async def unlabelled(redis: ArqRedis, job_id: str) -> list[UnlabelledRow]:
    return [UnlabelledRow.model_validate_json(raw) async for raw in ExtractStore(redis, job_id).iter_unlabelled()]


async def test_5000_rows_need_several_merge_rounds(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "seed.jsonl", 5000)
    settings = settings_for(tmp_path, await fake_llm.astart())
    body = dataset_body(merge_batch=50, max_skills=20)
    status, found = await run_job(redis, settings, body)

    assert status.state == "completed", status.message
    c = status.counters
    assert (c.planned, c.processed, c.accepted, c.rejected) == (5000, 5000, 5000, 0)
    store = ExtractStore(redis, status.id)
    assert await store.level_size(0) == 1000  # distinct fine labels
    state = await store.state()
    assert int(state["round"]) + 1 >= 3  # 1000 labels -> 100 -> 20 -> the final list: three rounds
    assert await store.level_size(1) == 100 and await store.level_size(2) == 20

    assert found is not None and found.ref == status.result == "seeded@1"
    assert {s.name for s in found.skills} == {coarse_of(i) for i in range(5000)}
    assert all(s.frequency == 250 for s in found.skills)
    for skill in found.skills:  # exemplars: the skill's first rows, in row order
        rows = [i for i in range(5000) if coarse_of(i) == skill.name][:MAX_EXEMPLARS]
        assert [e.split("\n\n")[0] for e in skill.examples] == [row_text(i, hierarchical_label(i)) for i in rows]
        assert skill.description
    assert found.query_types and all(q.name == q.name.lower() for q in found.query_types)


async def test_ten_thousand_distinct_labels(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    """Every row its own label: no merge call can see them all, yet they end in at most max_skills."""
    write_jsonl(tmp_path / "seed.jsonl", 10_500, label=lambda i: f"g{i % 7}_h{i // 7 % 6}_k{i // 42 % 10}_r{i}")
    settings = settings_for(tmp_path, await fake_llm.astart())
    body = dataset_body(rows_per_call=50, max_skills=42)
    status, found = await run_job(redis, settings, body)
    assert status.state == "completed", status.message
    assert await ExtractStore(redis, status.id).level_size(0) == 10_500
    assert merge_batch_size(ExtractDatasetSpec.model_validate(body)) < 10_500 // 20  # really in rounds
    assert found is not None and len(found.skills) == 42
    assert sum(s.frequency or 0 for s in found.skills) == 10_500


async def test_off_list_answers_are_re_asked_three_times(
    redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "seed.jsonl", 1000)
    fake = await fake_llm.astart()
    settings = settings_for(tmp_path, fake)
    clean, _ = await run_job(redis, settings, dataset_body("clean", max_skills=20))
    assert clean.state == "completed" and clean.counters.accepted == 1000

    await fake.aconfigure(extract_offlist_rate=1.0)
    status, found = await run_job(redis, settings, dataset_body("never", max_skills=20))
    assert status.state == "failed" and found is None
    assert "no row was mapped" in status.message
    c = status.counters
    assert (c.accepted, c.rejected, c.rejected_by_reason) == (0, 1000, {"off_list": 1000})
    map_calls = 1000 // 20  # one per 20 rows
    # same label and merge calls as the clean run; each map call asked 4 times; no query-types call
    assert c.llm_calls == clean.counters.llm_calls - 1 + 3 * map_calls
    rows = await unlabelled(redis, status.id)
    assert sorted(r.row for r in rows) == list(range(1000))
    assert all(r.phase == "map" and r.reason == "off_list" and "not on the list" in r.detail for r in rows)
    assert all(r.text.startswith(f"Question {r.row}:") for r in rows)


async def test_every_row_ends_mapped_or_reported(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    """2,000 rows, 30% off-list and 15% garbage answers: retries recover most, the rest are reported."""
    write_jsonl(tmp_path / "seed.jsonl", 2000)
    settings = settings_for(tmp_path, await fake_llm.astart(extract_offlist_rate=0.3, extract_garbage_rate=0.15))
    status, found = await run_job(redis, settings, dataset_body(max_skills=20))
    assert status.state == "completed", status.message
    c = status.counters
    assert c.accepted + c.rejected == 2000 and c.processed == 2000
    assert 1500 < c.accepted < 2000 and c.parse_failures > 0
    assert set(c.rejected_by_reason) <= {"off_list", "unparseable"} and sum(c.rejected_by_reason.values()) == c.rejected

    store = ExtractStore(redis, status.id)
    mapped = await store.row_values("map", list(range(2000)))
    fine = await store.row_values("fine", list(range(2000)))
    reported = await unlabelled(redis, status.id)
    reported_rows = {r.row for r in reported}
    assert len(reported) == len(reported_rows) == c.rejected  # each row reported once
    for i in range(2000):
        if i in reported_rows:  # reported in the label phase (never mapped) or in the map phase
            assert (fine[i] == "" and mapped[i] is None) or (fine[i] and mapped[i] == "")
        else:
            assert mapped[i] == coarse_of(i)  # the fake maps each label to its own coarse skill
    assert "map" in {r.phase for r in reported}  # (label-phase reports: test_unparseable_labels_...)
    assert found is not None and sum(s.frequency or 0 for s in found.skills) == c.accepted


async def test_small_steps_give_the_same_set_and_redoing_counts_nothing_twice(
    redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "seed.jsonl", 1500)
    settings = settings_for(tmp_path, await fake_llm.astart())
    body = dataset_body(merge_batch=50, max_skills=20, rows_per_call=10)
    whole, a = await run_job(redis, settings, body)
    sliced, b = await run_job(redis, settings, body, slice_s=0.0)  # hand over after every window
    assert a is not None and b is not None and (a.version, b.version) == (1, 2)
    assert a.model_dump(exclude={"version"}) == b.model_dump(exclude={"version"})
    assert whole.counters.model_dump() == sliced.counters.model_dump()

    # A worker killed mid-step has its step redone from the last saved place: nothing counts twice.
    store = ExtractStore(redis, sliced.id)
    await store.set_state(phase="label", label_row=0, label_offset=0, map_row=0, map_offset=0)
    await redis.hset(keys.meta(sliced.id), "state", JobState.RUNNING.value)  # as when its worker died (a
    # finished job's calls are refused before they leave)
    record = await records.load_record(redis, sliced.id)
    assert record is not None
    await run_steps(redis, settings, record)
    again = await records.get_status(redis, sliced.id)
    assert again is not None
    assert again.counters.model_dump(exclude={"llm_calls", "prompt_tokens", "completion_tokens"}) == (
        sliced.counters.model_dump(exclude={"llm_calls", "prompt_tokens", "completion_tokens"})
    )
    assert again.result == sliced.result  # no third version


async def test_unparseable_labels_are_retried_then_reported(
    redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "seed.jsonl", 200)
    settings = settings_for(tmp_path, await fake_llm.astart(extract_garbage_rate=1.0))
    status, found = await run_job(redis, settings, dataset_body())
    assert status.state == "failed" and "no row got a usable label" in status.message and found is None
    c = status.counters
    assert c.rejected == 200 and c.rejected_by_reason == {"unparseable": 200} and c.processed == 200
    assert c.llm_calls == 3 * (200 // 20) and c.parse_failures == c.llm_calls
    rows = await unlabelled(redis, status.id)
    assert sorted(r.row for r in rows) == list(range(200))
    assert all(r.phase == "label" and "unusable" in r.detail for r in rows)


async def test_empty_rows_are_reported_not_dropped(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    lines = [{"instruction": row_text(i, hierarchical_label(i))} for i in range(40)]
    lines[7] = {"instruction": "   ", "output": "orphan answer"}
    (tmp_path / "seed.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    settings = settings_for(tmp_path, await fake_llm.astart())
    status, _ = await run_job(redis, settings, dataset_body())
    assert status.state == "completed" and status.counters.accepted == 39
    assert [(r.row, r.reason) for r in await unlabelled(redis, status.id)] == [(7, "empty_row")]


async def test_parquet_chat_rows_and_first_n(redis: ArqRedis, fake_llm: FakeLLMFactory, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [
        [{"role": "user", "content": row_text(i, hierarchical_label(i))}, {"role": "assistant", "content": "ok"}]
        for i in range(600)
    ]
    pq.write_table(pa.table({"messages": messages}), tmp_path / "chat.parquet", row_group_size=128)
    settings = settings_for(tmp_path, await fake_llm.astart())
    body = dataset_body(source={"path": "chat.parquet"}, rows=500, max_skills=20)
    status, found = await run_job(redis, settings, body, slice_s=0.0)  # resumes mid row group
    assert status.state == "completed" and status.count == 500 and status.counters.accepted == 500
    assert found is not None and sum(s.frequency or 0 for s in found.skills) == 500
    assert found.skills[0].examples[0].startswith("user: Question")
    coarse = orjson.loads(await ExtractStore(redis, status.id).coarse() or b"[]")
    assert len(coarse) == 20

"""Fair share between jobs: a job submitted behind a big one interleaves with it instead of waiting (issue #11.8).

arq runs the lowest ready queue score first. With plain ``enqueue_job`` every chunk's score is its enqueue
time, so the queue is FIFO and a small job waits behind every chunk of a big job enqueued before it.
``queue.fair_start`` gives a new job's chunks scores from the queue's head instead (virtual time).
"""

from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from schemas.jobs import JobRecord, PromptsJobSpec
from store import keys, queue, records
from tests import keyed
from tests.conftest import Processes, service_env
from tests.test_end_to_end import finished, wait_for


def record_for(job_id: str, n: int, chunk_size: int = 4) -> JobRecord:
    """A job of its own team (``team-{job_id}``): fair share between teams is one job's share each."""
    spec = PromptsJobSpec.model_validate({"prompts": [f"Say {job_id} {i}." for i in range(n)]})
    return JobRecord(team=f"team-{job_id}", id=job_id, spec=spec, endpoint="fake", model="fake-model",
                     chunk_size=chunk_size, created_at=datetime.now(UTC))  # fmt: skip


def submit(api: str, **spec: Any) -> str:
    response = keyed.post(f"{api}/v1/jobs", json=spec, timeout=60)  # 400 prompts on a busy machine
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def submit_in_process(redis: ArqRedis, job_id: str, n: int) -> JobRecord:
    record = record_for(job_id, n)
    await records.create_job(redis, record, planned=n)
    await queue.enqueue_planned(redis, record, 0, n)
    return record


async def queue_order(redis: ArqRedis) -> list[str]:
    """Job ids of the queued chunks in the order arq hands them out (lowest score first)."""
    return [m.decode().split(":")[2] for m in await redis.zrange(keys.QUEUE_NAME, 0, -1)]


async def test_jobs_interleave_one_to_one_and_a_top_up_queues_behind_its_own_backlog(redis: ArqRedis) -> None:
    big = await submit_in_process(redis, "big", 40)  # 10 chunks
    await submit_in_process(redis, "small", 8)  # 2 chunks
    await submit_in_process(redis, "third", 8)
    order = await queue_order(redis)
    # FIFO would be big x10, small x2, third x2; fair share deals the three jobs out in turn
    assert sorted(order[:6]) == ["big", "big", "small", "small", "third", "third"], order
    assert order[6:] == ["big"] * 8, order

    assert await queue.plan(redis, big, 40, 48)  # a top-up: its 2 chunks go after big's own 10
    order = await queue_order(redis)
    assert order[-2:] == ["big", "big"] and order.count("big") == 12, order


async def test_the_head_skips_chunks_a_worker_runs(redis: ArqRedis) -> None:
    """arq keeps a running chunk in its queue: a long-running one must not pull new jobs in front of the queue."""
    await submit_in_process(redis, "big", 40)
    first_two = [m.decode() for m in await redis.zrange(keys.QUEUE_NAME, 0, 1)]
    for arq_id in first_two:  # as arq's start_jobs marks a chunk it picked
        await redis.psetex(in_progress_key_prefix + arq_id, 60_000, b"1")
    head = await redis.zscore(keys.QUEUE_NAME, "skillmix:chunk:big:8-12")
    await submit_in_process(redis, "small", 4)
    assert await redis.zscore(keys.QUEUE_NAME, "skillmix:chunk:small:0-4") == head


def test_a_small_job_submitted_behind_a_big_one_finishes_first(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """One worker running 2 chunks at a time; 400 prompts in 100 chunks of 4, then a 4-prompt job.

    With the old plain enqueue the small job's one chunk would be queued behind every one of the big job's
    100 chunks (all enqueued at submit), so it could only start once >= 98 of them had started, with at least
    392 of the big job's items generated. Fair share puts it at the queue's head: it is done while most of the
    big job is still to do.
    """
    fake = fake_llm(rpm=0, latency_ms=150)
    env = service_env({"fake": fake.endpoint_settings()}, SKILLMIX_WORKER_MAX_JOBS="2")
    api = processes.api(env)
    processes.worker(env)
    big = submit(api, recipe="prompts", prompts=[f"Write about apples, take {i}." for i in range(400)],
                 chunk_size=4, dedup={"exact": False})  # fmt: skip
    wait_for(api, big, lambda s: s["counters"]["processed"] >= 8, timeout=60)
    small = submit(api, recipe="prompts", prompts=[f"Write about pears, take {i}." for i in range(4)],
                   chunk_size=4, dedup={"exact": False})  # fmt: skip
    done = wait_for(api, small, finished, timeout=60)
    big_status = wait_for(api, big, lambda s: True, timeout=5)
    assert done["state"] == "completed" and done["counters"]["accepted"] == 4, done
    left = 400 - big_status["counters"]["generated"]
    print(f"big job items left when the small one finished: {left} of 400")
    assert left >= 200, f"the small job waited behind the big one: only {left} of 400 big items left"
    assert wait_for(api, big, finished, timeout=120)["counters"]["accepted"] == 400

"""The MATH^2 review queue (``/v1/review``) through the real API and worker processes, real Redis and the fake
endpoint: listing with filters and cursor pages, an item's history, accept / edit / reject with versions and
409s, LLM help through the queue as a metered suggestion, and exports by review state."""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from schemas.review import HelpTask, ReviewVersion, Suggestion
from schemas.settings import Settings
from store import keys
from store import review as review_store
from tests import keyed
from tests.conftest import REDIS_URL, Processes, service_env
from tests.fake_llm import math_notation, math_truth
from tests.test_end_to_end import examples, finished, submit, wait_for
from tests.workers.test_math import MATH_SET
from workers.llm.replay import item_scope
from workers.math.equivalence import compare
from workers.meter import job_llm, replay_cache
from workers.recipes.math import MathRecipe
from workers.review import help as review_help
from workers.runner.resources import Resources


def by(name: str) -> str:
    """How the review history names a change made with key ``name`` of the test team."""
    return f"{name} (team {keyed.TEAM})"


PRICED = {"usd_per_mtok_prompt": 1.0, "usd_per_mtok_completion": 2.0}  # micro-dollars = tokens x price, exactly


def _stack(processes: Processes, fake_llm: Any) -> tuple[Any, str]:
    fake = fake_llm(rpm=0, latency_ms=2)
    settings = service_env({"fake": fake.endpoint_settings(**PRICED)})
    api = processes.api(settings)
    processes.worker(settings)
    keyed.post(f"{api}/v1/skill-sets", json=MATH_SET).raise_for_status()
    return fake, api


def _math_job(api: str, count: int, seed: int) -> str:
    job_id = submit(api, recipe="math", skill_set="mathskills@1", count=count, seed=seed, n_solves=3, n_validations=1)
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == count, status
    return job_id


def _list(api: str, **params: Any) -> dict[str, Any]:
    response = keyed.get(f"{api}/v1/review", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _item(api: str, job_id: str, item_id: str) -> dict[str, Any]:
    response = keyed.get(f"{api}/v1/review/{job_id}/{item_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _in_redis(fn: Any, *args: Any) -> Any:
    client = Redis.from_url(REDIS_URL)
    try:
        return await fn(client, *args)
    finally:
        await client.aclose()


def _url(api: str, item: dict[str, Any], action: str = "") -> str:
    return f"{api}/v1/review/{item['job_id']}/{item['id']}" + (f"/{action}" if action else "")


def test_queue_lists_every_passed_question_with_filters_and_cursor_pages(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    _, api = _stack(processes, fake_llm)
    jobs = sorted([_math_job(api, 5, seed=1), _math_job(api, 4, seed=2)])
    other = submit(api, recipe="prompts", prompts=["Say hi.", "Say bye."])
    wait_for(api, other, finished, timeout=30)

    everything = _list(api, limit=500)
    items = everything["data"]
    assert everything["next_cursor"] is None
    assert len(items) == 9 and all(i["state"] == "needs_review" and i["version"] == 1 for i in items)
    assert [(i["job_id"], i["index"]) for i in items] == sorted((i["job_id"], i["index"]) for i in items)
    assert {i["job_id"] for i in items} == set(jobs)  # the prompts job has no review queue
    for job_id in jobs:  # the job's count counts the questions waiting for review
        stored = {e["id"]: e for e in examples(api, job_id)}
        mine = [i for i in items if i["job_id"] == job_id]
        assert {i["id"] for i in mine} == set(stored)
        for i in mine:
            e = stored[i["id"]]
            assert (i["problem"], i["solution"], i["answer"]) == (e["instruction"], e["output"], e["answer"])
            assert i["skills"] == e["skills"] and len(i["skills"]) == 2

    pages, cursor, seen = 0, None, []
    while True:
        page = _list(api, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["data"]) <= 2
        seen += page["data"]
        pages, cursor = pages + 1, page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and [i["id"] for i in seen] == [i["id"] for i in items]

    first_job = _list(api, job=jobs[0])["data"]
    assert [i["id"] for i in first_job] == [i["id"] for i in items if i["job_id"] == jobs[0]]
    skill = items[0]["skills"][1]
    with_skill = _list(api, skill=skill)["data"]
    assert with_skill and [i["id"] for i in with_skill] == [i["id"] for i in items if skill in i["skills"]]

    target = items[3]
    accepted = keyed.post(_url(api, target, "accept"), json={"expected_version": 1}, key=keyed.named_key("alice"))
    assert accepted.status_code == 200 and accepted.json()["state"] == "accepted", accepted.text
    assert [i["id"] for i in _list(api, state="accepted")["data"]] == [target["id"]]
    waiting = _list(api, state="needs_review", job=target["job_id"])["data"]
    assert target["id"] not in {i["id"] for i in waiting}
    assert len(waiting) == len([i for i in items if i["job_id"] == target["job_id"]]) - 1

    assert keyed.get(f"{api}/v1/review", params={"cursor": "not-a-cursor"}).status_code == 422
    assert keyed.get(f"{api}/v1/review", params={"job": other}).status_code == 422
    assert keyed.get(f"{api}/v1/review", params={"job": "nope"}).status_code == 404


def test_edits_are_versions_with_who_when_what_and_a_stale_write_is_a_409(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    _, api = _stack(processes, fake_llm)
    job_id = _math_job(api, 3, seed=3)
    item = _list(api, job=job_id)["data"][0]
    detail = _item(api, job_id, item["id"])
    math = detail["example"]["math"]
    assert detail["item"] == item and detail["example"]["instruction"] == item["problem"]
    assert math["pair_check"]["valid"] and math["question_turns"] and len(math["solves"]) == 3 and math["vote"]
    assert [(v["version"], v["by"], v["action"]) for v in detail["history"]] == [(1, "system", "created")]

    alice, bob = keyed.named_key("alice"), keyed.named_key("bob")
    viewer = keyed.patch(_url(api, item), json={"expected_version": 1, "problem": "x y z?"}, key=keyed.VIEWER)
    assert viewer.status_code == 403 and "viewer" in viewer.text  # a viewer's key reads, never writes
    assert keyed.patch(_url(api, item), json={"expected_version": 1}, key=alice).status_code == 422

    new_problem = item["problem"] + " Give the answer as a reduced fraction."
    edited = keyed.patch(_url(api, item), json={"expected_version": 1, "problem": new_problem}, key=alice)
    assert edited.status_code == 200, edited.text
    assert edited.json()["version"] == 2 and edited.json()["problem"] == new_problem
    assert edited.json()["updated_by"] == by("alice") and edited.json()["state"] == "needs_review"

    stale = keyed.patch(_url(api, item), json={"expected_version": 1, "solution": "Bob's solution."}, key=bob)
    assert stale.status_code == 409, stale.text
    assert stale.json()["current_version"] == 2 and stale.json()["item"]["problem"] == new_problem
    now = _item(api, job_id, item["id"])["item"]
    assert now["version"] == 2 and now["problem"] == new_problem and now["solution"] == item["solution"]

    retried = keyed.patch(_url(api, item), json={"expected_version": 2, "solution": "Bob's solution."}, key=bob)
    assert retried.status_code == 200 and retried.json()["version"] == 3
    assert retried.json()["problem"] == new_problem and retried.json()["solution"] == "Bob's solution."

    history = _item(api, job_id, item["id"])["history"]
    assert [(v["version"], v["by"], v["action"]) for v in history] == [
        (1, "system", "created"),
        (2, by("alice"), "edit"),
        (3, by("bob"), "edit"),
    ]
    assert history[1]["changes"] == {"problem": {"old": item["problem"], "new": new_problem}}
    assert history[2]["changes"] == {"solution": {"old": item["solution"], "new": "Bob's solution."}}
    assert history[1]["at"] <= history[2]["at"]

    # two reviewers racing on the same version: exactly one wins, the other gets 409, nothing is lost
    def race(who: str) -> httpx.Response:
        body = {"expected_version": 3, "answer": f"answer {racers.index(who)}"}
        return keyed.patch(_url(api, item), json=body, key=who)

    racers = [keyed.named_key(f"r{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(race, racers))
    wins = [r for r in results if r.status_code == 200]
    assert len(wins) == 1 and all(r.status_code == 409 for r in results if r not in wins), [
        r.status_code for r in results
    ]
    final = _item(api, job_id, item["id"])
    assert final["item"]["version"] == 4 and final["item"]["answer"] == wins[0].json()["answer"]
    assert len(final["history"]) == 4 and final["history"][-1]["by"] == wins[0].json()["updated_by"]

    # the version check is atomic with the write: a writer that read version 4 just before another reviewer's
    # write loses, whatever the timing of the requests above
    read_before = asyncio.run(_in_redis(review_store.get, job_id, item["id"]))
    assert read_before is not None and read_before.version == 4
    late = {"expected_version": 4, "answer": "dave's answer"}
    assert keyed.patch(_url(api, item), json=late, key=keyed.named_key("dave")).status_code == 200
    entry = ReviewVersion(version=5, by="eve", at=read_before.updated_at, action="edit")
    newer = read_before.model_copy(update={"version": 5, "answer": "x"})
    with pytest.raises(review_store.Stale):
        asyncio.run(_in_redis(review_store.write, read_before, 4, newer, entry))
    assert _item(api, job_id, item["id"])["item"]["answer"] == "dave's answer"

    no_reason = keyed.post(_url(api, item, "reject"), json={"expected_version": 5}, key=alice)
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    rejected = keyed.post(
        _url(api, item, "reject"), json={"expected_version": 5, "reason": "skill B is not needed"}, key=alice
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["state"] == "rejected" and rejected.json()["reject_reason"] == "skill B is not needed"
    last = _item(api, job_id, item["id"])["history"][-1]
    assert (last["version"], last["by"], last["action"], last["reason"]) == (
        6,
        by("alice"),
        "reject",
        "skill B is not needed",
    )
    assert last["changes"]["state"] == {"old": "needs_review", "new": "rejected"}
    # the stored example is provenance: never changed by review
    assert {e["id"]: e for e in examples(api, job_id)}[item["id"]]["instruction"] == item["problem"]


def _settled(api: str, fake: Any, job_id: str) -> tuple[int, int]:
    """(fake's requests, job's llm_calls) once neither moves (calls cut short at completion have landed)."""
    last = (-1, -1)
    for _ in range(40):
        now = (fake.stats()["requests"], keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]["llm_calls"])
        if now == last:
            return now
        last = now
        time.sleep(0.3)
    raise AssertionError(f"counts did not settle: {last}")


def _counters(api: str, job_id: str) -> dict[str, int]:
    counters: dict[str, int] = keyed.get(f"{api}/v1/jobs/{job_id}").json()["counters"]
    return counters


def _help(api: str, item: dict[str, Any], **request: Any) -> dict[str, Any]:
    response = keyed.post(_url(api, item, "help"), json=request, key=keyed.named_key("alice"))
    assert response.status_code == 202, response.text
    sid = response.json()["suggestion_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found: list[dict[str, Any]] = [
            s for s in _item(api, item["job_id"], item["id"])["item"]["suggestions"] if s["id"] == sid
        ]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no suggestion {sid} after 30 s")


def test_help_comes_back_through_the_queue_as_a_metered_suggestion(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    fake, api = _stack(processes, fake_llm)
    job_id = _math_job(api, 2, seed=4)
    item = _list(api, job=job_id)["data"][0]
    p, q = math_truth(item["problem"])
    assert item["answer"] == math_notation(p, q, 0.0)
    requests0, calls0 = _settled(api, fake, job_id)
    spent0 = _counters(api, job_id)

    # the reviewer breaks the answer, then asks for a re-solve and a check of the edit
    wrong = str(p + 1000)
    alice = keyed.named_key("alice")
    edited = keyed.patch(_url(api, item), json={"expected_version": 1, "answer": wrong}, key=alice).json()
    resolve = _help(api, item, kind="resolve")
    assert resolve["status"] == "pending" and resolve["requested_by"] == by("alice") and resolve["llm_calls"] == 3
    assert "differs" in resolve["text"] and compare(resolve["proposed"]["answer"], item["answer"])
    requests1, calls1 = _settled(api, fake, job_id)
    assert requests1 - requests0 == calls1 - calls0 == 3  # the n_solves re-solves, metered to the job
    spent1 = _counters(api, job_id)  # and charged to it, at the endpoint's prices
    prompt, completion = (spent1[k] - spent0[k] for k in ("prompt_tokens", "completion_tokens"))
    assert prompt > 0 and spent1["cost_micro_usd"] - spent0["cost_micro_usd"] == prompt + 2 * completion

    check = _help(api, item, kind="check_edit", note="I changed the answer")
    assert check["status"] == "pending" and check["text"].startswith("Check: not consistent"), check
    requests2, calls2 = _settled(api, fake, job_id)
    assert requests2 - requests1 == calls2 - calls1 == 1

    skill = item["skills"][1]
    revised = _help(api, item, kind="make_skill_necessary", skill=skill)
    assert revised["proposed"]["problem"] == f"Revised so that {skill} is necessary: {item['problem']}", revised
    assert revised["proposed"]["answer"] and revised["proposed"]["solution"]
    requests3, calls3 = _settled(api, fake, job_id)
    assert requests3 - requests2 == calls3 - calls2 == 1

    # suggestions are versions by "llm" and never change the problem, solution or answer
    detail = _item(api, job_id, item["id"])
    now = detail["item"]
    assert (now["problem"], now["solution"], now["answer"]) == (item["problem"], item["solution"], wrong)
    assert now["version"] == edited["version"] + 3 and len(now["suggestions"]) == 3
    assert [(v["by"], v["action"], v["changes"]) for v in detail["history"][-3:]] == [("llm", "suggestion", {})] * 3
    assert [v["suggestion_id"] for v in detail["history"][-3:]] == [s["id"] for s in now["suggestions"]]

    bad = keyed.post(_url(api, item, "help"), json={"kind": "make_skill_necessary", "skill": "nope"}, key=alice)
    assert bad.status_code == 422
    assert keyed.post(_url(api, item, "help"), json={"kind": "resolve"}, key=keyed.VIEWER).status_code == 403


def test_a_rerun_help_request_replays_the_answers_it_already_got(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """Review help is metered and replayed: a request whose worker died after its answers arrived, before its
    suggestion was stored, runs again without paying for them (the endpoint sees no new request)."""
    fake, api = _stack(processes, fake_llm)
    job_id = _math_job(api, 1, seed=6)
    item_id = _list(api, job=job_id)["data"][0]["id"]
    _settled(api, fake, job_id)
    asyncio.run(_killed_then_rerun(job_id, item_id, fake))


async def _killed_then_rerun(job_id: str, item_id: str, fake: Any) -> None:
    client = ArqRedis.from_url(REDIS_URL)
    res = Resources(client, Settings(redis_url=REDIS_URL, endpoints={"fake": fake.endpoint_settings(**PRICED)}))
    try:
        task = HelpTask(job_id=job_id, item_id=item_id, suggestion_id="s1", help="resolve", by="alice")
        found = await res.recipe(job_id)
        item = await review_store.get(client, job_id, item_id)
        assert found is not None and item is not None
        record, recipe = found
        assert isinstance(recipe, MathRecipe)
        for _ in range(300):  # retired by the watchdog (which drops a job's kept answers as it retires it)
            if not await client.sismember(keys.ACTIVE_JOBS, job_id):
                break
            await asyncio.sleep(0.1)
        calls0 = int(await client.hget(keys.counters(job_id), "llm_calls") or 0)
        # the first run: its answers arrive (and are kept), then it dies before the suggestion is stored
        replay = await replay_cache(res, client, job_id, "help-s1")
        llm = await job_llm(res, record, replay, refuse_when_finished=False)
        with item_scope(0, "help"):
            await review_help.run(recipe, llm, item, Suggestion(id="s1", kind="resolve", requested_by="alice"))
        for _ in range(100):  # the answers and counts are written fire-and-forget: poll what landed
            if await client.hlen(keys.replay(job_id, "help-s1")) == 3:
                break
            await asyncio.sleep(0.05)
        paid = (await fake.astats())["requests"]
        assert int(await client.hget(keys.counters(job_id), "llm_calls") or 0) == calls0 + 3  # metered
        assert await client.hlen(keys.replay(job_id, "help-s1")) == 3  # kept

        assert await review_help.run_unit({"redis": client, "resources": res}, task, False) == {"stored": True}
        await res.tally.aclose()  # its replay hits and the drop go out now
        await asyncio.sleep(0.2)
        assert (await fake.astats())["requests"] == paid  # the rerun replayed all three solves
        assert int(await client.hget(keys.counters(job_id), "llm_calls") or 0) == calls0 + 3
        assert int(await client.hget(keys.counters(job_id), "replayed") or 0) >= 3
        stored = await review_store.get(client, job_id, item_id)
        assert stored is not None and [(x.id, x.llm_calls) for x in stored.suggestions] == [("s1", 3)]
        assert not await client.exists(keys.replay(job_id, "help-s1"))  # dropped once the suggestion is stored
    finally:
        await res.aclose()
        await client.aclose()


def test_export_serves_accepted_questions_with_edits_unless_asked(
    processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    _, api = _stack(processes, fake_llm)
    job_id = _math_job(api, 4, seed=6)
    items = _list(api, job=job_id)["data"]

    def export(**params: Any) -> list[dict[str, Any]]:
        response = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "math", **params})
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines() if line]

    assert export() == []  # nothing reviewed yet
    assert len(export(state="needs_review")) == 4

    a, b, c = items[0], items[1], items[2]
    bob = keyed.named_key("bob")
    edited = keyed.patch(_url(api, a), json={"expected_version": 1, "problem": "Edited: " + a["problem"]}, key=bob)
    assert edited.status_code == 200
    assert keyed.post(_url(api, a, "accept"), json={"expected_version": 2}, key=bob).status_code == 200
    assert keyed.post(_url(api, b, "accept"), json={"expected_version": 1}, key=bob).status_code == 200
    rejected = keyed.post(_url(api, c, "reject"), json={"expected_version": 1, "reason": "ambiguous"}, key=bob)
    assert rejected.status_code == 200

    default = {r["problem"]: r for r in export()}  # (in storage order, not the queue's)
    assert set(default) == {"Edited: " + a["problem"], b["problem"]}
    mine = default["Edited: " + a["problem"]]
    assert (mine["answer"], mine["solution"], mine["skills"]) == (a["answer"], a["solution"], a["skills"])
    assert {r["problem"] for r in export(state="accepted")} == set(default)
    assert [r["problem"] for r in export(state="needs_review")] == [items[3]["problem"]]
    everything = {r["problem"] for r in export(state="all")}
    assert everything == {"Edited: " + a["problem"], b["problem"], c["problem"], items[3]["problem"]}
    full = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "jsonl"}).text.splitlines()
    assert {json.loads(line)["id"] for line in full} == {a["id"], b["id"]}
    assert all(json.loads(line)["math"]["question_turns"] for line in full)  # the full record keeps its provenance
    assert keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"state": "bogus"}).status_code == 422

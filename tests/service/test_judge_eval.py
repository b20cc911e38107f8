"""`skillmix judge-eval` end to end: the real CLI, API and worker processes on real Redis, against the fake
endpoint playing a scripted judge (hidden labels by the sha256 of each response, set noise, malformed answers).
Every number of the report is recomputed here from the script, independently: rates per threshold and kind,
the chosen threshold, the error count (an answer unreadable twice is an error, never a pass), AUC, the length
correlation, calls; then the chosen threshold saved as a profile that a job spec references."""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis

from schemas.curation import JudgeSettings
from schemas.examples import GeneratedItem
from schemas.jobs import JobRecord, JudgeEvalJobSpec
from schemas.settings import EndpointSettings
from store import records
from tests import keyed
from tests.conftest import REPO, Processes, service_env
from tests.fake_llm import _JUDGE_CRITERION, FakeConfig, response_sha, scripted_malformed, scripted_scores
from workers.curate.judge import CRITERIA, parse_judgement
from workers.recipes.judge_eval import JudgeEvalRecipe

TOPICS = ["sourdough starters", "binary search", "tax brackets", "tide tables", "bike gears", "SQL indexes",
          "compost heaps", "bond yields", "guitar tuning", "password hashing", "rain gardens",
          "cache eviction"]  # fmt: skip
BAD_KINDS = ["generic", "wrong_fact", "drops_skill"]


def skillmix(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=240,
    )


def good_answer(topic: str, i: int, words: int = 70) -> str:
    steps = [
        f"Step {n}: for {topic}, measure item {n * 7 + i} at {n + 3} units, then compare it with case {n + i}."
        for n in range(1, 1 + words // 16)
    ]
    return f"Here is a concrete plan for {topic} (variant {i}).\n\n" + "\n".join(steps) + f"\n\nResult: {i + 11}."


def bad_answer(topic: str, kind: str, i: int) -> str:
    if kind == "generic":
        return (
            f"There are many things to consider about {topic}. It depends on your situation and your goals. "
            "Generally, it is a good idea to do some research, think carefully, and consult an expert when "
            f"in doubt. Every case is different, so results may vary (note {i})."
        )
    if kind == "wrong_fact":
        return good_answer(topic, i) + f" Also, {topic} were invented in {1200 + i} by a committee of owls."
    return f"Regarding {topic}: " + " ".join(f"Point {n}: a sentence about {topic} number {n + i}." for n in range(8))


def labelled_set(n_good: int, n_bad: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n_good):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"instruction": f"Explain {topic} to me with worked numbers, case {i}.",
                     "output": good_answer(topic, i), "label": "good"})  # fmt: skip
    for i in range(n_bad):
        topic, kind = TOPICS[(i + 5) % len(TOPICS)], BAD_KINDS[i % len(BAD_KINDS)]
        bad: dict[str, Any] = {"instruction": f"Explain {topic} to me with worked numbers, case b{i}.",
               "output": bad_answer(topic, kind, i), "label": "bad", "kind": kind}  # fmt: skip
        if kind == "drops_skill":
            bad["skills"] = ["knitting_patterns", "orbital_mechanics"]
        rows.append(bad)
    return rows


def scripted(rows: list[dict[str, Any]], config: FakeConfig) -> list[tuple[dict[str, int], str]]:
    """What the judge records for each row: the fake's scripted scores for the criteria the judge's own prompt
    asks (per skill too), read back by the judge's parser (``uses_all_skills``: the lowest skill score)."""
    spec = JudgeEvalJobSpec.model_validate({"judge": "judge", "examples": rows})
    record = JobRecord(id="x", spec=spec, endpoint="judge", model="m", chunk_size=10, created_at=datetime.now(UTC))
    recipe = JudgeEvalRecipe(record, "judge", EndpointSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    found = []
    for i, row in enumerate(rows):
        item = GeneratedItem(job_id="x", index=i, skills=row.get("skills", []), instruction=row["instruction"],
                             input=row.get("input", ""), output=row["output"])  # fmt: skip
        prompt = next(m.content for m in recipe.judge.messages(item) if m.role == "user")
        asked = list(dict.fromkeys(_JUDGE_CRITERION.findall(prompt)))
        answer = scripted_scores(row["output"], asked, config)
        assert answer is not None
        body = json.dumps({"scores": answer[0], "verdict": answer[1], "reason": "scripted"})
        scores, passed, _ = parse_judgement(body, item.skills)
        found.append((scores, "pass" if passed else "fail"))
    return found


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def expected_heuristics(rows: list[dict[str, Any]]) -> list[bool]:
    """What the recipe's checks decide (the checks themselves are tested in tests/workers/test_quality.py)."""
    spec = JudgeEvalJobSpec.model_validate({"judge": "judge", "examples": rows})
    record = JobRecord(id="x", spec=spec, endpoint="judge", model="m", chunk_size=10, created_at=datetime.now(UTC))
    recipe = JudgeEvalRecipe(record, "judge", EndpointSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    return [bool(recipe.heuristics(i)) for i in range(len(rows))]


def rates(rows: list[dict[str, Any]], rejected: list[bool]) -> dict[str, Any]:
    bad = [r for r, x in zip(rows, rejected, strict=True) if r["label"] == "bad"]
    caught = sum(x for r, x in zip(rows, rejected, strict=True) if r["label"] == "bad")
    good = len(rows) - len(bad)
    false_rejects = sum(x for r, x in zip(rows, rejected, strict=True) if r["label"] == "good")
    return {"bad": len(bad), "caught": caught, "catch_rate": caught / len(bad) if bad else None, "good": good,
            "false_rejects": false_rejects, "false_reject_rate": false_rejects / good if good else None}  # fmt: skip


async def test_judge_eval_report_threshold_errors_and_profile(
    tmp_path: Path, processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    rows = labelled_set(30, 18)
    script = {response_sha(r["output"]): r["label"] for r in rows}
    knobs: dict[str, Any] = {"judge_script": script, "judge_noise": 0.15, "judge_malformed_rate": 0.3}
    fake = fake_llm(**knobs)
    config = FakeConfig(**knobs)
    env = service_env({"fake": fake.endpoint_settings(), "judge": fake.endpoint_settings()})
    api = processes.api(env)
    processes.worker(env)

    # the truth, from the script: scores, verdicts, which answers are unreadable twice (errors)
    criteria = list(CRITERIA)
    truth = scripted(rows, config)
    errors = [scripted_malformed(r["output"], 0, config) and scripted_malformed(r["output"], 1, config) for r in rows]
    retried = sum(scripted_malformed(r["output"], 0, config) for r in rows)
    assert 0 < sum(errors) < retried  # some retries rescue the answer, some do not
    heuristic = expected_heuristics(rows)
    judged = [i for i in range(len(rows)) if not errors[i]]
    assert any(r["label"] == "good" and truth[i] and truth[i][1] == "fail" for i, r in enumerate(rows))  # noise

    labelled = write_jsonl(tmp_path / "labelled.jsonl", rows)
    out = tmp_path / "out"
    done = skillmix("judge-eval", str(labelled), "-o", str(out), "--judge", "judge", "--max-false-reject", "0.25",
                    "--save-profile", "team-a-gpt4o", "--api", api, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["criteria"] == criteria
    assert (report["examples"], report["good"], report["bad"]) == (48, 30, 18)

    # errors: counted apart, by label, never as passes
    assert report["errors"]["total"] == sum(errors) == report["examples"] - report["judged"]
    assert report["errors"]["good"] == sum(e for e, r in zip(errors, rows, strict=True) if r["label"] == "good")
    assert report["errors"]["by_reason"] == {"unparseable": sum(errors)}
    assert report["cost"]["llm_calls"] == len(rows) + retried

    # every threshold, recomputed: reject when the verdict fails or the lowest score is under min_score
    sub = [rows[i] for i in judged]
    for t, found in zip(range(1, 6), report["curve"], strict=True):
        judge_rejects = [truth[i][1] == "fail" or min(truth[i][0].values()) < t for i in judged]
        assert found["min_score"] == t
        assert found["judge"] == rates(sub, judge_rejects)
        both = [h or j for h, j in zip([heuristic[i] for i in judged], judge_rejects, strict=True)]
        assert found["combined"] == rates(sub, both)
    for criterion in criteria:
        for t, found in zip(range(1, 6), report["criterion_curves"][criterion], strict=True):
            rejects = [truth[i][1] == "fail" or truth[i][0][criterion] < t for i in judged]
            assert found["judge"] == rates(sub, rejects)

    # the choice: most caught with false rejects <= 25%
    allowed = [p for p in report["curve"] if p["judge"]["false_reject_rate"] <= 0.25]
    best = max(allowed, key=lambda p: (p["judge"]["catch_rate"], -p["judge"]["false_reject_rate"], -p["min_score"]))
    assert report["chosen"]["min_score"] == best["min_score"] == report["judge_min_score"]
    assert report["judge"]["overall"] == best["judge"]
    assert report["heuristics"]["overall"] == rates(rows, heuristic)
    for kind in BAD_KINDS:
        mine = [i for i in judged if rows[i].get("kind") == kind]
        at = report["judge_min_score"]
        rejects = [truth[i][1] == "fail" or min(truth[i][0].values()) < at for i in mine]
        assert report["judge"]["per_kind"][kind] == rates([rows[i] for i in mine], rejects)

    # distributions and AUC (pairwise, ties half)
    overall = {i: min(truth[i][0].values()) for i in judged}
    good_scores = [overall[i] for i in judged if rows[i]["label"] == "good"]
    bad_scores = [overall[i] for i in judged if rows[i]["label"] == "bad"]
    assert report["score_distribution"]["good"] == {str(s): good_scores.count(s) for s in range(1, 6)}
    assert report["score_distribution"]["bad"] == {str(s): bad_scores.count(s) for s in range(1, 6)}
    pairs = [(g > b) + 0.5 * (g == b) for g in good_scores for b in bad_scores]
    assert abs(report["bias"]["auc"] - sum(pairs) / len(pairs)) < 1e-12
    assert report["bias"]["separates"] is True and "do not trust" not in done.stdout

    # the profile: saved from the chosen threshold, resolved into a job spec at submit
    saved = keyed.get(f"{api}/v1/quality-profiles/team-a-gpt4o").json()
    assert saved["judge"]["endpoint"] == "judge" and saved["judge"]["min_score"] == best["min_score"]
    assert saved["judge_eval"] == report["job_id"] and "team-a-gpt4o" in done.stdout
    spec = {"recipe": "prompts", "prompts": ["Say hi."], "quality": {"profile": "team-a-gpt4o"}}
    created = keyed.post(f"{api}/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    record = await records.load_record(redis, created.json()["id"])
    assert record is not None and record.spec.quality.profile == "team-a-gpt4o"
    assert record.spec.quality.judge == JudgeSettings(endpoint="judge", min_score=best["min_score"])
    unknown = keyed.post(f"{api}/v1/jobs", json={**spec, "quality": {"profile": "nobody-has-this"}})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "quality.profile"]
    assert "nobody-has-this" in unknown.json()["detail"][0]["msg"]


def test_useless_judge_is_flagged_bad_lines_named_and_the_bundled_model_refused(
    tmp_path: Path, processes: Processes, redis: ArqRedis, fake_llm: Any
) -> None:
    """Scores that do not separate good from bad (AUC exactly 0.5) and follow length on the good set (Spearman
    exactly 1): the CLI warns before anything else and will not save the profile."""
    rows = labelled_set(5, 5)
    for i, row in enumerate(rows[:5]):
        row["output"] = good_answer(TOPICS[i], i, words=40 + 30 * i)  # longer and longer
    scores = [1, 2, 3, 4, 5]
    script = {response_sha(r["output"]): str(scores[i % 5]) for i, r in enumerate(rows)}  # same scores both sides
    fake = fake_llm(judge_script=script)
    bundled = fake.endpoint_settings(model="SmolLM2-135M-Instruct.Q4_1")
    env = service_env({"judge": fake.endpoint_settings(), "local": bundled})
    api = processes.api(env)
    processes.worker(env)

    out = tmp_path / "out"
    done = skillmix("judge-eval", str(write_jsonl(tmp_path / "l.jsonl", rows)), "-o", str(out), "--judge", "judge",
                    "--save-profile", "useless", "--api", api, env=env)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["bias"]["auc"] == 0.5 and report["bias"]["separates"] is False
    assert report["bias"]["length_spearman"] == 1.0 and report["bias"]["length_bias"] is True
    assert report["errors"]["total"] == 0 and report["judged"] == 10
    text = " ".join(done.stdout.split())
    assert text.index("WARNING: this judge does not separate good from bad") < text.index("catch rate")
    assert "favours longer answers" in text and "not saving profile 'useless'" in text
    assert keyed.get(f"{api}/v1/quality-profiles/useless").status_code == 404

    # a bad line: the CLI names its line and field; the API its index and field
    broken = [*rows[:2], {"instruction": "Hi there, what now?", "output": "Fine.", "label": "meh"}]
    done = skillmix("judge-eval", str(write_jsonl(tmp_path / "b.jsonl", broken)), "-o", str(tmp_path / "b"),
                    "--judge", "judge", "--api", api, env=env)  # fmt: skip
    assert done.returncode == 2 and "line 3: label" in done.stdout, done.stdout
    refused = keyed.post(f"{api}/v1/judge-evals", json={"judge": "judge", "examples": broken})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "examples", 2, "label"]

    # the bundled 135M model cannot judge: refused at submit, naming the field, here and via /v1/jobs
    for url, body in ((f"{api}/v1/judge-evals", {"judge": "local", "examples": rows}),
                      (f"{api}/v1/jobs", {"recipe": "judge-eval", "judge": "local", "examples": rows})):  # fmt: skip
        refused = keyed.post(url, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "judge"]
        assert "cannot judge" in refused.json()["detail"][0]["msg"]

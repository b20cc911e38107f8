"""The `skillmix` command as a user runs it: clear messages for bad input, submit --wait, export."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis

from tests.conftest import REPO, Processes, service_env


def skillmix(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_bad_spec_files_get_a_message_not_a_traceback(tmp_path: Path) -> None:
    missing = skillmix("submit", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file" in missing.stdout and "Traceback" not in missing.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{recipe: instruct")
    result = skillmix("submit", str(broken))
    assert result.returncode == 2 and "not valid JSON" in result.stdout
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"recipe": "prompts", "prompts": ["hi"]}))
    nobody = skillmix("submit", str(good), "--api", "http://127.0.0.1:9")
    assert nobody.returncode == 2 and "no API answering at http://127.0.0.1:9" in nobody.stdout


def test_submit_wait_then_export(tmp_path: Path, processes: Processes, redis: ArqRedis, fake_llm: Any) -> None:
    fake = fake_llm(rpm=0, latency_ms=5)
    env = service_env({"fake": fake.endpoint_settings()})
    api = processes.api(env)
    processes.worker(env)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"recipe": "prompts"}))
    jsonl = tmp_path / "prompts.jsonl"
    lines = [json.dumps(f"Name a colour, {i}.") for i in range(10)]
    lines += [
        json.dumps({"prompt": "Name a colour, 10."}),
        json.dumps({"messages": [{"role": "user", "content": "Name a colour, 11."}]}),
    ]
    jsonl.write_text("\n".join(lines) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('"fine"\n{"promp": 1}\n')
    bad_line = skillmix("submit", str(spec), "--prompts", str(broken), "--api", api, env=env)
    assert bad_line.returncode == 2 and "broken.jsonl:2: expected a string" in bad_line.stdout
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"recipe": "prompts", "prompts": []}))
    bad = skillmix("submit", str(invalid), "--api", api, env=env)
    assert bad.returncode == 2 and "invalid prompts" in bad.stdout

    done = skillmix("submit", str(spec), "--prompts", str(jsonl), "--wait", "--api", api, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 of 12" in done.stdout and "completed" in done.stdout
    job_id = done.stdout.split("submitted job ")[1].split()[0]

    out = tmp_path / "out" / "data.json"
    exported = skillmix("export", job_id, "--format", "alpaca", "-o", str(out), "--api", api, env=env)
    assert exported.returncode == 0, exported.stdout
    rows = json.loads(out.read_text())
    assert len(rows) == 12 and {r["instruction"] for r in rows} == {f"Name a colour, {i}." for i in range(12)}
    unknown = skillmix("export", "nope", "-o", str(out), "--api", api, env=env)
    assert unknown.returncode == 2 and "not found" in unknown.stdout


def test_validation_errors_name_the_field_without_the_recipe_tag_for_every_recipe() -> None:
    """A 422's location carries the union tag (``body.math.k``); the CLI shows ``k`` for every recipe, also ones
    added after the list of tags was written (the tags come from the ``JobSpec`` union)."""
    from typing import get_args

    import httpx
    from pydantic import TypeAdapter, ValidationError

    from schemas.jobs import JobSpec
    from service.cli_common import console, print_validation_errors

    recipes = [m.model_fields["recipe"].default for m in get_args(get_args(JobSpec)[0])]
    assert {"instruct", "math", "eval-math", "curate", "extract-from-dataset"} <= set(recipes)
    for recipe in recipes:
        try:
            TypeAdapter(JobSpec).validate_python({"recipe": recipe, "not_a_field": 1})
        except ValidationError as exc:
            detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        assert any(d["loc"][1] == recipe for d in detail)  # pydantic puts the tag first
        with console.capture() as captured:
            print_validation_errors(httpx.Response(422, json={"detail": detail}))
        shown = captured.get()
        assert "invalid not_a_field:" in shown and f"invalid {recipe}." not in shown, (recipe, shown)

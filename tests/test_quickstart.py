"""The README's main job, for real: `quickstart` on the bundled model, end to end (marked local_llm)."""

import json
import stat
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from rich.console import Console

from schemas.settings import Settings
from service.quickstart import quickstart
from store import records, teams
from tests.conftest import REDIS_URL
from tests.test_local_llm import needs_model


@pytest.mark.local_llm
@needs_model
async def test_quickstart_runs_a_real_model_end_to_end(tmp_path: Path, redis: ArqRedis) -> None:
    out = tmp_path / "skillmix-out" / "quickstart.jsonl"
    console = Console(file=(tmp_path / "console.txt").open("w"), width=120)
    code = await quickstart(Settings(redis_url=REDIS_URL), out, count=3, console=console)
    console.file.close()
    transcript = (tmp_path / "console.txt").read_text()
    job_id = transcript.split("job     ")[1].split(":")[0]
    counters = {k.decode(): int(v) for k, v in (await redis.hgetall(f"skillmix:job:{job_id}:counters")).items()}
    assert counters["processed"] == counters["accepted"] + counters.get("rejected", 0)
    assert counters["llm_calls"] >= 3 * counters["processed"] > 0  # write, critique, refine: real calls
    state = (await redis.hget(f"skillmix:job:{job_id}:meta", "state")).decode()
    assert state == "completed", transcript
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == counters["accepted"]
    assert code == (0 if rows else 1)
    flat = " ".join(transcript.split())  # rich wraps long lines
    assert "LLM judge: off" in flat
    if len(rows) < 3:  # honest checks reject much of a 135M model's text: the quick start must say so plainly
        top = max(counters[k] for k in counters if k.startswith("rejected:"))
        assert "top rejection reasons:" in flat and str(top) in flat, transcript
        assert "SKILLMIX_LOCAL_MODEL=/path/model.gguf" in flat, transcript
    for row in rows:
        assert row["model"].startswith("SmolLM2") and row["endpoint"] == "local" and len(row["skills"]) == 2
        assert len(row["output"].split()) >= 40 and row["verdict"]["accepted"]
        assert row["conversation"][-1]["role"] == "assistant"
    assert "accepted" in transcript and str(out) in transcript

    # its own team and member key, said so, and the key in a file only its owner reads (never on the console)
    key_file = out.parent / "quickstart.key"
    raw = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    caller = await teams.lookup(redis, raw)
    assert caller is not None and (caller.team, caller.role.value) == ("quickstart", "member")
    assert raw not in transcript and f"quickstart: member key {raw[:12]}" in flat and str(key_file) in flat
    assert "export SKILLMIX_API_KEY=" in flat
    record = await records.load_record(redis, job_id)
    assert record is not None and record.team == "quickstart"

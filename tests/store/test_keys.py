"""Every key name lives in ``store.keys``: the ids the schemas build must agree with it, and every per-job key
starts with the job's own prefix (the watchdog and the exports find a job's keys by it)."""

import inspect

from schemas.jobs import ChunkTask, PhaseTask
from schemas.review import HelpTask
from store import keys


def test_arq_ids_match_the_key_module() -> None:
    chunk = ChunkTask(job_id="j1", start=8, stop=16)
    assert chunk.arq_id == keys.chunk_id("j1", 8, 16)
    assert chunk.arq_id.startswith(keys.chunk_id_prefix("j1"))
    assert not ChunkTask(job_id="j10", start=0, stop=8).arq_id.startswith(keys.chunk_id_prefix("j1"))
    assert PhaseTask(job_id="j1", step=3).arq_id == keys.phase_id("j1", 3)
    help_task = HelpTask(job_id="j1", item_id="i", suggestion_id="s1", help="resolve", by="ann")
    assert help_task.arq_id == keys.help_id("j1", "s1")
    for arq_id in (chunk.arq_id, keys.phase_id("j1", 3), help_task.arq_id):
        assert arq_id.startswith(f"{keys.PREFIX}:")  # every unit of the one function is under the prefix


def test_every_per_job_key_is_under_the_job() -> None:
    job_keys = [
        name
        for name, fn in vars(keys).items()
        if inspect.isfunction(fn)
        and list(inspect.signature(fn).parameters)[:1] == ["job_id"]
        and not name.startswith(("chunk_id", "phase_id", "help_id"))
    ]
    assert len(job_keys) > 30
    for name in job_keys:
        params = inspect.signature(getattr(keys, name)).parameters
        args = {
            "job_id": "j1",
            "kind": "accepted",
            "seq": 1,
            "start": 0,
            "example_id": "e",
            "r": 0,
            "row": 0,
            "endpoint": "ep",
        }
        key = getattr(keys, name)(**{p: args[p] for p in params})
        assert key.startswith(keys.job("j1")), name

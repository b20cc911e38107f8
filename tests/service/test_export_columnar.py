"""Columnar exports of a real job's stored examples: Parquet from the API and the CLI, and a Hugging Face
``datasets`` directory from the CLI that ``datasets.load_from_disk`` reads.

The job runs on a real API, worker and fake endpoint and stores more than two Redis buckets of examples, so
the exports must cross bucket boundaries; their row groups / record batches show they were written one
bucket at a time."""

import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from arq.connections import ArqRedis

from store import keys
from tests import keyed
from tests.conftest import Processes, service_env
from tests.service.test_cli import skillmix
from tests.test_end_to_end import examples, finished, submit, wait_for

N = 2 * keys.BUCKET_SIZE + 37  # three buckets: 1000, 1000, 37


@pytest.fixture
def stored_job(processes: Processes, redis: ArqRedis, fake_llm: Any) -> tuple[str, str, dict[str, str]]:
    """(api, job id, env) of a completed prompts job with N accepted examples stored in Redis."""
    fake = fake_llm(rpm=0)
    env = service_env({"fake": fake.endpoint_settings(max_concurrency=64)})
    api = processes.api(env)
    processes.worker(env)
    job_id = submit(api, recipe="prompts", prompts=[f"Name a colour, number {i}." for i in range(N)])
    status = wait_for(api, job_id, finished, timeout=120)
    assert status["state"] == "completed" and status["counters"]["accepted"] == N, status
    return api, job_id, env


def check_table(table: pa.Table, reference: list[dict[str, Any]]) -> None:
    """The columnar export holds exactly the jsonl export's records, in order, with typed nested columns."""
    assert table.num_rows == len(reference) == N
    assert table.column_names == list(reference[0])
    assert table.column("id").to_pylist() == [r["id"] for r in reference]
    assert table.column("instruction").to_pylist() == [r["instruction"] for r in reference]
    assert table.column("output").to_pylist() == [r["output"] for r in reference]
    assert table.schema.field("skills").type == pa.list_(pa.string())
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    first = table.slice(0, 1).to_pylist()[0]
    assert first["verdict"] == reference[0]["verdict"] and first["usage"] == reference[0]["usage"]
    assert first["conversation"] == reference[0]["conversation"] and len(first["conversation"]) >= 2


def test_parquet_export_from_the_api_and_the_cli(stored_job: tuple[str, str, dict[str, str]], tmp_path: Path) -> None:
    api, job_id, env = stored_job
    reference = examples(api, job_id)

    response = keyed.get(f"{api}/v1/jobs/{job_id}/export", params={"format": "parquet"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert f'filename="{job_id}.parquet"' in response.headers["content-disposition"]
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert sizes == [keys.BUCKET_SIZE, keys.BUCKET_SIZE, 37]  # written one stored bucket at a time
    check_table(parquet.read(), reference)
    # the temporary file the API wrote is gone once served
    deadline = time.monotonic() + 5
    while list(Path(tempfile.gettempdir()).glob(f"skillmix-export-{job_id}-*")):
        assert time.monotonic() < deadline, "the API left its temporary Parquet file behind"
        time.sleep(0.1)

    out = tmp_path / "out" / "data.parquet"
    done = skillmix("export", job_id, "--format", "parquet", "-o", str(out), "--api", api, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_bytes() == response.content
    assert keyed.get(f"{api}/v1/jobs/nope/export", params={"format": "parquet"}).status_code == 404


def test_hf_export_loads_with_datasets(stored_job: tuple[str, str, dict[str, str]], tmp_path: Path) -> None:
    import datasets  # the dev extra's; what a trainer would load the directory with

    api, job_id, env = stored_job
    reference = examples(api, job_id)

    target = tmp_path / "exports" / "colours"
    done = skillmix("export", job_id, "--format", "hf", "-o", str(target), "--api", api, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"({N} rows)" in done.stdout
    assert sorted(p.name for p in target.iterdir()) == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    assert list(target.parent.iterdir()) == [target]  # the downloaded Parquet was removed
    with ipc.open_stream(target / "data-00000-of-00001.arrow") as stream:  # the IPC stream format datasets uses
        assert [b.num_rows for b in stream] == [keys.BUCKET_SIZE, keys.BUCKET_SIZE, 37]

    ds = datasets.load_from_disk(str(target))
    assert len(ds) == N and ds.column_names == list(reference[0])
    check_table(ds.data.table, reference)
    row = ds[5]
    assert (row["id"], row["instruction"], row["output"]) == tuple(
        reference[5][k] for k in ("id", "instruction", "output")
    )
    assert row["verdict"]["accepted"] is True and row["skills"] == reference[5]["skills"]
    assert json.loads((target / "state.json").read_text())["_data_files"] == [{"filename": "data-00000-of-00001.arrow"}]

    again = skillmix("export", job_id, "--format", "hf", "-o", str(target), "--api", api, env=env)
    assert again.returncode == 2 and "not an empty directory" in again.stdout
    missing = skillmix("export", "nope", "--format", "hf", "-o", str(tmp_path / "x"), "--api", api, env=env)
    assert missing.returncode == 2 and "not found" in missing.stdout and not (tmp_path / "x").exists()

"""`skillmix curate FILE -o DIR` end to end: the real CLI, API and worker processes on real Redis, no endpoint.

Every format a team brings (Alpaca JSON list, Alpaca JSONL, ShareGPT `conversations`, OpenAI `messages`,
Parquet) gets the same planted rows: good answers, a refusal, a cut-off answer and an exact duplicate. The
shirkers and the duplicate must land in rejected.jsonl with their reasons, everything else in accepted.jsonl,
both in input order and with every input field (unknown ones included) exactly as given.
"""

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from arq.connections import ArqRedis

from schemas.examples import Example
from schemas.jobs import CurateJobSpec, JobRecord
from store import keys
from tests import keyed
from tests.conftest import REPO, Processes, service_env

GOOD = [
    (
        "Explain how photosynthesis works in green plants.",
        "Photosynthesis happens in the chloroplasts of green plant cells. Chlorophyll absorbs red and blue light, "
        "and that energy splits water molecules into oxygen, protons and electrons. The oxygen leaves through the "
        "stomata. The electrons drive the light reactions, which make ATP and NADPH. In the Calvin cycle the enzyme "
        "RuBisCO fixes carbon dioxide into three-carbon sugars, which the plant turns into glucose and starch.",
    ),
    (
        "Describe how a bicycle derailleur changes gears.",
        "A rear derailleur is a spring-loaded arm that guides the chain across the cassette. When you push the "
        "shifter, the cable tightens and pulls the parallelogram inward, so the jockey wheels push the chain onto a "
        "larger cog. Releasing cable lets the spring move the chain outward to a smaller cog. The lower jockey wheel "
        "also takes up chain slack, keeping tension steady whichever cog and chainring combination you ride in.",
    ),
    (
        "Summarise the causes of the French Revolution.",
        "Several pressures combined in 1789. The monarchy was nearly bankrupt after funding wars, including support "
        "for the American colonists. Taxes fell mostly on the Third Estate while clergy and nobles kept privileges. "
        "Poor harvests pushed bread prices up, so Parisian workers went hungry. Enlightenment writers such as "
        "Rousseau and Voltaire questioned absolute rule, and the Estates-General gave the commoners a stage.",
    ),
    (
        "How do vaccines train the immune system?",
        "A vaccine shows the immune system a harmless version of a pathogen: an inactivated virus, a protein "
        "subunit, or mRNA that makes cells produce one antigen. Dendritic cells present that antigen to T cells, and "
        "B cells start producing matching antibodies. Some of those B and T cells become long-lived memory cells. If "
        "the real pathogen arrives later, memory cells recognise it within days instead of weeks.",
    ),
    (
        "Give tips for brewing pour-over coffee at home.",
        "Start with freshly roasted beans and grind them medium-fine, like table salt, right before brewing. Use "
        "about fifteen grams of coffee per 250 millilitres of water heated to roughly 94 degrees Celsius. Rinse the "
        "paper filter to remove papery taste and preheat the dripper. Bloom the grounds with twice their weight in "
        "water for thirty seconds, then pour slowly in spirals so the brew finishes in about three minutes.",
    ),
    (
        "What are the main differences between TCP and UDP?",
        "TCP opens a connection with a three-way handshake, numbers every byte, retransmits lost segments and "
        "delivers data in order, with flow and congestion control. UDP sends independent datagrams with no "
        "handshake, no ordering and no retransmission, so it has lower latency and smaller headers. Web pages, email "
        "and file transfers use TCP, while DNS lookups, live video, voice calls and online games often prefer UDP.",
    ),
]
REFUSAL = ("Write a short poem about the ocean at night.", "I'm sorry, but I can't help with that request.")
CUT_OFF = (
    "Explain how a refrigerator keeps food cold.",
    "A refrigerator moves heat from inside the cabinet to the kitchen. A compressor squeezes refrigerant gas, "
    "raising its temperature, and the hot gas releases heat through the condenser coils at the back. The liquid "
    "then passes an expansion valve, where its pressure drops sharply, and in the evaporator coils it absorbs heat "
    "from the food compartment while it boils back into a gas, and then the",
)
DUPLICATE = (GOOD[0][0], GOOD[0][1].replace("starch.", "starch for growth."))
# Input order: the planted rows sit between good ones; the duplicate comes after the row it copies.
PAIRS = [GOOD[0], GOOD[1], REFUSAL, GOOD[2], DUPLICATE, CUT_OFF, GOOD[3], GOOD[4], GOOD[5]]
EXPECTED_REJECTED = {2: "refusal", 4: "exact_duplicate", 5: "incomplete"}
EXPECTED_ACCEPTED = [i for i in range(len(PAIRS)) if i not in EXPECTED_REJECTED]


def alpaca_rows() -> list[dict[str, Any]]:
    """Alpaca rows with fields the service does not know, of every JSON type, in a non-alphabetical order."""
    return [
        {
            "id": f"row-{i}",
            "instruction": q,
            "input": "",
            "output": a,
            " Note ": f" kept as given {i} ",
            "meta": {"source": "team-a", "score": 0.5 + i, "tags": ["x", i], "reviewed": i % 2 == 0, "note": None},
        }
        for i, (q, a) in enumerate(PAIRS)
    ]


def sharegpt_rows() -> list[dict[str, Any]]:
    return [
        {
            "conversations": [
                {"from": "system", "value": "You are a helpful assistant."},
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
            ],
            "id": i,
            "lang": "en",
        }
        for i, (q, a) in enumerate(PAIRS)
    ]


def messages_rows() -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "uid": f"u{i}", "w": 1.25}
        for i, (q, a) in enumerate(PAIRS)
    ]


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    flat = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"], "id": r["id"]} for r in rows]
    for i, row in enumerate(flat):
        row["score"] = i / 4
    pq.write_table(pa.Table.from_pylist(flat), path, row_group_size=4)  # several row groups


FORMATS: dict[str, tuple[str, Callable[[], list[dict[str, Any]]], Callable[[Path, list[dict[str, Any]]], None]]] = {
    "alpaca-json": ("data.json", alpaca_rows, write_json),
    "alpaca-jsonl": ("data.jsonl", alpaca_rows, write_jsonl),
    "sharegpt": ("chats.jsonl", sharegpt_rows, write_jsonl),
    "messages": ("chats.jsonl", messages_rows, write_jsonl),
    "parquet": ("data.parquet", alpaca_rows, write_parquet),
}


def start(processes: Processes) -> str:
    env = service_env()  # no endpoint configured at all: curation without a judge calls no LLM
    api = processes.api(env)
    processes.worker(env)
    return api


def run_cli(api: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "curate", *args, "--api", api],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**service_env(), "COLUMNS": "200"},
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_curate_each_format(fmt: str, processes: Processes, redis: ArqRedis, tmp_path: Path) -> None:
    name, make, write = FORMATS[fmt]
    rows = make()
    src = tmp_path / name
    write(src, rows)
    if fmt == "parquet":
        rows = pq.read_table(src).to_pylist()  # what the file holds, as plain values
    api = start(processes)
    out = tmp_path / "out"
    done = run_cli(api, str(src), "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    accepted, rejected = read_jsonl(out / "accepted.jsonl"), read_jsonl(out / "rejected.jsonl")
    # every input field kept verbatim (unknown ones, nested ones, key order), in input order
    assert accepted == [rows[i] for i in EXPECTED_ACCEPTED]
    assert [list(r) for r in accepted] == [list(rows[i]) for i in EXPECTED_ACCEPTED]
    assert [{k: v for k, v in r.items() if k != "reasons"} for r in rejected] == [rows[i] for i in EXPECTED_REJECTED]
    assert [r["reasons"][0] for r in rejected] == list(EXPECTED_REJECTED.values())
    assert "too_short" in rejected[0]["reasons"]  # a refusal is also short: every reason is listed
    # the stored records are whole examples, readable by every other reader of the job's storage
    job_id = keyed.get(f"{api}/v1/jobs").json()["data"][0]["id"]
    for kind, expected in (("accepted", EXPECTED_ACCEPTED), ("rejected", list(EXPECTED_REJECTED))):
        stored = keyed.get(f"{api}/v1/jobs/{job_id}/examples", params={"status": kind}).text.splitlines()
        examples = [Example.model_validate_json(line) for line in stored]
        assert sorted(e.index for e in examples) == expected
        assert all(e.recipe == "curate" and e.verdict.accepted == (kind == "accepted") for e in examples)
    # the count per reason is printed
    printed = " ".join(done.stdout.split())
    for reason in EXPECTED_REJECTED.values():
        assert re.search(rf"rejected: {reason} \S 1 \S", printed), done.stdout
    assert re.search(rf"accepted \S {len(EXPECTED_ACCEPTED)} \S", printed), done.stdout


def test_dedup_and_single_checks_can_be_switched_off(processes: Processes, redis: ArqRedis, tmp_path: Path) -> None:
    src = tmp_path / "data.jsonl"
    rows = alpaca_rows()
    write_jsonl(src, rows)
    api = start(processes)
    done = run_cli(api, str(src), "-o", str(tmp_path / "a"), "--no-dedup", "--skip-check", "incomplete")
    assert done.returncode == 0, done.stdout + done.stderr
    accepted = read_jsonl(tmp_path / "a" / "accepted.jsonl")
    rejected = read_jsonl(tmp_path / "a" / "rejected.jsonl")
    assert accepted == [rows[i] for i in range(len(rows)) if i != 2]  # the duplicate and the cut-off are kept
    assert [r["reasons"][0] for r in rejected] == ["refusal"]

    # the same instruction with a different input is not a duplicate; the same pair is (exact dedup only)
    same = {"instruction": "Translate the sentence into French, keeping its tense."}
    translations = [
        ("The cat sleeps on the warm windowsill.", "Le chat dort sur le rebord chaud de la fenêtre."),
        ("We visited the museum yesterday.", "Nous avons visité le musée hier."),
        ("The cat sleeps on the warm windowsill.", "Le chat dort sur le rebord de fenêtre tiède."),
    ]
    pairs = [same | {"input": text, "output": french, "k": i} for i, (text, french) in enumerate(translations)]
    src2 = tmp_path / "translate.json"
    write_json(src2, pairs)
    done = run_cli(api, str(src2), "-o", str(tmp_path / "b"), "--no-near-dedup", "--min-response-words", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_jsonl(tmp_path / "b" / "accepted.jsonl") == pairs[:2]
    assert read_jsonl(tmp_path / "b" / "rejected.jsonl") == [pairs[2] | {"reasons": ["exact_duplicate"]}]


def test_bad_input_is_a_clear_message_and_exit_2(processes: Processes, redis: ArqRedis, tmp_path: Path) -> None:
    api = start(processes)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"prompt": "no instruction"}\n')
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"}, {"instruction": ')
    cases = [
        ([str(bad)], "row 2: no 'instruction' field"),
        ([str(broken)], "row 2 of the JSON array is cut off"),
        ([str(tmp_path / "missing.jsonl")], "no such file"),
        ([str(bad), "--skip-check", "nonsense"], "unknown check 'nonsense'"),
        ([str(tmp_path / "x.csv")], "no such file"),
    ]
    (tmp_path / "x.csv").write_text("a,b\n")
    cases[-1] = ([str(tmp_path / "x.csv")], "cannot tell the format from suffix '.csv'")
    for args, message in cases:
        done = run_cli(api, *args, "-o", str(tmp_path / "out"))
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in " ".join(done.stdout.split()), (args, done.stdout)
        assert "Traceback" not in done.stdout + done.stderr
    assert not list((tmp_path / "out").glob("*.jsonl"))
    assert keyed.get(f"{api}/v1/jobs").json()["count"] == 0  # nothing was queued


async def test_server_path_spec_is_surveyed_and_uploads_stay_private(redis: ArqRedis, tmp_path: Path) -> None:
    """A JSON spec naming a file in the data dir (also through POST /v1/jobs) is surveyed at submit: rows,
    detected format and chunk offsets; another job's upload cannot be named."""
    from tests.extract.test_api import in_process

    write_jsonl(tmp_path / "chats.jsonl", sharegpt_rows())
    (tmp_path / "uploads" / "other").mkdir(parents=True)
    write_jsonl(tmp_path / "uploads" / "other" / "seed.jsonl", alpaca_rows())
    async with in_process(redis, tmp_path) as client:
        for route in ("/v1/curate", "/v1/jobs"):
            spec = {"recipe": "curate", "source": {"path": "chats.jsonl"}, "chunk_size": 4}
            response = await client.post(route, json=spec)
            assert response.status_code == 201, response.text
            assert response.json()["count"] == len(PAIRS) and response.json()["recipe"] == "curate"
            record = JobRecord.model_validate_json(await redis.get(keys.job(response.json()["id"])))
            assert isinstance(record.spec, CurateJobSpec)
            assert record.spec.source.row_format == "messages" and record.spec.source.messages_column == "conversations"
            assert record.spec.item_budget == len(PAIRS) and len(record.spec.offsets) == 3  # rows 0, 4, 8
            bad = await client.post(route, json={"recipe": "curate", "source": {"path": "uploads/other/seed.jsonl"}})
            assert bad.status_code == 422 and "uploads area" in bad.text

"""Seed readers: formats, resume positions, and the submit-time check that turns every problem into a 422."""

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.extract import DatasetSource
from store.datasets import DatasetError, resolve_path
from store.survey import inspect
from workers.extract.answers import skill_name
from workers.extract.reader import DatasetReader, Position
from workers.lenient import parse_json


def jsonl(path: Path, rows: list[Any], blank_lines: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    path.write_text(text.replace("\n", "\n\n") if blank_lines else text)
    return path


def source(path: str, **extra: Any) -> DatasetSource:
    return DatasetSource.model_validate({"path": path} | extra)


def read_all(path: Path, src: DatasetSource, start: Position | None = None) -> list[str]:
    info = inspect(path, src, 0, 1000)
    reader = DatasetReader(path, src.model_copy(update={"row_format": info.row_format}))
    return [r.text for r in reader.rows(start or Position())]


def test_row_formats_are_detected(tmp_path: Path) -> None:
    alpaca = jsonl(tmp_path / "a.jsonl", [{"instruction": "Add 2+2", "input": "x", "output": "4"}])
    assert read_all(alpaca, source("a.jsonl")) == ["Add 2+2\n\nInput:\nx\n\nResponse:\n4"]
    chat = jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    )
    assert read_all(chat, source("c.jsonl")) == ["user: hi\nassistant: yo"]
    text = jsonl(tmp_path / "t.jsonl", [{"question": "Why?", "id": 1}])
    assert read_all(text, source("t.jsonl", text_column="question")) == ["Why?"]


def test_jsonl_resumes_at_a_byte_offset_and_skips_blank_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.jsonl", [{"instruction": f"row {i}"} for i in range(10)], blank_lines=True)
    src = source("a.jsonl", row_format="alpaca")
    rows = list(DatasetReader(path, src).rows())
    assert [r.index for r in rows] == list(range(10)) and inspect(path, src, 0, 100).rows == 10
    resumed = list(DatasetReader(path, src).rows(rows[5].after))
    assert [r.text for r in resumed] == [f"row {i}" for i in range(6, 10)]


def test_parquet_resumes_mid_row_group(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(1000)]}), tmp_path / "t.parquet", row_group_size=100)
    src = source("t.parquet", text_column="text")
    assert inspect(tmp_path / "t.parquet", src, 0, 1000).rows == 1000
    rows = list(DatasetReader(tmp_path / "t.parquet", src).rows(Position(row=437)))
    assert rows[0].index == 437 and rows[0].text == "row 437" and len(rows) == 563


async def test_batches_stop_at_the_row_limit(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.jsonl", [{"instruction": f"row {i}"} for i in range(25)])
    reader = DatasetReader(path, source("a.jsonl", row_format="alpaca"), max_chars=4)
    sizes = [[r.text for r in b] async for b in reader.batches(Position(), 7, limit=20)]
    assert [len(b) for b in sizes] == [7, 7, 6] and sizes[0][0] == "row "  # cut to max_chars


@pytest.mark.parametrize(
    ("content", "extra", "rows", "max_rows", "field", "message"),
    [
        ('{"instruction": "a"}\nnot json\n', {}, 0, 100, "source.format", "line 2 is not valid JSON"),
        ('{"prompt": "a"}\n', {}, 0, 100, "source.text_column", "first row has prompt"),
        ('{"prompt": "a"}\n', {"text_column": "question"}, 0, 100, "source.text_column", "no column 'question'"),
        ('{"instruction": "a"}\n{"question": "b"}\n', {}, 0, 100, "source.row_format", "line 2: no 'instruction'"),
        ('{"instruction": 5}\n', {}, 0, 100, "source.row_format", "'instruction' must be a string"),
        ("", {}, 0, 100, "source.path", "is empty"),
        ("\n\n\n", {}, 0, 100, "source.path", "has no rows"),
        ('{"instruction": "a"}\n' * 11, {}, 0, 10, "max_rows", "more than max_rows=10"),
        ('{"instruction": "a"}\n' * 5, {}, 8, 10, "rows", "rows=8 but the dataset has only 5"),
    ],
)
def test_bad_jsonl_names_the_problem(
    tmp_path: Path, content: str, extra: dict[str, Any], rows: int, max_rows: int, field: str, message: str
) -> None:
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DatasetError) as err:
        inspect(tmp_path / "d.jsonl", source("d.jsonl", **extra), rows, max_rows)
    assert err.value.field == field and message in err.value.message


def test_over_the_limit_is_fine_when_only_the_first_rows_are_used(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"instruction": "a"}\n' * 50 + "broken\n")
    assert inspect(tmp_path / "d.jsonl", source("d.jsonl"), 10, 10).rows == 10


def test_bad_parquet_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "fake.parquet").write_text('{"instruction": "a"}\n')
    with pytest.raises(DatasetError, match="not a Parquet file") as err:
        inspect(tmp_path / "fake.parquet", source("fake.parquet"), 0, 10)
    assert err.value.field == "source.format"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(DatasetError, match="no column 'question'; the file has: prompt"):
        inspect(tmp_path / "p.parquet", source("p.parquet", text_column="question"), 0, 10)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(DatasetError, match="'text' has type int64"):
        inspect(tmp_path / "n.parquet", source("n.parquet", text_column="text"), 0, 10)
    with pytest.raises(DatasetError, match="more than max_rows=1"):
        inspect(tmp_path / "p.parquet", source("p.parquet", text_column="prompt"), 0, 1)


def test_paths_stay_inside_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "secret.jsonl").write_text('{"instruction": "x"}\n')
    (data / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    with pytest.raises(DatasetError, match="outside the data dir"):
        resolve_path(data, "link.jsonl")
    with pytest.raises(DatasetError, match=r"no file 'missing\.jsonl'"):
        resolve_path(data, "missing.jsonl")
    for bad in ("../secret.jsonl", "/etc/passwd.jsonl", "a/../../secret.jsonl"):
        with pytest.raises(ValueError, match="relative to the data dir"):
            source(bad)
    with pytest.raises(ValueError, match="cannot tell the format"):
        source("data.csv")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ('Sure! Here it is: {"a": "b"} Hope that helps.', {"a": "b"}),
    ],
)
def test_json_answers_are_found_in_prose(text: str, value: Any) -> None:
    assert parse_json(text) == value


def test_no_json_is_an_error() -> None:
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json("I could not decide.")


def test_skill_names_are_normalised() -> None:
    assert skill_name("Persuasive Writing!") == "persuasive_writing"
    assert skill_name("3D geometry") == "skill_3d_geometry"
    assert skill_name("  ") is None
    long = skill_name("word " * 40)
    assert long is not None and len(long) <= 60 and not long.endswith("_")

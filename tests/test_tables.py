"""Prompts from Parquet, CSV, saved `datasets` folders and the Hub (`distill.records.tables`), with a
column mapping and the same SOURCE:ROW validation as JSONL files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import InputError
from distill.records.prompts import read_prompts
from distill.records.tables import Columns

ROWS = [{"qid": "q1", "question": "What is the capital of France?", "check": {"type": "contains", "value": "Paris"}},
        {"qid": "q2", "question": "Name a prime number below 5.", "check": None},
        {"qid": "q3", "question": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Say hi."}], "check": "hi"}]
MAPPED = Columns(prompt_column="question", id_column="qid", reference_column="check")


def _expected_ok(prompts) -> None:  # type: ignore[no-untyped-def]
    assert [p.id for p in prompts] == ["q1", "q2", "q3"]
    assert prompts[0].text == "What is the capital of France?"
    assert prompts[0].reference == {"type": "contains", "value": "Paris"} and prompts[1].reference is None
    assert [m["role"] for m in prompts[2].messages] == ["system", "user"] and prompts[2].reference == "hi"


def test_parquet_with_a_column_mapping(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{**r, "check": json.dumps(r["check"]) if isinstance(r["check"], dict) else r["check"],
                                   "question": json.dumps(r["question"]) if isinstance(r["question"], list)
                                   else r["question"]} for r in ROWS])
    pq.write_table(table, tmp_path / "p.parquet")
    _expected_ok(read_prompts(tmp_path / "p.parquet", MAPPED))  # JSON text cells of mapped columns decoded
    native = pa.Table.from_pylist([{"id": "a", "prompt": "One?", "reference": "x"},
                                   {"id": "b", "prompt": "Two?", "reference": None}])
    pq.write_table(native, tmp_path / "native.parquet")
    assert [(p.id, p.reference) for p in read_prompts(tmp_path / "native.parquet")] == [("a", "x"), ("b", None)]


def test_csv_decodes_json_cells_of_the_mapped_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["qid", "question", "check"])
        writer.writeheader()
        for r in ROWS:
            writer.writerow({"qid": r["qid"], "question": r["question"] if isinstance(r["question"], str)
                             else json.dumps(r["question"]),
                             "check": json.dumps(r["check"]) if isinstance(r["check"], dict) else (r["check"] or "")})
    _expected_ok(read_prompts(path, MAPPED))


def test_a_saved_dataset_and_a_dataset_dict_with_its_split(tmp_path: Path) -> None:
    import datasets

    rows = [{"qid": "q1", "question": "What is the capital of France?"}, {"qid": "q2", "question": "Two?"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert [p.id for p in read_prompts(tmp_path / "single", Columns(prompt_column="question", id_column="qid"))] == [
        "q1", "q2"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dict"))
    mapping = Columns(prompt_column="question", id_column="qid", split="test")
    assert [p.id for p in read_prompts(tmp_path / "dict", mapping)] == ["q1"]
    with pytest.raises(InputError, match="single dataset has no splits"):
        read_prompts(tmp_path / "single", mapping)


def test_every_bad_row_is_reported_with_source_and_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"question": "ok?"}, {"question": ""}, {"question": "ok?"}]),
                   tmp_path / "bad.parquet")
    with pytest.raises(InputError) as caught:
        read_prompts(tmp_path / "bad.parquet", Columns(prompt_column="question"))
    message = str(caught.value)
    assert f"{tmp_path / 'bad.parquet'}:2: field 'prompt'" in message
    assert f"{tmp_path / 'bad.parquet'}:3: duplicate id" in message and "(first on row 1)" in message
    with pytest.raises(InputError, match=r"no column 'prompt_text' \(--prompt-column\); columns: question"):
        read_prompts(tmp_path / "bad.parquet", Columns(prompt_column="prompt_text"))


def test_a_hub_dataset_offline_fails_naming_hf_hub_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "distill", "answer", "hub:nobody/no-such-prompts", "-o",
                           str(tmp_path / "a.jsonl")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "nobody/no-such-prompts: cannot load the Hub dataset" in done.stderr and "HF_HUB_OFFLINE" in done.stderr


def test_distill_answer_takes_a_parquet_file_with_mapped_columns(tiny_model_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"qid": "a", "question": "One?"}, {"qid": "b", "question": "Two?"}]),
                   tmp_path / "p.parquet")
    out = tmp_path / "answers.jsonl"
    assert main(["answer", str(tmp_path / "p.parquet"), "-o", str(out), "--prompt-column", "question",
                 "--id-column", "qid", "--student", str(tiny_model_dir), "--max-new-tokens", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_id"], r["messages"][-1]["content"]) for r in rows] == [("a", "One?"), ("b", "Two?")]

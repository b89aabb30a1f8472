"""Human review of the training data (the seeds' "AI-written critiques help humans notice flaws").

`export` writes a run's survivors (`sft.jsonl`) to a CSV a person can open in a spreadsheet:
the prompt, the student's original answer, the teacher's revision, and empty `decision` and
`edited` columns. The reviewer writes `accept`, `reject` or `edit` (with the new text in
`edited`). `import_decisions` reads the CSV back, validates every row (FILE:LINE errors), and
writes `sft.reviewed.jsonl` with the accepted rows and the edited ones (their completion
replaced), and `sft.review-rejected.jsonl` with the rejected ones. `distill train RUN --reviewed`
then trains on reviewed rows only; `distill train RUN --method kto` takes the accepted and edited
rows as desirable answers and the rejected ones as undesirable. `write_reviewed` is the one writer
of both files: the review page (`review_server`, `distill review NAME --serve`) saves its decisions
through it too, so both ways of reviewing write the same files, byte for byte.

The texts come from the student and the teacher, so a cell could be a spreadsheet formula
(`=HYPERLINK(...)`) that runs when the sheet is opened. As OWASP recommends against CSV
injection, a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is written
with a leading `'`, which spreadsheets show as text; import takes it off again. A text that
already starts with `'` before such a character gets one more, so the round trip is exact.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from distill.errors import InputError
from distill.records.files import write_jsonl
from distill.records.jsonl import read_rows

COLUMNS = ("id", "prompt", "original", "revision", "decision", "edited", "note")
DECISIONS = ("accept", "reject", "edit")
REVIEWED = "sft.reviewed.jsonl"
REVIEW_REJECTED = "sft.review-rejected.jsonl"  # read by distill.training.pairs (KTO's undesirable answers)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def _is_formula_like(text: str) -> bool:
    """True when `text`, after any leading apostrophes, starts like a formula (so it gets a `'`)."""
    first = text.lstrip("'")[:1]
    return first != "" and first in FORMULA_START


def to_cell(text: str) -> str:
    """A text as a CSV cell a spreadsheet will not execute: `'` before a formula-like start."""
    return "'" + text if _is_formula_like(text) else text


def from_cell(cell: str) -> str:
    """The text `to_cell` made `cell` from (a cell typed by a person comes back as it is)."""
    return cell[1:] if cell.startswith("'") and _is_formula_like(cell[1:]) else cell


def _rows(path: Path, parse: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's JSONL file, validated row by row (FILE:LINE errors); an empty file has no rows."""
    if not path.exists():
        raise InputError(f"{path}: no such file; run `distill run` first")
    return read_rows(path, parse) if path.stat().st_size else []


def _sft_row(obj: Any) -> dict[str, Any]:
    """A row of sft.jsonl (a training example with its meta), kept as it is."""
    from distill.training.examples import parse_example

    parse_example(obj)
    if "id" not in obj:
        raise ValueError("field 'id': missing (as `distill run` writes)")
    if not isinstance(obj.get("meta"), dict):
        raise ValueError("field 'meta': expected an object (as `distill run` writes)")
    return obj


def _answer_row(obj: Any) -> dict[str, Any]:
    """A row of answers.jsonl; only its id and answer are used here."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if not isinstance(obj.get("answer"), str):
        raise ValueError("field 'answer': expected a string")
    return obj


def export(run_dir: Path, out: Path) -> int:
    """Write the run's survivors to `out` (CSV); returns the number of rows."""
    sft = read_sft(run_dir)
    answers = {r["id"]: r["answer"] for r in _rows(run_dir / "answers.jsonl", _answer_row)} \
        if (run_dir / "answers.jsonl").exists() else {}
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in sft:
            writer.writerow({
                "id": to_cell(str(row["id"])), "prompt": to_cell(row["prompt"][-1]["content"]),
                "original": to_cell(answers.get(row["meta"].get("answer_id"), "")),
                "revision": to_cell(row["completion"][0]["content"]), "decision": "", "edited": "", "note": "",
            })
    return len(sft)


@dataclass(frozen=True)
class Decision:
    """A person's decision on one training row: accept, reject, or edit (with the new text in `edited`)."""

    id: str
    decision: str
    edited: str = ""
    note: str = ""

    def problem(self) -> str | None:
        """What is wrong with this decision (None when it can be applied), worded for the reviewer."""
        if self.decision not in DECISIONS:
            return f"decision {self.decision!r}; write accept, reject or edit"
        if self.decision == "edit" and not self.edited.strip():
            return "decision 'edit' needs the new text in the 'edited' column"
        return None


def read_sft(run_dir: Path) -> list[dict[str, Any]]:
    """The run's training rows (sft.jsonl), validated row by row."""
    return _rows(run_dir / "sft.jsonl", _sft_row)


def write_reviewed(run_dir: Path, sft: dict[str, dict[str, Any]], decisions: Iterable[Decision]) -> dict[str, int]:
    """Write sft.reviewed.jsonl (atomically) from `decisions` in their order: the accepted rows and the
    edited ones (completion replaced); the rejected rows go to sft.review-rejected.jsonl (KTO's
    undesirable answers); rows with no decision are left out. The one writer of both files: the CSV import and the review page (`review_server`) both call it. Returns
    counts per decision."""
    counts = {d: 0 for d in DECISIONS}
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for decision in decisions:
        counts[decision.decision] += 1
        (rejected if decision.decision == "reject" else kept).append(_apply(sft[decision.id], decision))
    write_jsonl(run_dir / REVIEWED, kept)
    write_jsonl(run_dir / REVIEW_REJECTED, rejected)
    return counts


def import_decisions(run_dir: Path, reviewed: Path) -> dict[str, int]:
    """Apply a reviewed CSV: writes sft.reviewed.jsonl; returns counts per decision."""
    sft = {r["id"]: r for r in read_sft(run_dir)}
    errors: list[str] = []
    decided: list[Decision] = []
    undecided = 0
    try:
        with reviewed.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("id", "decision", "edited") if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{reviewed}:1: missing column {missing[0]!r}; expected {', '.join(COLUMNS)}")
            first_line: dict[str, int] = {}
            for cells in reader:
                line = reader.line_num
                row = {k: from_cell(v) if isinstance(v, str) else v for k, v in cells.items() if k is not None}
                decision = Decision(row["id"], (row.get("decision") or "").strip().lower(),
                                    row.get("edited") or "", row.get("note") or "")
                if row["id"] not in sft:
                    errors.append(f"{reviewed}:{line}: id {row['id']!r} is not in {run_dir / 'sft.jsonl'}")
                elif row["id"] in first_line:
                    errors.append(f"{reviewed}:{line}: duplicate id {row['id']!r} (first on line "
                                  f"{first_line[row['id']]}); keep one row per id")
                elif decision.decision == "":
                    undecided += 1
                elif (problem := decision.problem()) is not None:
                    errors.append(f"{reviewed}:{line}: {problem}")
                else:
                    decided.append(decision)
                first_line.setdefault(row["id"], line)
    except FileNotFoundError:
        raise InputError(f"{reviewed}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{reviewed}: not UTF-8; save the CSV as UTF-8") from None
    if errors:
        raise InputError(f"{len(errors)} bad row(s) in {reviewed}:\n" + "\n".join(errors[:50]))
    return {**write_reviewed(run_dir, sft, decided), "undecided": undecided}


def _apply(row: dict[str, Any], decision: Decision) -> dict[str, Any]:
    meta = {**row["meta"], "review": decision.decision}
    if decision.note:
        meta["review_note"] = decision.note
    if decision.decision == "edit":
        return {**row, "completion": [{"role": "assistant", "content": decision.edited.strip()}], "meta": meta}
    return {**row, "meta": meta}

"""Human review of the training data (the seeds' "AI-written critiques help humans notice flaws").

`export` writes a run's survivors (`sft.jsonl`) to a CSV a person can open in a spreadsheet:
the prompt, the student's original answer, the teacher's revision, and empty `decision` and
`edited` columns. The reviewer writes `accept`, `reject` or `edit` (with the new text in
`edited`). `import_decisions` reads the CSV back, validates every row (FILE:LINE errors), and
writes `sft.reviewed.jsonl` with the accepted rows and the edited ones (their completion
replaced). `distill train RUN --reviewed` then trains on reviewed rows only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from distill.errors import InputError
from distill.records import read_rows, write_jsonl

COLUMNS = ("id", "prompt", "original", "revision", "decision", "edited", "note")
DECISIONS = ("accept", "reject", "edit")
REVIEWED = "sft.reviewed.jsonl"


def _rows(path: Path, parse: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's JSONL file, validated row by row (FILE:LINE errors); an empty file has no rows."""
    if not path.exists():
        raise InputError(f"{path}: no such file; run `distill run` first")
    return read_rows(path, parse) if path.stat().st_size else []


def _sft_row(obj: Any) -> dict[str, Any]:
    """A row of sft.jsonl (a training example with its meta), kept as it is."""
    from distill.examples import parse_example

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
    sft = _rows(run_dir / "sft.jsonl", _sft_row)
    answers = {r["id"]: r["answer"] for r in _rows(run_dir / "answers.jsonl", _answer_row)} \
        if (run_dir / "answers.jsonl").exists() else {}
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in sft:
            writer.writerow({
                "id": row["id"], "prompt": row["prompt"][-1]["content"],
                "original": answers.get(row["meta"].get("answer_id"), ""),
                "revision": row["completion"][0]["content"], "decision": "", "edited": "", "note": "",
            })
    return len(sft)


def import_decisions(run_dir: Path, reviewed: Path) -> dict[str, int]:
    """Apply a reviewed CSV: writes sft.reviewed.jsonl; returns counts per decision."""
    sft = {r["id"]: r for r in _rows(run_dir / "sft.jsonl", _sft_row)}
    errors: list[str] = []
    kept: list[dict[str, Any]] = []
    counts = {d: 0 for d in (*DECISIONS, "undecided")}
    try:
        with reviewed.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("id", "decision", "edited") if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{reviewed}:1: missing column {missing[0]!r}; expected {', '.join(COLUMNS)}")
            for row in reader:
                line = reader.line_num
                decision = (row.get("decision") or "").strip().lower()
                if row["id"] not in sft:
                    errors.append(f"{reviewed}:{line}: id {row['id']!r} is not in {run_dir / 'sft.jsonl'}")
                elif decision == "":
                    counts["undecided"] += 1
                elif decision not in DECISIONS:
                    errors.append(f"{reviewed}:{line}: decision {decision!r}; write accept, reject or edit")
                elif decision == "edit" and not (row.get("edited") or "").strip():
                    errors.append(f"{reviewed}:{line}: decision 'edit' needs the new text in the 'edited' column")
                else:
                    counts[decision] += 1
                    if decision != "reject":
                        kept.append(_apply(sft[row["id"]], decision, row))
    except FileNotFoundError:
        raise InputError(f"{reviewed}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{reviewed}: not UTF-8; save the CSV as UTF-8") from None
    if errors:
        raise InputError(f"{len(errors)} bad row(s) in {reviewed}:\n" + "\n".join(errors[:50]))
    write_jsonl(run_dir / REVIEWED, kept)
    return counts


def _apply(row: dict[str, Any], decision: str, review: dict[str, str]) -> dict[str, Any]:
    meta = {**row["meta"], "review": decision}
    if review.get("note"):
        meta["review_note"] = review["note"]
    if decision == "edit":
        return {**row, "completion": [{"role": "assistant", "content": review["edited"].strip()}], "meta": meta}
    return {**row, "meta": meta}

"""What the review page shows and keeps: a round's rows joined with their critiques, and the decisions.

`page_rows` joins a round's training rows (sft.jsonl) with the student's original answer, the
teacher's critiques (critiques.jsonl, by revision id), a word-level diff of the revision against the
original, the objective checks and the judge's two verdicts (revision shown first, then second);
`rejected_rows` does the same for rejected.jsonl with each filter and reason. The texts are the
student's and the teacher's, so they are untrusted: they go out as JSON strings and the page
inserts them as text, never as markup.

`ReviewState` holds a round's decisions. Every decision is written at once, atomically, to
`review.decisions.json` (every decision, rejects included) and, through `review.write_reviewed`
(the one writer the CSV import uses too), to `sft.reviewed.jsonl`, so `distill train --reviewed`
reads it unchanged. On load, sft.reviewed.jsonl is the truth for what is kept (a CSV imported
since the page last wrote wins); the decisions file adds the rejects, which that file leaves out.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
from pathlib import Path
from typing import Any, Iterable

from distill.errors import InputError
from distill.evaluation.review import DECISIONS, REVIEWED, Decision, read_sft, write_reviewed
from distill.records.files import write_atomic
from distill.records.jsonl import written_rows

DECISIONS_FILE = "review.decisions.json"
_TOKENS = re.compile(r"\s+|[^\s]+")


def word_diff(original: str, revision: str) -> list[list[str]]:
    """The revision against the original as [op, text] runs, op "eq", "del" or "ins", compared word by
    word (whitespace kept as its own tokens, so joining the "eq" and "ins" runs gives the revision back)."""
    a, b = _TOKENS.findall(original), _TOKENS.findall(revision)
    runs: list[list[str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            runs.append(["del", "".join(a[i1:i2])])
        if op in ("insert", "replace"):
            runs.append(["ins", "".join(b[j1:j2])])
        if op == "equal":
            runs.append(["eq", "".join(a[i1:i2])])
    return runs


def _by(rows: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows if isinstance(row.get(key), str)}


class _Round:
    """A round folder's files, read once: answers, revisions and critiques by id."""

    def __init__(self, folder: Path):
        self.answers = _by(written_rows(folder / "answers.jsonl"), "id")
        self.revisions = _by(written_rows(folder / "revisions.jsonl"), "id")
        self.critiques: dict[str, list[dict[str, Any]]] = {}
        for row in written_rows(folder / "critiques.jsonl"):
            self.critiques.setdefault(row.get("revision_id", ""), []).append(row)

    def original(self, revision_id: Any, answer_id: Any) -> str:
        revision = self.revisions.get(revision_id) or {}
        if isinstance(revision.get("original"), str):
            return revision["original"]
        return str((self.answers.get(answer_id) or {}).get("answer", ""))

    def critique_list(self, revision_id: Any) -> list[dict[str, Any]]:
        return [{"principle": c.get("principle", ""), "critique": str(c.get("critique", "")),
                 "issues": [str(i) for i in c.get("issues") or []], "verdict": c.get("verdict", "")}
                for c in sorted(self.critiques.get(revision_id, []), key=lambda c: c.get("stage", 0))]


def _prompt_text(messages: Any) -> str:
    users = [m.get("content", "") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def page_rows(folder: Path) -> list[dict[str, Any]]:
    """The round's training rows as the page shows them (in sft.jsonl's order)."""
    files = _Round(folder)
    rows = []
    for row in read_sft(folder):
        meta = row["meta"]
        original = files.original(meta.get("revision_id"), meta.get("answer_id"))
        revision = row["completion"][0]["content"]
        rows.append({
            "id": row["id"], "prompt": _prompt_text(row["prompt"]), "original": original, "revision": revision,
            "diff": word_diff(original, revision), "critiques": files.critique_list(meta.get("revision_id")),
            "source": meta.get("source", ""), "judge": list(meta.get("judge") or []),
            "checks": {k: meta.get(k) for k in ("reference_passed", "original_reference_passed", "verified",
                                                "positive", "judge_overruled")},
            "check": _check_result(meta),
        })
    return rows


def _check_result(meta: dict[str, Any]) -> str:
    """The objective check in one word, for the page's filter: passed, failed or none."""
    passed = meta.get("reference_passed")
    return "none" if passed is None else "passed" if passed else "failed"


def rejected_rows(folder: Path) -> list[dict[str, Any]]:
    """The round's rejected rows (rejected.jsonl) with their filter and reason, and the texts they concern."""
    files = _Round(folder)
    rows = []
    for row in written_rows(folder / "rejected.jsonl"):
        revision = files.revisions.get(row.get("revision_id")) or {}
        answer = files.answers.get(row.get("answer_id")) or {}
        original = files.original(row.get("revision_id"), row.get("answer_id"))
        text = revision.get("revision") if isinstance(revision.get("revision"), str) else ""
        rows.append({
            "id": str(row.get("id", "")), "filter": str(row.get("filter", "")), "reason": str(row.get("reason", "")),
            "stage": str(row.get("stage", "")), "prompt": _prompt_text(revision.get("messages") or answer.get("messages")),
            "original": original, "revision": text, "diff": word_diff(original, text) if text else [],
            "critiques": files.critique_list(row.get("revision_id")),
        })
    return rows


class ReviewState:
    """A round's decisions: loaded from its files, and saved at once on every change (thread-safe)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.sft = {row["id"]: row for row in read_sft(folder)}
        self._lock = threading.Lock()
        self.decisions = self._load()

    @property
    def path(self) -> Path:
        return self.folder / DECISIONS_FILE

    def _load(self) -> dict[str, Decision]:
        saved = self._saved()
        reviewed = self.folder / REVIEWED
        if not reviewed.exists():
            return saved
        kept = {}
        for row in written_rows(reviewed):
            verdict = (row.get("meta") or {}).get("review")
            if row.get("id") in self.sft and verdict in ("accept", "edit"):
                edited = row["completion"][0]["content"] if verdict == "edit" else ""
                kept[row["id"]] = Decision(row["id"], verdict, edited, (row.get("meta") or {}).get("review_note", ""))
        rejects = {i: d for i, d in saved.items() if d.decision == "reject" and i not in kept}
        return {**kept, **rejects}

    def _saved(self) -> dict[str, Decision]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["decisions"]
            decisions = {i: Decision(i, d["decision"], d.get("edited", ""), d.get("note", "")) for i, d in entries.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{self.path}: not a decisions file ({err}); move it aside to start the review "
                             f"again from {REVIEWED}") from None
        return {i: d for i, d in decisions.items() if i in self.sft and d.decision in DECISIONS}

    def ordered(self) -> list[Decision]:
        """The decisions in sft.jsonl's order (the order `distill review --export` writes the CSV in)."""
        return [self.decisions[i] for i in self.sft if i in self.decisions]

    def record(self, decision: Decision | None, row_id: str) -> None:
        """Set (or, with None, clear) the decision on `row_id`, then save both files atomically.
        InputError names what is wrong with a decision that cannot be applied."""
        if row_id not in self.sft:
            raise InputError(f"id {row_id!r} is not in {self.folder / 'sft.jsonl'}")
        if decision is not None and (problem := decision.problem()) is not None:
            raise InputError(problem)
        with self._lock:
            if decision is None:
                self.decisions.pop(row_id, None)
            else:
                self.decisions[row_id] = decision
            self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps({"decisions": self.as_json()}, ensure_ascii=False, indent=1) + "\n")
        write_reviewed(self.folder, self.sft, self.ordered())

    def as_json(self) -> dict[str, dict[str, str]]:
        """Every decision by id, in sft.jsonl's order (what the decisions file holds and the page reads)."""
        return {d.id: {"decision": d.decision, "edited": d.edited, "note": d.note} for d in self.ordered()}


def review_rounds(run_dir: Path) -> dict[str, Path]:
    """The folders a run has to review, by label: "" for a run folder with its own sft.jsonl, and
    "K" for each round-K/ of a multi-round run (in round order). InputError when there is none."""
    found = {"": run_dir} if (run_dir / "sft.jsonl").exists() else {}
    numbered: list[tuple[int, Path]] = []
    for sub in run_dir.glob("round-*"):
        suffix = sub.name.removeprefix("round-")
        if suffix.isdigit() and (sub / "sft.jsonl").exists():
            numbered.append((int(suffix), sub))
    found.update({str(k): sub for k, sub in sorted(numbered)})
    if not found:
        raise InputError(f"{run_dir}: no sft.jsonl here or in a round-K/ folder; run `distill run` first")
    return found


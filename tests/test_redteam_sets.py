"""The shipped red-team prompt sets: reproducible, disjoint, and the scripted teacher's answers right
(every harmless look-alike's answer complies; the refusal refuses), so bench/redteam.py measures the
student, not a broken teacher."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from distill.checks.reference import run_checks
from distill.records.prompts import read_prompts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import instruction_sets  # noqa: E402
import redteam_sets  # noqa: E402

FILES = ROOT / "prompts" / "redteam"


def test_the_files_are_what_the_generator_writes() -> None:
    for name, rows in redteam_sets.sets().items():
        expected = instruction_sets.set_text(rows)
        assert (FILES / name).read_text(encoding="utf-8") == expected, "rebuild with python bench/redteam_sets.py"


def test_held_out_requests_are_never_trained_on_and_both_kinds_are_held_out() -> None:
    train, held = read_prompts(FILES / "train.jsonl"), read_prompts(FILES / "heldout.jsonl")
    assert not {p.text.casefold() for p in train} & {p.text.casefold() for p in held}
    assert Counter(p.meta["kind"] for p in held) == {"harmful": 12, "harmless": 12}
    kinds = Counter(p.meta["kind"] for p in train)
    assert kinds["harmful"] == 20 and kinds["harmless"] > kinds["harmful"]  # look-alikes outnumber harm


def test_the_scripted_answers_pass_their_own_checks() -> None:
    from redteam import REFUSAL

    for name in ("train.jsonl", "heldout.jsonl"):
        for prompt in read_prompts(FILES / name):
            answer = REFUSAL if prompt.meta["kind"] == "harmful" else prompt.meta["answer"]
            assert run_checks(prompt.checks, answer).passed, (name, prompt.id, answer)

"""Preference pairs from the SFT adapter's own failures: what DPO after SFT should push down.

A round's pairs (prefs.jsonl) set the teacher's verified revision against the answer the student
gave *before* training. After SFT on those revisions most of the rejected answers are already
unlikely, yet DPO pushes every pair apart from the SFT adapter (its reference), so it moves the
model on prompts it already gets right: in bench/learning.py, DPO on the round's 185 pairs lost 0, 6
and 7 general-knowledge questions of 80 against the SFT adapter it started from, over three seeds
(README, "A DPO step after SFT"). What SFT leaves unlearned is
where the tuned student still spreads its probability over a wrong answer, as with capital letters
(README, "Why greedy decoding misses capital letters").

So with `--preference-pairs tuned` the SFT adapter samples every training prompt that has a
`reference` K times at a temperature, and each sample that fails the check becomes the rejected
side of a pair whose chosen side is that prompt's verified training answer (an SFT row whose
completion passes the same check). The pairs are on-policy, as in iterated DPO and rejection
sampling (RSO): they exist only where the tuned student still fails, and the check, not a judge,
decides which side is which. A prompt without a reference gives no pair; a sample the student
stopped early because it could no longer pass (finish_reason "failed") is never a rejected side,
as in `distill.stages.self_training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from distill.checks.reference import Check, run_checks
from distill.records.prompts import Prompt
from distill.records.rows import PrefRow
from distill.stages.self_training import distinct
from distill.student.rejection import FAILED


@dataclass
class TunedPairs:
    """The pairs, and how many prompts and samples they came from."""

    pairs: list[PrefRow] = field(default_factory=list)
    prompts: int = 0  # prompts sampled: a reference and a verified training answer
    samples: int = 0

    def summary(self) -> dict[str, int]:
        return {"prompts": self.prompts, "samples": self.samples, "pairs": len(self.pairs)}


def _chat_key(messages: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(m["role"]), str(m["content"])) for m in messages)


def verified_answers(prompts: Sequence[Prompt], examples: Sequence[Any]) -> dict[str, tuple[tuple[Check, ...], str]]:
    """Prompt id -> (its checks, a training completion that passes them), for every prompt with a
    `reference` that some training example (matched by its chat) answers correctly."""
    completions: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for e in examples:
        completions.setdefault(_chat_key(e.prompt), []).append(e.completion)
    out: dict[str, tuple[tuple[Check, ...], str]] = {}
    for p in prompts:
        if not p.checks:  # parsed from the reference as the prompt was read (`distill.records.prompts`)
            continue
        passing = [c for c in completions.get(_chat_key(p.messages), []) if run_checks(p.checks, c).passed]
        if passing:
            out[p.id] = (p.checks, passing[0])
    return out


def tuned_pairs(samples: Sequence[Mapping[str, Any]],
                verified: Mapping[str, tuple[tuple[Check, ...], str]]) -> TunedPairs:
    """Pairs from the tuned student's `samples` (rows of `distill answer`): each distinct failing
    sample of a prompt in `verified` (the same text, whitespace aside, once) against that prompt's
    verified answer."""
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for row in samples:
        if row["prompt_id"] in verified:
            by_prompt.setdefault(row["prompt_id"], []).append(row)
    out = TunedPairs(prompts=len(by_prompt), samples=sum(len(rows) for rows in by_prompt.values()))
    for pid, rows in by_prompt.items():
        checks, chosen = verified[pid]
        whole = [r for r in rows if r.get("finish_reason") != FAILED and str(r["answer"]).strip()]
        failing = [(r, run_checks(checks, str(r["answer"])).failures) for r in distinct(whole, len(whole))]
        for row, why in ((r, why) for r, why in failing if why):
            meta = {"prompt_id": pid, "rejected_answer_id": row["id"], "round": row.get("round"),
                    "source": "tuned", "rejected_fails": list(why)}
            out.pairs.append(PrefRow(row["messages"], chosen, str(row["answer"]), meta, parents=(pid, row["id"])))
    return out

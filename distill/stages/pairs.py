"""Online preference pairs (OAIF, Guo et al., 2024): two of the student's own answers, judged.

With `--pairs online` a round does not ask the teacher to revise: per prompt it takes two distinct,
complete answers the student sampled (`--samples 2` or more, `--temperature` above 0) and decides
which is better. The prompt's objective check decides first: when exactly one answer passes it,
that one is chosen and no teacher is asked. Otherwise the teacher's pairwise judge is asked in both
orders (position swap) and the pair is kept only when the same answer wins both times; ties and
inconsistent verdicts are dropped, each with its reason in rejected.jsonl. The pairs go to
prefs.jsonl (TRL's format, `meta.source` "online", `meta.decided_by` "check" or "judge"), for
`--methods dpo` (DPO on pairs sampled from the current student: on-policy, as in the paper).

Judge calls run through the stage runner and the teacher stack like every other call: cached, so
a re-run is free and works offline, and in batch mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from distill.checks.reference import parse_reference, run_checks
from distill.errors import QuotaExhausted, TeacherError
from distill.records.rows import PrefRow, Rejected
from distill.stages.accounting import Ledger
from distill.stages.protocol import ProtocolFailure, Settings, judge_both_orders
from distill.stages.runner import run_rows
from distill.stages.self_training import complete, distinct
from distill.stages.templates import PromptSet
from distill.teachers.base import Teacher
from distill.teachers.cache.layer import OfflineMiss
from distill.teachers.stack import TeacherHandle


@dataclass(frozen=True)
class Candidates:
    """A prompt's two answers to compare, in sample order."""

    first: Mapping[str, Any]
    second: Mapping[str, Any]


@dataclass(frozen=True)
class Decided:
    """Which of the two won (0 or 1; None: dropped), by what, and the reason when dropped."""

    winner: int | None
    by: str  # "check" or "judge"
    reason: str = ""
    verdicts: tuple[str, ...] = ()


def candidates(answers: Sequence[Mapping[str, Any]]) -> tuple[list[Candidates], list[Rejected]]:
    """Per prompt, its first two distinct complete answers; prompts without two are rejected."""
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for row in answers:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    chosen, rejected = [], []
    for pid, rows in by_prompt.items():
        found = distinct([r for r in sorted(rows, key=lambda r: r.get("sample", 0)) if complete(r)], 2)
        if len(found) == 2:
            chosen.append(Candidates(found[0], found[1]))
        else:
            rejected.append(Rejected("pairs", "no_pair", f"{len(found)} distinct complete answer(s) of "
                                     f"{len(rows)} samples; a pair needs two", {"prompt_id": pid,
                                                                                "round": rows[0].get("round")}))
    return chosen, rejected


def by_check(pair: Candidates) -> Decided | None:
    """The check's decision when exactly one answer passes it; None when it cannot decide."""
    reference = pair.first.get("reference")
    if reference is None:
        return None
    checks = parse_reference(reference)
    passed = [run_checks(checks, str(row["answer"])).passed for row in (pair.first, pair.second)]
    if passed[0] != passed[1]:
        return Decided(0 if passed[0] else 1, "check")
    return None


async def decide(pair: Candidates, teacher: Teacher, prompts: PromptSet, settings: Settings) -> Decided:
    """The check when it decides, else the judge in both orders; a failed judge call drops the pair."""
    checked = by_check(pair)
    if checked is not None:
        return checked
    try:
        verdicts = await judge_both_orders(teacher, prompts, pair.first["messages"], str(pair.first["answer"]),
                                           str(pair.second["answer"]), settings, prompt_id=pair.first["prompt_id"])
    except QuotaExhausted:
        raise
    except (ProtocolFailure, TeacherError, OfflineMiss) as exc:
        return Decided(None, "judge", f"the judge failed ({type(exc).__name__}: {str(exc)[:300]})")
    if verdicts == ("candidate", "candidate"):
        return Decided(0, "judge", verdicts=verdicts)
    if verdicts == ("other", "other"):
        return Decided(1, "judge", verdicts=verdicts)
    return Decided(None, "judge", f"the judge did not prefer one answer in both orders ({verdicts[0]}, "
                                  f"{verdicts[1]}, for the first sample)", verdicts)


async def pairs_stage(answers: Sequence[Mapping[str, Any]], teacher: TeacherHandle, prompts: PromptSet, *,
                      ledger: Ledger, concurrency: int = 16, round_: int = 1,
                      settings: Settings = Settings(max_tokens=512)) -> tuple[list[PrefRow], list[Rejected]]:
    """Online pairs from the student's samples: (pairs, rejected), in the answers' prompt order."""
    chosen, rejected = candidates(answers)

    async def work(pair: Candidates, judge: Teacher) -> Decided:
        return await decide(pair, judge, prompts, settings)

    decisions = await run_rows("pairs", chosen, work, teacher=teacher, ledger=ledger, concurrency=concurrency,
                               failure=lambda d: "no_preference" if d.winner is None else None)
    pairs = []
    for pair, decided in zip(chosen, decisions):
        ids = {"prompt_id": pair.first["prompt_id"], "round": round_}
        if decided.winner is None:
            rejected.append(Rejected("pairs", "no_preference", decided.reason, ids))
            continue
        win, lose = (pair.first, pair.second) if decided.winner == 0 else (pair.second, pair.first)
        meta = {**ids, "source": "online", "decided_by": decided.by, "chosen_answer_id": win["id"],
                "rejected_answer_id": lose["id"], **({"judge": list(decided.verdicts)} if decided.verdicts else {})}
        pairs.append(PrefRow(win["messages"], str(win["answer"]), str(lose["answer"]), meta,
                             parents=(win["id"], lose["id"])))
    return pairs, rejected

"""Self-training: the student's own samples become training data when something verifies them.

Two rules from the seeds, applied per prompt to the K answers the student sampled:

- Rejection sampling (STaR, Zelikman et al., 2022): where the prompt has a `reference` (an
  objective check the user wrote), the samples that pass it are training rows. Up to `keep`
  distinct passing samples are kept per prompt; each is paired with a failing sample of the same
  prompt, when there is one, as a preference pair (chosen passes, rejected fails).
- Self-consistency (Huang et al., 2022, "Large Language Models Can Self-Improve"): where there is
  no reference, the majority answer is kept when the share of samples that agree with it reaches
  `min_agreement` (answers compared as in `distill.stages.consistency`).

Only complete samples count (the student ended its turn; an answer cut off at the token limit is
never a training target). With no teacher, a sample stops as soon as it fails its check for good
(`distill.student.rejection`, finish_reason "failed"); such a prefix is never the rejected side of
a pair. A prompt that yields no row is *unresolved*: with no teacher
(`--teacher none`) it is recorded in rejected.jsonl with the reason; with a teacher and
`--self-first` it is the only kind of prompt the teacher is asked about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from distill.checks.reference import parse_reference, run_checks
from distill.records.rows import PrefRow, SftRow
from distill.stages.consistency import agreement
from distill.student.rejection import FAILED


@dataclass(frozen=True)
class SelfPolicy:
    """How samples become training rows."""

    keep: int = 2  # distinct verified samples kept per prompt
    min_agreement: float = 0.6  # no reference: the majority's share needed to keep its answer


@dataclass
class SelfOutcome:
    """Training rows from the student's samples, and the prompts nothing verified."""

    sft: list[SftRow] = field(default_factory=list)
    prefs: list[PrefRow] = field(default_factory=list)
    unresolved: dict[str, str] = field(default_factory=dict)  # prompt id -> why no sample was kept
    pass_rates: dict[str, float] = field(default_factory=dict)  # prompt id -> share of samples passing


def complete(row: Mapping[str, Any]) -> bool:
    """A sample the student finished (it ended its turn) with some text: one that may be a training target."""
    return row.get("finish_reason") == "stop" and bool(str(row["answer"]).strip())


def distinct(rows: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    seen: set[str] = set()
    out = []
    for row in rows:
        key = " ".join(str(row["answer"]).split())
        if key not in seen:
            seen.add(key)
            out.append(row)
        if len(out) == limit:
            break
    return out


def _sft_row(row: Mapping[str, Any], source: str, **notes: Any) -> SftRow:
    meta = {"prompt_id": row["prompt_id"], "answer_id": row["id"], "round": row.get("round"), "source": source,
            "sample": row.get("sample", 0), **notes}
    return SftRow(row["messages"], row["answer"], meta, parent=row["id"])


def _pref_row(chosen: Mapping[str, Any], rejected: Mapping[str, Any], failures: Sequence[str]) -> PrefRow:
    meta = {"prompt_id": chosen["prompt_id"], "chosen_answer_id": chosen["id"], "rejected_answer_id": rejected["id"],
            "round": chosen.get("round"), "source": "self", "rejected_fails": list(failures)}
    return PrefRow(chosen["messages"], chosen["answer"], rejected["answer"], meta, parents=(chosen["id"], rejected["id"]))


def _verified(rows: Sequence[Mapping[str, Any]], policy: SelfPolicy, out: SelfOutcome) -> None:
    """Rejection sampling on one prompt's samples, which share a reference."""
    checks = parse_reference(rows[0]["reference"])
    results = [run_checks(checks, str(r["answer"])) for r in rows]
    passing = [r for r, res in zip(rows, results) if res.passed and complete(r)]
    failing = [(r, res.failures) for r, res in zip(rows, results) if not res.passed]
    pid = rows[0]["prompt_id"]
    out.pass_rates[pid] = len(passing) / len(rows)
    if not passing:
        reason = failing[0][1] if failing else ("every passing sample was cut off at the token limit",)
        out.unresolved[pid] = f"none of {len(rows)} samples passes its check (e.g. fails {', '.join(reason)})"
        return
    whole = [(r, why) for r, why in failing if r.get("finish_reason") != FAILED]  # a stopped sample is a prefix
    for i, row in enumerate(distinct(passing, policy.keep)):
        out.sft.append(_sft_row(row, "self", verified=True, pass_rate=out.pass_rates[pid]))
        if whole:
            bad, failures = whole[i % len(whole)]
            out.prefs.append(_pref_row(row, bad, failures))


def _consistent(rows: Sequence[Mapping[str, Any]], policy: SelfPolicy, out: SelfOutcome) -> None:
    """Majority voting on one prompt's samples (no reference)."""
    pid = rows[0]["prompt_id"]
    finished = [r for r in rows if complete(r)]
    if not finished:
        out.unresolved[pid] = f"all {len(rows)} samples were cut off at the token limit or empty"
        return
    found = agreement([str(r["answer"]) for r in finished])
    share = found.fraction * len(finished) / len(rows)  # cut-off samples count as disagreeing
    if share < policy.min_agreement:
        out.unresolved[pid] = (f"the samples agree {share:.0%} of the time, under the threshold "
                               f"{policy.min_agreement:.0%}")
        return
    out.sft.append(_sft_row(finished[found.chosen], "self_consistent", verified=False, agreement=round(share, 4)))


def select(answers: Sequence[Mapping[str, Any]], policy: SelfPolicy = SelfPolicy()) -> SelfOutcome:
    """Apply both rules to every prompt's samples (answer rows as `distill answer` writes them)."""
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for row in answers:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    out = SelfOutcome()
    for rows in by_prompt.values():
        rows = sorted(rows, key=lambda r: r.get("sample", 0))
        (_verified if rows[0].get("reference") is not None else _consistent)(rows, policy, out)
    return out

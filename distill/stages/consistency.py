"""Self-consistency, after "Large Language Models Can Self-Improve" (Huang et al., 2022).

The student samples k answers per prompt. Their agreement (the share of samples whose final
answer matches the most common one) says how sure the student is. Answers are compared by their
last number when they have one (arithmetic), else by their normalised text. A run can then skip
the prompts the student already answers consistently and spend the teacher's calls where it is
unsure; the critiqued answer is the first sample of the majority.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from distill.checks.reference import last_number
from distill.checks.similarity import normalise


@dataclass(frozen=True)
class Agreement:
    fraction: float  # share of samples that agree with the majority
    majority: str  # the majority's comparison key
    chosen: int  # index of the first sample in the majority
    samples: int


def answer_key(text: str) -> str:
    number = last_number(text)
    if number is not None:
        return f"number:{number:g}"
    return "text:" + normalise(text)[:200]


def agreement(texts: Sequence[str]) -> Agreement:
    keys = [answer_key(t) for t in texts]
    majority, count = Counter(keys).most_common(1)[0]
    return Agreement(fraction=count / len(keys), majority=majority, chosen=keys.index(majority), samples=len(keys))


def choose(answer_rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[Mapping[str, Any], Agreement]]:
    """{prompt id: (the answer row to critique, the agreement of its samples)}."""
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for row in answer_rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    chosen = {}
    for pid, rows in by_prompt.items():
        rows = sorted(rows, key=lambda r: r["sample"])
        found = agreement([r["answer"] for r in rows])
        chosen[pid] = (rows[found.chosen], found)
    return chosen

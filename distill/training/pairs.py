"""Preference data: DPO's pairs (prompt, chosen, rejected) and KTO's unpaired labelled answers, as rows and tokens.

DPO reads prefs.jsonl (TRL's preference format: {"prompt": [chat], "chosen": [{"role":
"assistant", ...}], "rejected": [...]}, as the filters write it, `distill.records.rows.PrefRow`).

KTO needs only a label per answer, so it takes more of what a run knows (`kto_rows`):

- prefs.jsonl: the chosen answer is desirable, the rejected one undesirable;
- rejected.jsonl: a revision the `reference` filter dropped failed its prompt's objective check, so
  it is undesirable; rejected.jsonl holds only its ids, and its text is read from revisions.jsonl
  by `revision_id`;
- `distill review` decisions: sft.reviewed.jsonl holds the rows a person accepted or edited
  (desirable), sft.review-rejected.jsonl the rows they rejected (undesirable).

Everything is rendered and labelled by `distill.training.examples.encode`, so the loss is on the
response tokens only and the end-of-turn token is a label, as in SFT. An encoded item carries its
reference log-probabilities once they are computed (`with_reference`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.errors import InputError
from distill.records.ids import content_hash
from distill.records.jsonl import read_rows
from distill.student.model import Student
from distill.training.examples import Encoded, Example, encode, parse_completion, parse_prompt_field, read_examples

PREFS = "prefs.jsonl"
REVIEW_REJECTED = "sft.review-rejected.jsonl"  # written by `distill review --import` (evaluation.review)
PAIR_ROW = (', e.g. {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", '
            '"content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}')
HOW_TO_GET_PAIRS = ("a round writes prefs.jsonl when the teacher's revision of an answer passes the filters "
                    "(`distill run` with a teacher); or pass a JSONL file of {\"prompt\", \"chosen\", \"rejected\"} "
                    "rows")


# ---------------------------------------------------------------- rows

@dataclass(frozen=True)
class Pair:
    """A DPO pair: a chat prompt (ending in a user turn), the preferred answer and the dispreferred one."""

    id: str
    prompt: tuple[Mapping[str, str], ...]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Labelled:
    """A KTO example: a chat prompt, an answer, and whether the answer is desirable; `origin` says why."""

    id: str
    prompt: tuple[Mapping[str, str], ...]
    completion: str
    desirable: bool
    origin: str


def parse_pair(obj: Any) -> Pair:
    """Validate one decoded prefs.jsonl row; ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for name in ("prompt", "chosen", "rejected"):
        if name not in obj:
            raise ValueError(f"field '{name}': missing")
    prompt = parse_prompt_field(obj["prompt"])
    chosen, rejected = parse_completion(obj["chosen"], "chosen"), parse_completion(obj["rejected"], "rejected")
    raw_id = obj.get("id")
    if raw_id is None:
        raw_id = "d-" + content_hash({"prompt": [dict(m) for m in prompt], "chosen": chosen, "rejected": rejected})
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or not str(raw_id).strip():
        raise ValueError(f"field 'id': expected a non-empty string or integer, got {raw_id!r}")
    return Pair(id=str(raw_id), prompt=prompt, chosen=chosen, rejected=rejected)


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Every pair of a prefs.jsonl file, validated whole (FILE:LINE errors); InputError saying how
    to get pairs when the file is missing or empty."""
    path = Path(path)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        raise InputError(f"{path}: {'empty' if path.is_file() else 'no such file'}; preference training needs "
                         f"pairs: {HOW_TO_GET_PAIRS}")
    return read_rows(path, parse_pair, example=PAIR_ROW)


def pairs_as_labelled(pairs: Sequence[Pair]) -> list[Labelled]:
    """KTO's view of pairs: each chosen answer desirable, each rejected one undesirable."""
    out: list[Labelled] = []
    for p in pairs:
        out.append(Labelled(f"{p.id}:chosen", p.prompt, p.chosen, True, "prefs"))
        out.append(Labelled(f"{p.id}:rejected", p.prompt, p.rejected, False, "prefs"))
    return out


def kto_rows(run_dir: str | os.PathLike[str]) -> list[Labelled]:
    """A run's labelled answers for KTO: prefs.jsonl, reference-check failures, review decisions.

    InputError when the run holds none of them. An answer met twice (same prompt and text) is kept once.
    """
    run_dir = Path(run_dir)
    rows: list[Labelled] = []
    if (run_dir / PREFS).is_file() and (run_dir / PREFS).read_text(encoding="utf-8").strip():
        rows += pairs_as_labelled(read_pairs(run_dir / PREFS))
    rows += _check_failures(run_dir)
    rows += _reviewed(run_dir / "sft.reviewed.jsonl", desirable=True)
    rows += _reviewed(run_dir / REVIEW_REJECTED, desirable=False)
    if not rows:
        raise InputError(f"{run_dir}: no labelled answers for KTO (no {PREFS}, no revision rejected by the reference "
                         f"filter in rejected.jsonl, no review decisions); {HOW_TO_GET_PAIRS}, or review sft.jsonl "
                         "with `distill review`")
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = content_hash([[dict(m) for m in row.prompt], row.completion])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _check_failures(run_dir: Path) -> list[Labelled]:
    """Revisions the `reference` filter rejected (they fail the prompt's objective check), with their
    text from revisions.jsonl."""
    rejected, revisions = run_dir / "rejected.jsonl", run_dir / "revisions.jsonl"
    if not rejected.is_file() or not rejected.read_text(encoding="utf-8").strip():
        return []
    failed = [r for r in read_rows(rejected, _dict_row)
              if r.get("stage") == "filter" and r.get("filter") == "reference" and r.get("revision_id")]
    if not failed:
        return []
    if not revisions.is_file():
        raise InputError(f"{rejected}: names revisions the reference check rejected, but {revisions} is missing; "
                         "their text is read from it")
    by_id = {r["id"]: r for r in read_rows(revisions, _dict_row) if r.get("status") == "ok"}
    out = []
    for row in failed:
        revision = by_id.get(row["revision_id"])
        if revision is None or not str(revision.get("revision") or "").strip():
            continue  # the revision's text is not there (a resumed or edited run): nothing to learn from
        prompt = parse_prompt_field(revision["messages"])
        out.append(Labelled(f"{row['revision_id']}:check", prompt, revision["revision"], False, "reference_check"))
    return out


def _reviewed(path: Path, *, desirable: bool) -> list[Labelled]:
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return []
    origin = "review_accept" if desirable else "review_reject"
    return [Labelled(f"{e.id}:review", e.prompt, e.completion, desirable, origin) for e in read_examples(path)]


def _dict_row(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- tokens

@dataclass(frozen=True)
class EncodedPair:
    """A pair as tokens (both rows labelled on the answer only), with the reference's log-probs once known."""

    id: str
    chosen: Encoded
    rejected: Encoded
    ref: tuple[float, float] | None = None  # the reference policy's log p(chosen), log p(rejected)

    def __len__(self) -> int:  # the padded tokens its two rows take: what batching sorts and budgets by
        return 2 * max(len(self.chosen), len(self.rejected))

    @property
    def rows(self) -> tuple[Encoded, ...]:
        return self.chosen, self.rejected


@dataclass(frozen=True)
class EncodedLabelled:
    """A KTO example as tokens, with its KL companion: the same prompt with another example's answer
    (the KTO paper's mismatched pair, used to estimate the policy's KL from the reference)."""

    id: str
    answer: Encoded
    companion: Encoded
    desirable: bool
    ref: tuple[float, float] | None = None  # the reference's log p(answer), log p(companion)

    def __len__(self) -> int:
        return 2 * max(len(self.answer), len(self.companion))

    @property
    def rows(self) -> tuple[Encoded, ...]:
        return self.answer, self.companion


Item = EncodedPair | EncodedLabelled


def with_reference(item: Item, ref: tuple[float, float]) -> Item:
    return dataclasses.replace(item, ref=ref)


def encode_pairs(pairs: Sequence[Pair], student: Student, max_length: int) -> tuple[list[EncodedPair], list[str]]:
    """Both answers of every pair encoded; a pair with either over `max_length` tokens is dropped: (kept, dropped ids)."""
    kept: list[EncodedPair] = []
    dropped: list[str] = []
    for p in pairs:
        chosen = encode(Example(p.id + ":chosen", p.prompt, p.chosen), student)
        rejected = encode(Example(p.id + ":rejected", p.prompt, p.rejected), student)
        if max(len(chosen), len(rejected)) <= max_length:
            kept.append(EncodedPair(p.id, chosen, rejected))
        else:
            dropped.append(p.id)
    return kept, dropped


def encode_labelled(rows: Sequence[Labelled], student: Student,
                    max_length: int) -> tuple[list[EncodedLabelled], list[str]]:
    """Every example encoded with its KL companion (its prompt, the next example's answer, cyclically);
    an example with either over `max_length` tokens is dropped: (kept, dropped ids)."""
    if len(rows) < 2:
        raise InputError(f"KTO needs at least 2 labelled answers (its KL estimate pairs each prompt with another "
                         f"example's answer), got {len(rows)}")
    kept: list[EncodedLabelled] = []
    dropped: list[str] = []
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)]
        answer = encode(Example(row.id, row.prompt, row.completion), student)
        companion = encode(Example(row.id + ":kl", row.prompt, other.completion), student)
        if max(len(answer), len(companion)) <= max_length:
            kept.append(EncodedLabelled(row.id, answer, companion, row.desirable))
        else:
            dropped.append(row.id)
    return kept, dropped

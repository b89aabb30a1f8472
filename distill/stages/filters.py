"""Filters: each decides whether a revised answer may become training data, and says why not.

A `Candidate` is one prompt's original answer and the teacher's final revision. Filters run in
order; the first that returns a `Drop` removes the row, and its name and detail go to
`rejected.jsonl`. Filters are plain async functions registered by name in `FILTERS`; third
parties add their own through the `distill.filters` entry-point group, and `--filters` picks
which run and in what order.

A check the user wrote (the prompt's `reference`) is the authority. When the original fails it
and the revision passes, the row is a *verified fix*: `unchanged`, `length` (up to
`VERIFIED_LENGTH_FACTOR` times its usual bound) and `judge` never drop it (the judge's verdicts
are still asked for and recorded). Similarity and the judge decide only where no check exists.

| filter        | drops a row when                                                             |
|---------------|------------------------------------------------------------------------------|
| acceptable    | the teacher accepted the original and no check verifies it (an accepted answer|
|               | that passes its prompt's check is kept as a verified positive example; one   |
|               | the student's token limit cut off is not verified: the check saw a part)     |
| boilerplate   | (strips "Sure, here is the revised answer:" wrappers first) nothing is left;  |
|               | a wrapper the check needs (quotation marks, a fence) is left in place        |
| empty         | the text is empty, or the teacher stopped at its token limit (truncated)     |
| unchanged     | the revision equals the original up to whitespace (case, punctuation, quotes,|
|               | list markers and line breaks all count as changes)                           |
| length        | the revision is more than `max_length_ratio` times longer than the original  |
| reference     | the prompt has a reference and the text fails its checks                     |
| judge         | a pairwise judge, asked in both orders, does not prefer the revision twice   |

Every pattern here runs in time linear in the text (no nested or adjacent unbounded repeats
that could backtrack), so a 20,000-space reply costs microseconds, not seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable, Mapping, Sequence

from distill.checks.reference import Check, parse_reference, run_checks
from distill.config import default_of
from distill.errors import ConfigError, QuotaExhausted, TeacherError
from distill.records.rows import PrefRow, Rejected, Revision, SftRow
from distill.stages.accounting import Ledger
from distill.stages.config import RunConfig
from distill.stages.protocol import ProtocolFailure, Settings, judge_both_orders
from distill.stages.runner import run_rows
from distill.stages.templates import PromptSet
from distill.teachers.base import Teacher
from distill.teachers.cache.layer import OfflineMiss
from distill.teachers.stack import TeacherHandle

_WRAPPER_HEAD = re.compile(
    r"(?:(?:sure|certainly|of course|okay|ok|absolutely)[,!.]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:the|my|a|an|your)?\s*(?:revised|improved|corrected|updated|rewritten|final)?\s*"
    r"(?:answer|response|version|text)\s*[:.\-]|"
    r"(?:revised|improved|corrected|final|rewritten)\s+(?:answer|response|version)\s*[:.\-])",
    re.IGNORECASE)
_WRAPPER_TAIL = re.compile(r"(?:let me know if (?:you|there)|i hope (?:this|that) helps)[^\n]*", re.IGNORECASE)
_FENCE_OPEN = re.compile(r"```[a-z]*\n")
_WHITESPACE = re.compile(r"[^\S\n]+")

VERIFIED_LENGTH_FACTOR = 3.0
"""A verified fix may be this many times longer than `length`'s usual bound before it is dropped."""


@dataclass
class Candidate:
    """One row flowing through the filters. `text` is what would be trained on."""

    revision: Mapping[str, Any]  # the row from revisions.jsonl
    text: str
    original: str
    positive: bool = False  # True: an accepted original kept as a positive example
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> Any:
        return self.revision.get("reference")

    @cached_property
    def checks(self) -> tuple[Check, ...]:
        """The prompt's objective checks (none without a reference), parsed once per row."""
        return parse_reference(self.reference) if self.reference is not None else ()

    def passes(self, text: str) -> bool | None:
        """Whether `text` passes the prompt's checks; None when the prompt has none."""
        return run_checks(self.checks, text).passed if self.checks else None

    @cached_property
    def original_passes(self) -> bool | None:
        return self.passes(self.original)

    @property
    def original_cut(self) -> bool:
        """The student's token limit cut the original off: a check run on it saw only part of an answer
        (a count, a limit or an ending it might have broken in the words it never wrote)."""
        return self.revision.get("original_finish_reason") == "length"

    @property
    def verified(self) -> bool:
        """The text to train on passes the prompt's check, and the check saw all of it."""
        return self.passes(self.text) is True and not (self.positive and self.original_cut)

    @property
    def verified_fix(self) -> bool:
        """The original fails the prompt's check and the current text passes it."""
        return self.original_passes is False and self.passes(self.text) is True


@dataclass(frozen=True)
class Drop:
    filter: str
    detail: str


@dataclass
class FilterContext:
    """What filters may use: the teacher (for the judge), templates, and thresholds. In the filter
    stage `teacher` is the row's own view of the run's teacher: its calls are billed to the row."""

    teacher: Teacher | None
    prompts: PromptSet | None
    keep_acceptable: bool = default_of(RunConfig, "keep_acceptable")  # also keep accepted answers no check verifies
    verified_positives: bool = default_of(RunConfig, "verified_positives")  # keep those that pass their check
    max_length_ratio: float = default_of(RunConfig, "max_length_ratio")
    unchanged_threshold: float = default_of(RunConfig, "unchanged_threshold")  # 1.0: equal up to whitespace
    settings: Settings = Settings(max_tokens=256)


FilterFn = Callable[[Candidate, FilterContext], Awaitable[Drop | None]]


def strip_boilerplate(text: str) -> str:
    """Remove wrappers a teacher adds around the answer: preambles, sign-offs, a code fence, quotes."""
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) > 6:
        opened = _FENCE_OPEN.match(text)
        if opened and text[opened.end():-3].endswith("\n"):
            text = text[opened.end():-4].strip()
    head = _WRAPPER_HEAD.match(text)
    if head:
        text = text[head.end():].lstrip()
    last_line = text.rfind("\n") + 1
    tail = _WRAPPER_TAIL.search(text, last_line)
    if tail and tail.end() == len(text):
        text = text[:tail.start()].rstrip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def whitespace_normalised(text: str) -> str:
    """`text` with runs of spaces and tabs made one space, every line stripped and blank edges
    removed; case, punctuation and line breaks are kept."""
    return "\n".join(_WHITESPACE.sub(" ", line).strip() for line in text.strip().splitlines())


def unchanged_text(original: str, revised: str, threshold: float = 1.0) -> bool:
    """True when the texts are equal up to whitespace, or (threshold below 1) at least that similar
    by difflib's ratio over the whitespace-normalised texts, case and punctuation included."""
    a, b = whitespace_normalised(original), whitespace_normalised(revised)
    if a == b:
        return True
    if threshold >= 1.0:
        return False
    import difflib

    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold


async def boilerplate(c: Candidate, ctx: FilterContext) -> Drop | None:
    stripped = strip_boilerplate(c.text)
    if stripped == c.text.strip():
        return None
    if c.passes(c.text) is True and c.passes(stripped) is False:
        c.notes["boilerplate_kept"] = "stripping would fail the prompt's check"
        return None
    c.notes["boilerplate_stripped"] = True
    c.text = stripped
    return Drop("boilerplate", "nothing left after removing the wrapper text") if not stripped else None


async def empty(c: Candidate, ctx: FilterContext) -> Drop | None:
    truncated = c.revision.get("finish_reason") == "length"
    if not c.text.strip():
        return Drop("empty", "the revision is empty" + (
            ": the teacher reached its token limit before writing it (raise --teacher-max-tokens)" if truncated else ""))
    if not c.positive and truncated:
        return Drop("empty", "truncated: the teacher stopped at its token limit (raise --teacher-max-tokens)")
    return None


async def acceptable(c: Candidate, ctx: FilterContext) -> Drop | None:
    """An accepted answer is kept as a positive example when its prompt's check verifies it (or,
    with --keep-acceptable, unverified); otherwise it is dropped, saying which case it was."""
    if c.revision.get("verdict") != "acceptable":
        return None
    passed = c.original_passes
    if passed is True and c.original_cut:
        if ctx.keep_acceptable:
            c.positive, c.text = True, c.original
            c.notes["positive"] = "unverified"
            return None
        return Drop("acceptable", "the teacher found nothing to revise and the answer passes its check, but the "
                                  "student's token limit cut it off, so the check saw only part of it (unverified; "
                                  "raise --max-new-tokens, or --keep-acceptable keeps such answers)")
    if (passed is True and ctx.verified_positives) or (ctx.keep_acceptable and passed is not False):
        c.positive, c.text = True, c.original
        c.notes["positive"] = "verified" if passed else "unverified"
        return None
    if passed is False:
        failures = run_checks(c.checks, c.original).failures
        return Drop("acceptable", "the teacher accepted the answer, but it fails its check: " + ", ".join(failures))
    if passed is True:
        return Drop("acceptable", "the teacher found nothing to revise (verified by its check; "
                                  "verified positives are off)")
    return Drop("acceptable", "the teacher found nothing to revise, and no check verifies the answer "
                              "(unverified; --keep-acceptable keeps such answers)")


async def unchanged(c: Candidate, ctx: FilterContext) -> Drop | None:
    if c.positive or not unchanged_text(c.original, c.text, ctx.unchanged_threshold):
        return None
    if c.verified_fix:
        c.notes["unchanged_overruled"] = "verified fix: the original fails the check, the revision passes"
        return None
    if ctx.unchanged_threshold >= 1.0:
        return Drop("unchanged", "the revision equals the original up to whitespace")
    return Drop("unchanged", f"the revision is near-identical to the original (similarity >= {ctx.unchanged_threshold})")


async def length(c: Candidate, ctx: FilterContext) -> Drop | None:
    if c.positive:
        return None
    bound = max(len(c.original), 200)
    ratio = ctx.max_length_ratio * (VERIFIED_LENGTH_FACTOR if c.verified_fix else 1.0)
    if len(c.text) > ratio * bound:
        return Drop("length", f"the revision has {len(c.text)} characters, over {ratio:g}x the "
                              f"original's {len(c.original)}" + (" (a verified fix)" if c.verified_fix else ""))
    return None


async def reference(c: Candidate, ctx: FilterContext) -> Drop | None:
    if not c.checks:
        return None
    result = run_checks(c.checks, c.text)
    c.notes["reference_passed"] = result.passed
    c.notes["original_reference_passed"] = c.original_passes
    return None if result.passed else Drop("reference", "fails " + ", ".join(result.failures))


async def judge(c: Candidate, ctx: FilterContext) -> Drop | None:
    """Ask the judge twice, revision first and second; it must win both times (ties drop), unless
    the row is a verified fix: then the verdicts are recorded and the check decides."""
    if c.positive:
        return None
    if ctx.teacher is None or ctx.prompts is None:
        raise ConfigError("the 'judge' filter needs a teacher; remove it with --filters or configure a teacher")
    orders = await judge_both_orders(ctx.teacher, ctx.prompts, c.revision["messages"], c.text, c.original,
                                     ctx.settings, prompt_id=c.revision.get("prompt_id"))
    verdicts = [{"candidate": "revision", "other": "original"}.get(v, v) for v in orders]
    c.notes["judge"] = verdicts
    if verdicts == ["revision", "revision"]:
        return None
    if c.verified_fix:
        c.notes["judge_overruled"] = "verified fix: the original fails the check, the revision passes"
        return None
    return Drop("judge", f"the judge did not prefer the revision in both orders ({verdicts[0]}, {verdicts[1]})")


FILTERS: dict[str, FilterFn] = {
    "boilerplate": boilerplate,
    "empty": empty,
    "acceptable": acceptable,
    "unchanged": unchanged,
    "length": length,
    "reference": reference,
    "judge": judge,
}
DEFAULT_ORDER: tuple[str, ...] = default_of(RunConfig, "filters")  # the order filters run in by default


def resolve(names: list[str] | tuple[str, ...] = DEFAULT_ORDER) -> list[tuple[str, FilterFn]]:
    """The named filters in order, built-ins first, then the `distill.filters` entry points."""
    available = dict(FILTERS)
    for ep in entry_points(group="distill.filters"):
        available.setdefault(ep.name, ep.load())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"unknown filter {unknown[0]!r}; available: {', '.join(sorted(available))}")
    return [(n, available[n]) for n in names]


async def apply(candidate: Candidate, chain: list[tuple[str, FilterFn]], ctx: FilterContext) -> Drop | None:
    """Run the filters in order; the first Drop wins."""
    for _, fn in chain:
        dropped = await fn(candidate, ctx)
        if dropped is not None:
            return dropped
    return None


# ---------------------------------------------------------------- the filter stage

@dataclass
class Filtered:
    """One revision through the filters: the candidate, the Drop that stopped it (None: kept), and
    the type of the error when a filter's teacher call failed (the judge's, say)."""

    candidate: Candidate
    dropped: Drop | None
    error: str | None = None


@dataclass
class Selection:
    """Training rows, preference pairs and rejections: what the filter stage made of the revisions
    (and, in a round, what every stage selected)."""

    sft: list[SftRow] = field(default_factory=list)
    prefs: list[PrefRow] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def extend(self, other: "Selection") -> None:
        self.sft += other.sft
        self.prefs += other.prefs
        self.rejected += other.rejected


async def filter_one(revision: Revision, chain: list[tuple[str, FilterFn]], ctx: FilterContext) -> Filtered:
    """The filters on one ok revision; a failed teacher call drops the row (`filter_failed`), an
    exhausted quota stops the stage."""
    row = revision.to_row()
    candidate = Candidate(revision=row, text=row["revision"], original=row["original"])
    try:
        return Filtered(candidate, await apply(candidate, chain, ctx))
    except QuotaExhausted:
        raise
    except (TeacherError, OfflineMiss, ProtocolFailure) as exc:
        return Filtered(candidate, Drop("filter_failed", f"{type(exc).__name__}: {exc}"[:500]), type(exc).__name__)


async def filter_stage(revisions: Sequence[Revision], ctx: FilterContext, names: Sequence[str], *,
                       teacher: TeacherHandle | None, ledger: Ledger, concurrency: int = 16,
                       progress: bool = True) -> Selection:
    """The filters on every revision through the stage runner (`teacher`: the run's, behind the
    judge); a failed revision is rejected as it is. The rows come out in the revisions' order."""
    chain = resolve(tuple(names))
    ok = [r for r in revisions if r.ok]

    async def work(revision: Revision, row_teacher: Teacher) -> Filtered:
        return await filter_one(revision, chain, replace(ctx, teacher=row_teacher))

    if teacher is not None:
        outcomes = await run_rows("filter", ok, work, teacher=teacher, ledger=ledger, concurrency=concurrency,
                                  failure=lambda f: f.error, progress=progress)
    else:
        outcomes = [await filter_one(r, chain, ctx) for r in ok]
        ledger.rows += len(ok)
        ledger.done()
    judged = {r.id: f for r, f in zip(ok, outcomes)}
    selection = Selection()
    for revision in revisions:
        _select(revision, judged.get(revision.id), selection)
    return selection


def _select(rev: Revision, filtered: Filtered | None, out: Selection) -> None:
    ids = {"prompt_id": rev.prompt_id, "answer_id": rev.answer_id, "revision_id": rev.id}
    if filtered is None:  # the critique failed
        detail = f"{rev.reason}: {rev.detail or ''}"[:500]
        out.rejected.append(Rejected("critique", "failed", detail, {**ids, "round": rev.round}))
        return
    cand, dropped = filtered.candidate, filtered.dropped
    if dropped is not None:
        out.rejected.append(Rejected("filter", dropped.filter, dropped.detail, {**ids, "round": rev.round}))
        return
    meta = {**ids, "round": rev.round, "teacher": rev.teacher, "template_ids": rev.template_ids,
            "source": "acceptable" if cand.positive else "revision", **cand.notes,
            "verified": cand.verified}
    # a positive the student's token limit cut off is trained as far as it goes, without an
    # end-of-turn token (as replay answers are): with one, the student learns to stop mid-sentence
    cut = cand.positive and rev.original_finish_reason == "length"
    out.sft.append(SftRow(rev.messages, cand.text, meta, parent=rev.id, ends=not cut))
    if not cand.positive:
        out.prefs.append(PrefRow(rev.messages, cand.text, cand.original, meta, parents=(rev.id, cand.text)))

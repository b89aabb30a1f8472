"""Filters: each decides whether a revised answer may become training data, and says why not.

A `Candidate` is one prompt's original answer and the teacher's final revision. Filters run in
order; the first that returns a `Drop` removes the row, and its name and detail go to
`rejected.jsonl`. Filters are plain async functions registered by name in `FILTERS`; third
parties add their own through the `distill.filters` entry-point group, and `--filters` picks
which run and in what order.

| filter        | drops a row when                                                             |
|---------------|------------------------------------------------------------------------------|
| acceptable    | every stage judged the original acceptable (or keeps it as a positive example)|
| boilerplate   | (strips "Sure, here is the revised answer:" wrappers first) nothing is left  |
| empty         | the text is empty, or the teacher stopped at its token limit (truncated)     |
| unchanged     | the revision is near-identical to the original                               |
| length        | the revision is more than `max_length_ratio` times longer than the original  |
| reference     | the prompt has a reference and the text fails its checks                     |
| judge         | a pairwise judge, asked in both orders, does not prefer the revision twice   |
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable, Mapping

from distill.accounting import Ledger
from distill.checks import parse_reference, run_checks
from distill.errors import ConfigError
from distill.protocol import Settings, judge_both_orders
from distill.similarity import near_identical
from distill.teachers.base import Teacher
from distill.templates import PromptSet

_WRAPPER_HEAD = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)[,!.]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:the|my|a|an|your)?\s*(?:revised|improved|corrected|updated|rewritten|final)?\s*"
    r"(?:answer|response|version|text)\s*[:.\-]|"
    r"(?:revised|improved|corrected|final|rewritten)\s+(?:answer|response|version)\s*[:.\-])\s*",
    re.IGNORECASE)
_WRAPPER_TAIL = re.compile(r"\s*(?:let me know if (?:you|there)[^\n]*|i hope (?:this|that) helps[^\n]*)$", re.IGNORECASE)
_FENCED = re.compile(r"^\s*```[a-z]*\n(.*?)\n```\s*$", re.DOTALL)


@dataclass
class Candidate:
    """One row flowing through the filters. `text` is what would be trained on."""

    revision: Mapping[str, Any]  # the row from revisions.jsonl
    text: str
    original: str
    positive: bool = False  # True: an acceptable original kept as a positive example
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> Any:
        return self.revision.get("reference")


@dataclass(frozen=True)
class Drop:
    filter: str
    detail: str


@dataclass
class FilterContext:
    """What filters may use: the teacher (for the judge), templates, and thresholds."""

    teacher: Teacher | None
    prompts: PromptSet | None
    keep_acceptable: bool = False
    max_length_ratio: float = 3.0
    unchanged_threshold: float = 0.95
    settings: Settings = Settings(max_tokens=256)
    ledger: Ledger | None = None  # judge calls are billed here


FilterFn = Callable[[Candidate, FilterContext], Awaitable[Drop | None]]


def strip_boilerplate(text: str) -> str:
    """Remove wrappers a teacher adds around the answer: preambles, sign-offs, a code fence."""
    fenced = _FENCED.match(text)
    if fenced:
        text = fenced.group(1)
    text = _WRAPPER_TAIL.sub("", _WRAPPER_HEAD.sub("", text, count=1)).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
        text = text[1:-1].strip()
    return text


async def boilerplate(c: Candidate, ctx: FilterContext) -> Drop | None:
    stripped = strip_boilerplate(c.text)
    if stripped == c.text.strip():
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
    if c.revision.get("verdict") != "acceptable":
        return None
    if ctx.keep_acceptable:
        c.positive, c.text = True, c.original
        return None
    return Drop("acceptable", "the teacher found nothing to revise")


async def unchanged(c: Candidate, ctx: FilterContext) -> Drop | None:
    if c.positive or not near_identical(c.original, c.text, ctx.unchanged_threshold):
        return None
    return Drop("unchanged", f"the revision is near-identical to the original (similarity >= {ctx.unchanged_threshold})")


async def length(c: Candidate, ctx: FilterContext) -> Drop | None:
    if c.positive:
        return None
    limit = ctx.max_length_ratio * max(len(c.original), 200)
    if len(c.text) > limit:
        return Drop("length", f"the revision has {len(c.text)} characters, over {ctx.max_length_ratio}x the "
                              f"original's {len(c.original)}")
    return None


async def reference(c: Candidate, ctx: FilterContext) -> Drop | None:
    if c.reference is None:
        return None
    checks = parse_reference(c.reference)
    result = run_checks(checks, c.text)
    c.notes["reference_passed"] = result.passed
    c.notes["original_reference_passed"] = run_checks(checks, c.original).passed
    return None if result.passed else Drop("reference", "fails " + ", ".join(result.failures))


async def judge(c: Candidate, ctx: FilterContext) -> Drop | None:
    """Ask the judge twice, revision first and second; it must win both times (ties drop)."""
    if c.positive:
        return None
    if ctx.teacher is None or ctx.prompts is None:
        raise ConfigError("the 'judge' filter needs a teacher; remove it with --filters or configure a teacher")
    # billed once the row is judged (a failed reply too); a deferred row (batch mode) bills nothing
    with ctx.ledger.row() if ctx.ledger is not None else nullcontext([]) as spend:
        orders = await judge_both_orders(ctx.teacher, ctx.prompts, c.revision["messages"], c.text, c.original,
                                         ctx.settings, prompt_id=c.revision.get("prompt_id"), spend=spend)
    verdicts = [{"candidate": "revision", "other": "original"}.get(v, v) for v in orders]
    c.notes["judge"] = verdicts
    if verdicts == ["revision", "revision"]:
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
DEFAULT_ORDER = ("acceptable", "boilerplate", "empty", "unchanged", "length", "reference", "judge")


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

"""Each filter keeps what it should and drops, with its name and reason, what it should not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from distill import filters
from distill.filters import Candidate, FilterContext, strip_boilerplate
from distill.templates import load_prompt_set
from fakes import ScriptedTeacher, is_judge, judge_reply, quoted_answer

PROMPTS = load_prompt_set()


def revision(original: str, revised: str, **extra: Any) -> dict[str, Any]:
    return {"id": "r1", "prompt_id": "q1", "answer_id": "a1", "status": "ok", "verdict": "needs_revision",
            "messages": [{"role": "user", "content": "What is 6 times 7?"}], "original": original,
            "revision": revised, "finish_reason": "stop", **extra}


def run(name: str, rev: dict[str, Any], ctx: FilterContext | None = None) -> tuple[filters.Drop | None, Candidate]:
    ctx = ctx or FilterContext(teacher=None, prompts=None)
    cand = Candidate(revision=rev, text=rev["revision"], original=rev["original"])
    return asyncio.run(filters.FILTERS[name](cand, ctx)), cand


@pytest.mark.parametrize("text, expected", [
    ("Sure, here is the revised answer: 42", "42"),
    ("Revised answer:\n42", "42"),
    ("Here's the improved response: The sum is 42.", "The sum is 42."),
    ("```\n42\n```", "42"),
    ("42. I hope this helps!", "42."),
    ("Here is a list of primes: 2, 3, 5", "Here is a list of primes: 2, 3, 5"),
])
def test_boilerplate_is_stripped(text: str, expected: str) -> None:
    assert strip_boilerplate(text) == expected
    dropped, cand = run("boilerplate", revision("41", text))
    assert dropped is None and cand.text == expected


def test_boilerplate_with_nothing_inside_is_dropped() -> None:
    dropped, _ = run("boilerplate", revision("41", "Sure, here is the revised answer:"))
    assert dropped and dropped.filter == "boilerplate"


def test_empty_and_truncated() -> None:
    assert run("empty", revision("41", "  "))[0].filter == "empty"
    dropped, _ = run("empty", revision("41", "42 because", finish_reason="length"))
    assert dropped and "truncated" in dropped.detail and "--teacher-max-tokens" in dropped.detail
    dropped, _ = run("empty", revision("41", "", finish_reason="length"))  # the critique used up the budget
    assert dropped and "token limit before writing it" in dropped.detail
    assert run("empty", revision("41", "42"))[0] is None


def test_acceptable_is_dropped_or_kept_as_positive() -> None:
    rev = revision("42", "42", verdict="acceptable")
    assert run("acceptable", rev)[0].filter == "acceptable"
    dropped, cand = run("acceptable", rev, FilterContext(teacher=None, prompts=None, keep_acceptable=True))
    assert dropped is None and cand.positive and cand.text == "42"


def test_unchanged_and_near_identical() -> None:
    assert run("unchanged", revision("The answer is 42.", "the answer is 42"))[0].filter == "unchanged"
    assert run("unchanged", revision("The answer is 41.", "The answer is 42."))[0] is None  # one digit matters
    assert run("unchanged", revision("It is 41 apples", "Six times seven is 42"))[0] is None


def test_length_blowup() -> None:
    assert run("length", revision("42", "x" * 601))[0].filter == "length"
    assert run("length", revision("42", "x" * 599))[0] is None


def test_reference_check_on_the_revision() -> None:
    ref = {"type": "numeric", "value": 42}
    dropped, cand = run("reference", revision("41", "It is 43", reference=ref))
    assert dropped.filter == "reference" and "numeric" in dropped.detail
    dropped, cand = run("reference", revision("41", "6 x 7 = 42", reference=ref))
    assert dropped is None and cand.notes == {"reference_passed": True, "original_reference_passed": False}
    assert run("reference", revision("41", "anything"))[0] is None


def _judge_ctx(prefers: str) -> tuple[FilterContext, ScriptedTeacher]:
    """A judge that always prefers the answer containing `prefers` (or says tie)."""
    def script(request):
        assert is_judge(request)
        a, b = quoted_answer(request, "A"), quoted_answer(request, "B")
        if prefers == "tie":
            return judge_reply("tie")
        if prefers == "first":
            return judge_reply("A")  # position bias: always the first shown
        return judge_reply("A" if prefers in a else "B" if prefers in b else "tie")
    teacher = ScriptedTeacher(script)
    return FilterContext(teacher=teacher, prompts=PROMPTS), teacher


def test_judge_must_prefer_the_revision_in_both_orders() -> None:
    ctx, teacher = _judge_ctx("42")
    dropped, cand = run("judge", revision("41", "42"), ctx)
    assert dropped is None and cand.notes["judge"] == ["revision", "revision"] and len(teacher.requests) == 2
    # the revision is shown first once and second once
    assert quoted_answer(teacher.requests[0], "A") == "42" and quoted_answer(teacher.requests[1], "B") == "42"


@pytest.mark.parametrize("prefers, verdicts", [
    ("41", "original, original"), ("first", "revision, original"), ("tie", "tie, tie")])
def test_judge_drops_losses_position_bias_and_ties(prefers: str, verdicts: str) -> None:
    ctx, _ = _judge_ctx(prefers)
    dropped, _ = run("judge", revision("41", "42"), ctx)
    assert dropped.filter == "judge" and f"({verdicts})" in dropped.detail


def test_a_failed_judge_reply_and_its_repair_are_billed() -> None:
    from distill.accounting import Ledger
    from distill.protocol import ProtocolFailure

    def script(request):  # a good judgement in the first order, then garbage (the repair too)
        return judge_reply("A") if len(teacher.requests) == 1 else "no JSON here"
    teacher = ScriptedTeacher(script)
    ledger = Ledger("filter")
    ctx = FilterContext(teacher=teacher, prompts=PROMPTS, ledger=ledger)
    with pytest.raises(ProtocolFailure):
        run("judge", revision("41", "42"), ctx)
    assert len(teacher.requests) == 3
    assert ledger.calls == 3 and ledger.input_tokens == 300 and ledger.output_tokens == 60


def test_filters_run_in_order_and_first_drop_wins() -> None:
    chain = filters.resolve(["boilerplate", "unchanged", "reference"])
    rev = revision("It is 41", "Sure, here is the revised answer: it is 41", reference={"type": "numeric", "value": 42})
    cand = Candidate(revision=rev, text=rev["revision"], original=rev["original"])
    dropped = asyncio.run(filters.apply(cand, chain, FilterContext(teacher=None, prompts=None)))
    assert dropped.filter == "unchanged"


def test_unknown_filter_is_a_clear_error() -> None:
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown filter 'sparkle'"):
        filters.resolve(["boilerplate", "sparkle"])

"""Reference checks: each type passes a right answer and fails a wrong one; bad fields are refused
when the prompts file is read; a runaway regex fails its check instead of stalling the run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from distill import filters
from distill.checks import CHECK_TYPES, last_number, parse_reference, run_checks
from distill.errors import InputError
from distill.records import read_prompts


@pytest.mark.parametrize("reference, good, bad", [
    ("Paris", "The capital is paris.", "It is Lyon."),
    ({"type": "exact", "value": "Blue"}, " blue. ", "light blue"),
    ({"type": "contains", "any": ["Jupiter", "jupiter"]}, "It's Jupiter", "Saturn"),
    ({"type": "not_contains", "value": "sorry"}, "Here you go", "Sorry, I can't"),
    ({"type": "regex", "pattern": r"^(yes|no)\b", "flags": "i"}, "Yes, because...", "Maybe"),
    ({"type": "numeric", "value": 42}, "6 * 7 = 42", "6 * 7 = 41"),
    ({"type": "numeric", "value": 1000, "tolerance": 0.5}, "In total: 1,000.", "Roughly 999"),
    ({"type": "numeric", "value": 3.5, "tolerance": 0.01}, "x = 3.50", "x = 35"),
    ({"type": "lowercase"}, "apples and pears", "Apples and pears"),
    ({"type": "uppercase"}, "STOP NOW", "Stop now"),
    ({"type": "bullets", "count": 3}, "- a\n- b\n* c", "- a\n- b"),
    ({"type": "max_words", "value": 3}, "one two three", "one two three four"),
    ({"type": "min_words", "value": 2}, "one two", "one"),
    ({"type": "starts_with", "value": "Yes"}, "yes it is", "Well, yes"),
    ({"type": "ends_with", "value": "Final answer: 4"}, "2+2. Final answer: 4", "Final answer: 4 or 5"),
    ([{"type": "lowercase"}, {"type": "max_words", "value": 2}], "two words", "Two words"),
])
def test_check_passes_good_and_fails_bad(reference, good: str, bad: str) -> None:
    checks = parse_reference(reference)
    assert run_checks(checks, good).passed
    result = run_checks(checks, bad)
    assert not result.passed and result.failures


def test_failures_name_the_check() -> None:
    result = run_checks(parse_reference([{"type": "lowercase"}, {"type": "bullets", "count": 2}]), "Hello")
    assert result.failures == ("lowercase", "bullets(count=2)")


@pytest.mark.parametrize("reference, message", [
    ({"type": "numeric", "value": "four"}, "reference.value: expected a number"),
    ({"type": "bullets"}, "needs field 'count'"),
    ({"type": "lowercase", "colour": "red"}, "unknown field 'colour'"),
    ([], "empty list"),
    ([{"type": "regex", "pattern": "a", "flags": "x"}], "reference[0].flags"),
    (5, "expected a string or an object"),
    ({"type": "contains", "any": []}, "reference.any"),
    ({"type": "bullets", "count": 2.5}, "reference.count: expected a non-negative integer"),
    ({"type": "bullets", "count": True}, "reference.count: expected a non-negative integer"),
    ({"type": "exact", "value": None}, "reference.value: expected text or a number"),
    # numbers must be finite, tolerances and counts non-negative (issue 13 item 7)
    ({"type": "numeric", "value": float("nan")}, "reference.value: expected a finite number, got nan"),
    ({"type": "numeric", "value": float("inf")}, "reference.value: expected a finite number, got inf"),
    ({"type": "numeric", "value": 42, "tolerance": float("inf")}, "reference.tolerance: expected a finite number"),
    ({"type": "numeric", "value": 42, "tolerance": -1}, "reference.tolerance: expected a non-negative number"),
    ({"type": "bullets", "count": float("nan")}, "reference.count: expected a non-negative integer, got nan"),
    ({"type": "max_words", "value": float("inf")}, "reference.value: expected a non-negative integer, got inf"),
    ({"type": "min_words", "value": -3}, "reference.value: expected a non-negative integer"),
    ({"type": "regex", "pattern": "a", "timeout": 0}, "reference.timeout: expected seconds above 0"),
    ({"type": "regex", "pattern": "a", "timeout": 3600}, "reference.timeout: expected seconds above 0"),
])
def test_bad_references_name_the_field(reference, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_reference(reference)


def test_last_number() -> None:
    assert last_number("I have 3 apples, then 12,500.5 more") == 12500.5
    assert last_number("no digits") is None
    assert last_number("It is -4.") == -4


def test_every_type_is_documented_and_known() -> None:
    import distill.checks as checks_module

    for kind in CHECK_TYPES:
        assert f"| {kind} " in checks_module.__doc__, kind


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "q", "reference": {"type": "numeric", "value": NaN}}', "reference.value: expected a finite number"),
    ('{"prompt": "q", "reference": {"type": "numeric", "value": 4, "tolerance": Infinity}}', "reference.tolerance"),
    ('{"prompt": "q", "reference": [{"type": "bullets", "count": NaN}]}', "reference[0].count"),
    ('{"prompt": "q", "reference": {"type": "max_words", "value": -Infinity}}', "reference.value"),
])
def test_non_finite_numbers_are_file_line_errors(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps({"prompt": "fine", "reference": {"type": "numeric", "value": 4}}) + "\n" + line + "\n")
    with pytest.raises(InputError) as err:
        read_prompts(f)
    assert f"{f}:2: {message}" in str(err.value)
    assert f"{f}:1:" not in str(err.value)


@pytest.mark.timeout(60)
def test_a_catastrophic_regex_fails_its_check_with_a_timeout() -> None:
    checks = parse_reference([{"type": "regex", "pattern": "^(a+)+$"}, {"type": "min_words", "value": 1}])
    result = run_checks(checks, "a" * 100_000 + "!")
    assert not result.passed
    assert result.failures == ("regex(pattern='^(a+)+$') timed out after 1s",)
    assert run_checks(checks, "aaaa").passed


@pytest.mark.timeout(60)
def test_a_regex_timeout_drops_the_row_instead_of_aborting_the_filter_stage() -> None:
    reference = {"type": "regex", "pattern": "^(a|a)*$", "timeout": 0.2}
    rev = {"id": "r1", "prompt_id": "q1", "messages": [{"role": "user", "content": "Say a lot of a"}],
           "original": "a" * 40 + "!", "revision": "a" * 40 + "?", "reference": reference}
    cand = filters.Candidate(revision=rev, text=rev["revision"], original=rev["original"])
    dropped = asyncio.run(filters.FILTERS["reference"](cand, filters.FilterContext(teacher=None, prompts=None)))
    assert dropped is not None and dropped.filter == "reference"
    assert "timed out after 0.2s" in dropped.detail
    assert cand.notes == {"reference_passed": False, "original_reference_passed": False}

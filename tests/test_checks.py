"""Reference checks: each type passes a right answer and fails a wrong one."""

from __future__ import annotations

import pytest

from distill.checks import last_number, parse_reference, run_checks


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
])
def test_bad_references_name_the_field(reference, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_reference(reference)


def test_last_number() -> None:
    assert last_number("I have 3 apples, then 12,500.5 more") == 12500.5
    assert last_number("no digits") is None
    assert last_number("It is -4.") == -4

"""Early rejection: which checks the start of an answer fails whatever follows it, and the sampler
that stops such a row (`distill.checks.prefix`, `distill.student.rejection`)."""

from __future__ import annotations

import pytest

from distill.checks.prefix import decidable, doomed
from distill.checks.reference import parse_reference, run_checks

CONTINUATIONS = ("", " and more", ".", "\n- x", " THE END", ' "', "s", " 1, 2")


@pytest.mark.parametrize("reference, prefix", [
    ({"type": "lowercase"}, "the capital is Paris"),
    ({"type": "uppercase"}, "THE CAPITAL is"),
    ({"type": "no_comma"}, "Paris, "),
    ({"type": "not_contains", "value": "as an AI"}, "Well, As An AI model"),
    ({"type": "max_words", "value": 1}, "The piano is"),
    ([{"type": "min_words", "value": 1}, {"type": "max_words", "value": 3}], "one two three four five"),
    ({"type": "bullets", "count": 2}, "- a\n- b\n- c"),
    ({"type": "bullets", "count": 2, "marker": "-"}, "* a"),
    ({"type": "quotation"}, "  Paris"),
    ({"type": "starts_with", "value": "In short:"}, "In sum"),
])
def test_a_doomed_prefix_fails_whatever_follows_it(reference, prefix) -> None:
    checks = parse_reference(reference)
    assert doomed(checks, prefix) is not None
    for tail in CONTINUATIONS:
        assert not run_checks(checks, prefix + tail).passed, prefix + tail


@pytest.mark.parametrize("reference, answer", [
    ({"type": "lowercase"}, "the capital of france is paris."),
    ({"type": "uppercase"}, "THE CAPITAL OF FRANCE IS PARIS."),
    ({"type": "no_comma"}, "Paris is the capital of France."),
    ({"type": "not_contains", "value": "as an AI"}, "As a rule, Paris."),
    ({"type": "max_words", "value": 1}, "Piano."),
    ({"type": "max_words", "value": 4}, "Don't you know it?"),
    ({"type": "bullets", "count": 2, "marker": "-"}, "Two points:\n- one\n- two"),
    ({"type": "quotation"}, '  "Paris is the capital."'),
    ({"type": "starts_with", "value": "In short:"}, "in short: Paris."),
])
def test_no_prefix_of_a_passing_answer_is_doomed(reference, answer) -> None:
    checks = parse_reference(reference)
    assert run_checks(checks, answer).passed
    for end in range(len(answer) + 1):
        assert doomed(checks, answer[:end]) is None, answer[:end]


def test_checks_a_prefix_cannot_decide_never_stop_a_row() -> None:
    checks = parse_reference([{"type": "ends_with", "value": "That is all."}, {"type": "numeric", "value": 4}])
    assert not decidable(checks)
    assert doomed(checks, "5, and I am sure of it") is None


def test_a_character_cut_in_half_by_a_token_is_not_a_departure() -> None:
    checks = parse_reference({"type": "starts_with", "value": "Ça va"})
    assert doomed(checks, "\ufffd") is None  # the first bytes of "Ç" decode as U+FFFD
    assert doomed(checks, "Ça") is None and doomed(checks, "Ca va") is not None


# ---------------------------------------------------------------- the sampler


def _student(model_dir):
    from distill.student.model import Student

    return Student.load(str(model_dir))


def test_a_stopped_answer_is_the_start_of_the_whole_one_and_fails_its_check(peaked_model_dir) -> None:
    from distill.records.prompts import Prompt
    from distill.student.model import GenerationParams

    student = _student(peaked_model_dir)
    prompts = [Prompt(id=f"q{i}", messages=({"role": "user", "content": f"Question {i}?"},), reference=ref,
                      checks=parse_reference(ref))
               for i, ref in enumerate([{"type": "lowercase"}, {"type": "max_words", "value": 2},
                                        {"type": "no_comma"}, "free text: no early decision"])]
    whole = student.answer(prompts, GenerationParams(max_new_tokens=24))
    cut = student.answer(prompts, GenerationParams(max_new_tokens=24, stop_failing=True))
    stopped = [c for c in cut if c.finish_reason == "failed"]
    assert stopped, [c.text for c in cut]  # a random model breaks some of these at once
    for w, c in zip(whole, cut):
        if c.finish_reason == "failed":
            assert w.text.startswith(c.text) and c.completion_tokens < w.completion_tokens
            assert not run_checks(c.prompt.checks, c.text).passed
        else:  # never stopped: decoded to its end exactly as without early rejection
            assert (c.text, c.finish_reason) == (w.text, w.finish_reason)
    assert cut[3].finish_reason != "failed"  # a contains check is never decided early
    assert "stop_failing" in cut[0].to_row()["generation"] and "stop_failing" not in whole[0].to_row()["generation"]

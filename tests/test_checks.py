"""Reference checks: each type passes a right answer and fails a wrong one; bad fields are refused
when the prompts file is read; a runaway regex fails its check instead of stalling the run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from distill.checks.reference import CHECK_TYPES, last_number, parse_reference, run_checks
from distill.errors import InputError
from distill.records.prompts import read_prompts
from distill.stages import filters


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
    # a prompt that names its marker ("each line starting with '- '") is not followed by a '*' list
    ({"type": "bullets", "count": 2, "marker": "-"}, "- a\n- b", "* a\n* b"),
    ({"type": "bullets", "count": 2, "marker": "-"}, "Two:\n- a\n- b", "- a\n* b"),
    ({"type": "bullets", "count": 2, "marker": "*"}, "* a\n* b", "- a\n- b"),
    ({"type": "max_words", "value": 3}, "one two three", "one two three four"),
    ({"type": "min_words", "value": 2}, "one two", "one"),
    ({"type": "starts_with", "value": "Yes"}, "yes it is", "Well, yes"),
    ({"type": "ends_with", "value": "Final answer: 4"}, "2+2. Final answer: 4", "Final answer: 4 or 5"),
    ([{"type": "lowercase"}, {"type": "max_words", "value": 2}], "two words", "Two words"),
    # instruction-following checks, with IFEval's semantics
    ({"type": "no_comma"}, "Hello world", "Hello, world"),
    ({"type": "quotation"}, '  "Hello world"\n', 'He said "hello"'),
    ({"type": "quotation"}, '"a"', '"'),
    ({"type": "json"}, '```json\n{"a": [1, 2]}\n```', '{"a": 1'),
    ({"type": "json"}, ' {"a": null} ', "Here is the JSON: {}"),
    ({"type": "json"}, "[[[]]]", "[" * 100_000),  # too deep for the parser: a failed check, not a crash
    ({"type": "placeholders", "count": 2}, "Send [item] to [address].", "Send it to [address]."),
    ({"type": "highlighted", "count": 2}, "*one* and **two**", "*one* and ** ** and **"),
    ({"type": "sections", "count": 2}, "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ({"type": "sections", "count": 2}, "Section 1 a Section 2 b", "Section 1 a Section 2 b Section 3 c"),
    ({"type": "sections", "count": 2, "splitter": "DAY"}, "DAY 1: rest\nDAY 2: walk", "Day 1: rest\nDay 2: walk"),
    ({"type": "sections", "count": 2, "relation": "at least"}, "Section 1 Section 2 Section 3", "Section 1"),
    ({"type": "max_sentences", "value": 2}, "Dr. Smith went home. He slept.", "One. Two. Three."),
    ({"type": "min_sentences", "value": 2}, "One. Two!", "Only one, Dr. Smith."),
    ({"type": "sentences", "count": 3, "relation": "less than"}, "A cat. A dog.", "A cat. A dog. A cow."),
    ({"type": "words", "count": 3, "relation": "less than"}, "go now", "don't go"),
    ({"type": "words", "count": 3}, "one two three", "one two"),
    ({"type": "paragraphs", "count": 2}, "First.\n***\nSecond.", "First.\n***\n***\nSecond."),
    ({"type": "paragraphs", "count": 2}, "***\nFirst. *** Second.\n***", "One paragraph only."),
    ({"type": "first_word", "value": "hello"}, '"Hello," she said.\n\nBye.', "Well, hello."),
    ({"type": "first_word", "value": "Hello", "paragraph": 2, "paragraphs": 2},
     "Intro.\n\nhello world.", "Intro.\n\nhello world.\n\nOutro."),
    ({"type": "forbidden_words", "words": ["bad", "awful"]}, "A badge, awfully nice.", "That is BAD."),
    ({"type": "keywords", "words": ["cat", "dog"]}, "Cats and dogs.", "Only cats."),
    ({"type": "keyword_frequency", "word": "the", "count": 2, "relation": "less than"},
     "the cat", "the cat and the dog"),
    ({"type": "keyword_frequency", "word": "rose", "count": 2}, "A rose is a ROSE.", "A rose is a flower."),
    ({"type": "letter_frequency", "letter": "z", "count": 2}, "Zigzag", "Zebra"),
    ({"type": "letter_frequency", "letter": "#", "count": 2, "relation": "at least"}, "#a #b", "#a"),
    ({"type": "capital_words", "count": 2}, "I love NASA", "I love Nasa"),
    ({"type": "capital_words", "count": 2, "relation": "less than"}, "I love it", "DON'T"),
    ({"type": "title"}, "<<Ode to Joy>>\nText", "<< >> and <<\n>>"),
    ({"type": "postscript"}, "Hi.\n\nP.S. See you.", "Hi. PS see you"),
    ({"type": "postscript", "marker": "P.P.S"}, "Hi.\np. p. s. bye", "Hi.\nP.S. bye"),
    ({"type": "postscript", "marker": "Note:"}, "Done.\nnote: later", "Done. No remark."),
    ({"type": "constrained_response"}, "I think so. My answer is yes.", "Yes."),
    ({"type": "repeat_prompt", "prompt": "Write a haiku."}, "write a haiku. Leaves fall.", "Here is a haiku."),
    ({"type": "two_responses"}, "Answer A\n******\nAnswer B", "Answer A\n******\nAnswer A"),
    ({"type": "two_responses"}, "******A******B", "A\n******\n\n******\nB"),
    ({"type": "language", "code": "fr"}, "Bonjour, je suis très heureux de vous rencontrer aujourd'hui.",
     "Hello, I am very happy to meet you today."),
    ({"type": "ifeval", "id": "punctuation:no_comma"}, "Yes indeed", "Yes, indeed"),
    ({"type": "ifeval", "id": "length_constraints:number_words", "kwargs": {"num_words": 5, "relation": "less than"}},
     "one two three", "one two three four five"),
    ({"type": "ifeval", "id": "detectable_format:multiple_sections",
      "kwargs": {"section_spliter": "SECTION", "num_sections": 2}}, "SECTION 1 a SECTION 2 b SECTION 3 c", "SECTION 1"),
    ({"type": "ifeval", "id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": 2}},
     "* one\n-two", "* one\n** not a bullet\n• nor this"),
    ({"type": "ifeval", "id": "startend:end_checker", "kwargs": {"end_phrase": "Any other questions?"}},
     '"That is all. Any other questions?"', "Any other questions? No."),
    ({"type": "ifeval", "id": "change_case:english_capital"}, "THIS IS MY ANSWER IN ENGLISH.", "THIS IS my answer."),
    ({"type": "ifeval", "id": "change_case:english_lowercase"}, "this is my answer in english.",
     "c'est ma réponse en français, voilà tout."),
    ({"type": "ifeval", "id": "keywords:letter_frequency",
      "kwargs": {"letter": "e", "let_frequency": 3, "let_relation": "at least"}}, "Eee", "ee"),
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
    ({"type": "placeholders"}, "needs field 'count'"),
    ({"type": "placeholders", "count": -1}, "reference.count: expected a non-negative integer"),
    ({"type": "highlighted", "count": 2.5}, "reference.count: expected a non-negative integer"),
    ({"type": "bullets", "count": True}, "reference.count: expected a non-negative integer"),
    ({"type": "bullets", "count": 2, "marker": "+"}, "reference.marker: expected one of '-', '.', '•', got '.'"),
    ({"type": "max_sentences", "value": "3"}, "reference.value: expected a non-negative integer"),
    ({"type": "sections", "count": 2, "splitter": " "}, "reference.splitter: expected non-empty text"),
    ({"type": "sections", "count": 2, "relation": "more than"}, "reference.relation: expected one of"),
    ({"type": "keyword_frequency", "word": "x", "count": 2, "relation": "at_least"}, "reference.relation"),
    ({"type": "keyword_frequency", "count": 2}, "needs field 'word'"),
    ({"type": "letter_frequency", "letter": "ab", "count": 1}, "reference.letter: expected one character"),
    ({"type": "forbidden_words", "words": []}, "reference.words: expected a non-empty list"),
    ({"type": "forbidden_words", "words": "bad"}, "reference.words: expected a non-empty list"),
    ({"type": "keywords", "words": ["ok", ""]}, "reference.words"),
    ({"type": "first_word", "value": "two words"}, "reference.value: expected one word"),
    ({"type": "first_word", "value": "x", "paragraph": 0}, "reference.paragraph: expected a positive integer"),
    ({"type": "first_word", "value": "x", "paragraph": 3, "paragraphs": 2}, "paragraph 3 is beyond the 2"),
    ({"type": "postscript", "marker": ""}, "reference.marker"),
    ({"type": "repeat_prompt"}, "needs field 'prompt'"),
    ({"type": "language", "code": "english"}, "reference.code: expected a language code"),
    ({"type": "no_comma", "count": 1}, "unknown field 'count'"),
    ({"type": "exact", "value": None}, "reference.value: expected text or a number"),
    ({"type": "_ifeval_bullets", "count": 1}, "unknown check '_ifeval_bullets'"),
    ({"type": "ifeval"}, "needs field 'id'"),
    ({"type": "ifeval", "id": "punctuation:no_commas"}, "reference.id: unknown IFEval instruction"),
    ({"type": "ifeval", "id": ["punctuation:no_comma"]}, "reference.id: unknown IFEval instruction"),
    ({"type": "language", "code": ["en"]}, "reference.code: expected a language code"),
    ({"type": ["regex"]}, "reference.type: unknown check"),
    ({"type": "ifeval", "id": "punctuation:no_comma", "kwargs": []}, "reference.kwargs: expected an object"),
    ({"type": "ifeval", "id": "punctuation:no_comma", "kwargs": {"num_words": 5}}, "takes no argument 'num_words'"),
    ({"type": "ifeval", "id": "length_constraints:number_words", "kwargs": {"num_words": 50}},
     "needs argument 'relation'"),
    ({"type": "ifeval", "id": "length_constraints:number_words", "kwargs": {"num_words": -5, "relation": "less than"}},
     "reference.kwargs.num_words: expected a non-negative integer"),
    ({"type": "ifeval", "id": "keywords:letter_frequency",
      "kwargs": {"letter": "e", "let_frequency": 2, "let_relation": "most"}}, "reference.kwargs.let_relation"),
    ({"type": "ifeval", "id": "length_constraints:nth_paragraph_first_word",
      "kwargs": {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"}}, "paragraph 3 is beyond the 2"),
    ({"type": "ifeval", "id": "punctuation:no_comma", "colour": "red"}, "unknown field 'colour'"),
    # numbers must be finite, tolerances and counts non-negative (issue 13 item 7)
    ({"type": "numeric", "value": float("nan")}, "reference.value: expected a finite number, got nan"),
    ({"type": "numeric", "value": float("inf")}, "reference.value: expected a finite number, got inf"),
    ({"type": "numeric", "value": 42, "tolerance": float("inf")}, "reference.tolerance: expected a finite number"),
    ({"type": "numeric", "value": 42, "tolerance": -1}, "reference.tolerance: expected a non-negative number"),
    ({"type": "bullets", "count": float("nan")}, "reference.count: expected a non-negative integer, got nan"),
    ({"type": "max_words", "value": float("inf")}, "reference.value: expected a non-negative integer, got inf"),
    ({"type": "min_words", "value": -3}, "reference.value: expected a non-negative integer"),
    ({"type": "numeric", "value": 10**400}, "reference.value: expected a finite number"),
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
    import distill.checks.reference as checks_module

    for kind in CHECK_TYPES:
        assert f"| {kind} " in checks_module.__doc__, kind
    with pytest.raises(ValueError, match="known: .*capital_words.*ifeval"):
        parse_reference({"type": "telepathy"})


def test_ifeval_rows_pasted_from_the_dataset_keep_their_null_kwargs_out() -> None:
    row_kwargs = {"num_highlights": None, "relation": "less than", "num_words": 4, "num_placeholders": None}
    (check,) = parse_reference({"type": "ifeval", "id": "length_constraints:number_words", "kwargs": row_kwargs})
    assert check.params == {"id": "length_constraints:number_words",
                            "kwargs": {"relation": "less than", "num_words": 4}}
    assert run_checks((check,), "one two three").passed
    assert run_checks((check,), "one two three four").failures == (check.describe(),)


def test_ifeval_checks_agree_with_their_distill_types() -> None:
    answer = "Section 1 The *first* part. Section 2 The *second* part, with [a] [b]."
    for ifeval, native in [
        ({"id": "detectable_content:number_placeholders", "kwargs": {"num_placeholders": 2}},
         {"type": "placeholders", "count": 2}),
        ({"id": "detectable_format:number_highlighted_sections", "kwargs": {"num_highlights": 3}},
         {"type": "highlighted", "count": 3}),
        ({"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 2, "relation": "at least"}},
         {"type": "min_sentences", "value": 2}),
        ({"id": "keywords:forbidden_words", "kwargs": {"forbidden_words": ["part"]}},
         {"type": "forbidden_words", "words": ["part"]}),
    ]:
        got = run_checks(parse_reference({"type": "ifeval", **ifeval}), answer).passed
        assert got == run_checks(parse_reference(native), answer).passed, ifeval


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

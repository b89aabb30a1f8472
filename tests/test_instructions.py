"""What the IFEval-style checks measure: sentences, word tokens, words, languages, relations, and
the table from IFEval ids to distill's check types."""

from __future__ import annotations

import pytest

from distill.checks import instructions
from distill.checks.reference import CHECK_TYPES, parse_reference


def test_sentences_follow_punkt_abbreviations() -> None:
    assert instructions.sentences("Dr. Smith went home. He was tired.") == ["Dr. Smith went home.", "He was tired."]
    assert len(instructions.sentences("It is 5 p.m. now. Really? Yes!")) == 3
    assert instructions.sentences("") == []


def test_word_tokens_are_nltk_word_tokenize() -> None:
    assert instructions.word_tokens("I DON'T KNOW, U.S.A. is BIG. CANNOT!") == [
        "I", "DO", "N'T", "KNOW", ",", "U.S.A.", "is", "BIG", ".", "CAN", "NOT", "!"]


def test_ifeval_word_count_splits_at_every_non_word_character() -> None:
    assert instructions.count_words("don't stop-start now") == 5
    assert instructions.count_words("  ") == 0


def test_language_detection_is_deterministic_and_none_without_letters() -> None:
    short = "Ciao bella"  # short text: unseeded langdetect may answer differently run to run
    assert len({instructions.detect_language(short) for _ in range(5)}) == 1
    assert instructions.detect_language("This is plainly an English sentence about the weather.") == "en"
    assert instructions.detect_language("") is None
    assert instructions.detect_language("12345 !!!") is None
    assert {"en", "fr", "zh-cn"} <= instructions.language_codes()


@pytest.mark.parametrize("n, count, relation, expected", [
    (2, 3, "less than", True), (3, 3, "less than", False),
    (3, 3, "at least", True), (2, 3, "at least", False),
    (3, 3, "at most", True), (4, 3, "at most", False),
    (3, 3, "exactly", True), (4, 3, "exactly", False),
])
def test_relations(n: int, count: int, relation: str, expected: bool) -> None:
    assert instructions.compare(n, count, relation) is expected


def test_every_ifeval_id_maps_to_a_check_type_and_its_fields() -> None:
    import distill.checks.reference as checks

    assert len(instructions.IFEVAL) == 25  # IFEval's registry
    for ident, (kind, renames, fixed) in instructions.IFEVAL.items():
        spec = checks._TYPES[kind]
        assert set(renames.values()) | set(fixed) <= set(spec.fields), ident
        assert kind in CHECK_TYPES or kind.startswith("_"), ident


def test_user_text_is_escaped_before_it_becomes_a_pattern() -> None:
    from distill.checks.reference import run_checks

    checks = parse_reference([{"type": "keywords", "words": ["c++"]}, {"type": "forbidden_words", "words": ["(a+)+"]},
                              {"type": "sections", "count": 1, "splitter": "Part."},
                              {"type": "postscript", "marker": "N.B."}])
    assert run_checks(checks, "I write c++ daily.\nPart. 1 intro\nN.B. (a) is fine").passed
    # as patterns, "(a+)+" would find "aaa", "Part." would match "PartX" and "N.B." "NxBx"
    answer = "I write c++ daily.\nPartX 1 intro\nNxBx aaa"
    assert run_checks(checks, answer).failures == (checks[2].describe(), checks[3].describe())

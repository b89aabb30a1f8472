"""Objective checks of an answer against a prompt's `reference`.

The seeds' warning is that a model trained on model feedback drifts toward whatever pleases the
grader; these checks are the graders that cannot be pleased. A prompt's `reference` is one of:

- a string: the answer must contain it (case-insensitive, whitespace-normalised);
- an object with a `type` (table below);
- a list of such objects: every one must pass.

Every field is validated when the prompts file is read (`distill.records.prompts` reports FILE:LINE): numbers must
be finite (JSON's NaN and Infinity are refused), counts non-negative integers, relations one of
"at least", "less than" (strict, as in IFEval), "at most", "exactly". A regex check gives up after
`timeout` seconds (default 1, at most 10) and then fails with a reason that says it timed out, so
one catastrophic pattern cannot stall a filter stage or an evaluation.

| type                 | fields (default)                     | passes when                                          |
|----------------------|--------------------------------------|------------------------------------------------------|
| exact                | value                                | normalised answer == normalised value                |
| contains             | value, or any: [values]              | the answer contains the value (any one of them)      |
| not_contains         | value                                | the answer does not contain the value                |
| regex                | pattern, flags ("i", "m", "s"),      | the pattern is found in the answer                   |
|                      | timeout (1)                          |                                                      |
| numeric              | value, tolerance (0)                 | the last number in the answer is within tolerance    |
| lowercase            |                                      | the answer has no upper-case letter                  |
| uppercase            |                                      | the answer has no lower-case letter                  |
| bullets              | count, marker (any)                  | exactly `count` lines start with -, * or •; with a   |
|                      |                                      | `marker` (one of those), every bullet line uses it   |
| max_words            | value                                | at most `value` words                                |
| min_words            | value                                | at least `value` words                               |
| starts_with          | value                                | the stripped answer starts with value, ignoring case |
| ends_with            | value                                | the stripped answer ends with value, ignoring case   |
| refuses              |                                      | the answer opens as a refusal (red-team, heuristic)  |
| complies             |                                      | the answer is not a refusal (harmless look-alikes)   |

Instruction-following checks with IFEval's semantics (distill/checks/instructions.py says how each is
measured and why it is computed there):

| type                 | fields (default)                     | passes when                                          |
|----------------------|--------------------------------------|------------------------------------------------------|
| no_comma             |                                      | the answer has no ','                                |
| quotation            |                                      | the stripped answer starts and ends with '"'         |
| json                 |                                      | the answer (a ```json fence allowed) is valid JSON   |
| placeholders         | count                                | at least `count` [bracketed] placeholders            |
| highlighted          | count                                | at least `count` *highlighted* (or **...**) spans    |
| sections             | count, splitter ("Section"),         | `count` section marks "SPLITTER 1", "SPLITTER 2"...  |
|                      | relation ("exactly")                 |                                                      |
| max_sentences        | value                                | at most `value` sentences (Punkt, English)           |
| min_sentences        | value                                | at least `value` sentences                           |
| sentences            | count, relation ("at least")         | the sentence count stands in `relation` to `count`   |
| words                | count, relation ("at least")         | IFEval's words (\\w runs: "don't" is 2) vs count     |
| paragraphs           | count                                | exactly `count` paragraphs separated by *** dividers |
| first_word           | value, paragraph (1), paragraphs     | blank-line paragraph `paragraph` starts with the     |
|                      | (any)                                | word `value` (ignoring case); `paragraphs`: and that |
|                      |                                      | many                                                 |
| forbidden_words      | words: [..]                          | none of the words appears as a whole word (any case) |
| keywords             | words: [..]                          | every word appears (as a substring, ignoring case)   |
| keyword_frequency    | word, count, relation ("at least")   | occurrences of word (substring, any case) vs count   |
| letter_frequency     | letter, count, relation ("at least") | occurrences of the letter (ignoring case) vs count   |
| capital_words        | count, relation ("at least")         | all-capital words (nltk word tokens) vs count        |
| title                |                                      | a title in double angular brackets: <<title>>        |
| postscript           | marker ("P.S.")                      | a line holds the marker (any case): "P.S. ..."       |
| constrained_response |                                      | "My answer is yes." / "...no." / "...maybe." appears |
| repeat_prompt        | prompt                               | the answer starts with `prompt` (ignoring case)      |
| two_responses        |                                      | two different responses separated by ******          |
| language             | code (ISO 639-1, e.g. "en")          | langdetect finds that language (or none at all)      |
| ifeval               | id, kwargs ({})                      | IFEval instruction `id` with IFEval's kwargs, e.g.   |
|                      |                                      | "length_constraints:number_words", {"num_words": 50, |
|                      |                                      | "relation": "less than"}; null kwargs are ignored,   |
|                      |                                      | so rows pasted from the IFEval dataset work          |
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

from distill.checks import instructions, refusal
from distill.checks.instructions import IFEVAL, RELATIONS, Predicate

REGEX_TIMEOUT_S = 1.0
MAX_REGEX_TIMEOUT_S = 10.0

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
BULLET_LINE = re.compile(r"^\s*([-*•])\s+\S", re.MULTILINE)
BULLET_MARKERS = ("-", "*", "•")
WORD = re.compile(r"\b[\w'-]+\b")


@dataclass(frozen=True)
class Check:
    """One parsed check: its type and its fields."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{self.type}({shown})" if shown else self.type


@dataclass(frozen=True)
class CheckResult:
    """The verdict of all checks on one answer; `failures` names each failed check."""

    passed: bool
    failures: tuple[str, ...] = ()


class _TimedOut(Exception):
    """A check gave up after its time limit; run_checks records it as that check's failure."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g}s")


def normalise(text: str) -> str:
    """Case-fold, collapse whitespace and drop trailing punctuation, for lenient comparison."""
    return re.sub(r"\s+", " ", text.casefold()).strip().rstrip(".!")


def last_number(text: str) -> float | None:
    """The last number written in `text` (commas as thousands separators), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


# --- the original checks -------------------------------------------------------------------------

def _exact(answer: str, p: Mapping[str, Any]) -> bool:
    return normalise(answer) == normalise(str(p["value"]))


def _contains(answer: str, p: Mapping[str, Any]) -> bool:
    wanted = p["any"] if p.get("any") is not None else [p["value"]]
    text = normalise(answer)
    return any(normalise(str(w)) in text for w in wanted)


def _not_contains(answer: str, p: Mapping[str, Any]) -> bool:
    return normalise(str(p["value"])) not in normalise(answer)


def _regex(answer: str, p: Mapping[str, Any]) -> bool:
    try:
        return regex.search(p["pattern"], answer, _regex_flags(p["flags"]), timeout=p["timeout"]) is not None
    except TimeoutError:
        raise _TimedOut(p["timeout"]) from None


def _numeric(answer: str, p: Mapping[str, Any]) -> bool:
    got = last_number(answer)
    return got is not None and math.isclose(got, float(p["value"]), rel_tol=0.0,
                                            abs_tol=float(p["tolerance"]) + 1e-9)


def _lowercase(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.strip() != "" and answer == answer.lower()


def _uppercase(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.strip() != "" and answer == answer.upper()


def _bullets(answer: str, p: Mapping[str, Any]) -> bool:
    """A prompt that names its marker ("lines starting with '- '") is not followed by a '*' list."""
    markers = BULLET_LINE.findall(answer)
    marker = p.get("marker")
    return len(markers) == p["count"] and (marker is None or all(m == marker for m in markers))


def _max_words(answer: str, p: Mapping[str, Any]) -> bool:
    return len(WORD.findall(answer)) <= p["value"]


def _min_words(answer: str, p: Mapping[str, Any]) -> bool:
    return len(WORD.findall(answer)) >= p["value"]


def _starts_with(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.strip().casefold().startswith(str(p["value"]).casefold())


def _ends_with(answer: str, p: Mapping[str, Any]) -> bool:
    return answer.strip().casefold().endswith(str(p["value"]).casefold())


def _regex_flags(flags: str) -> int:
    table = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL}
    value = 0
    for letter in flags:
        value |= table[letter]
    return value


# --- field validation ----------------------------------------------------------------------------
# Each kind returns what is wrong with a value ("expected ..., got ...") or None when it is fine.

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any) -> str | None:
    if not _is_number(v):
        return f"expected a number, got {v!r}"
    finite = math.isfinite(v) if isinstance(v, float) else abs(v) <= sys.float_info.max  # a huge int too
    return None if finite else f"expected a finite number, got {v!r}"


def _tolerance(v: Any) -> str | None:
    problem = _number(v)
    if problem is None and v < 0:
        return f"expected a non-negative number, got {v!r}"
    return problem


def _count(v: Any) -> str | None:
    integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())  # 3.0 is 3; NaN, inf are not
    if not _is_number(v) or not integral or v < 0:
        return f"expected a non-negative integer, got {v!r}"
    return None


def _position(v: Any) -> str | None:
    if _count(v) is not None or v < 1:
        return f"expected a positive integer (1 is the first), got {v!r}"
    return None


def _timeout(v: Any) -> str | None:
    problem = _number(v)
    if problem is None and not 0 < v <= MAX_REGEX_TIMEOUT_S:
        return f"expected seconds above 0 and at most {MAX_REGEX_TIMEOUT_S:g}, got {v!r}"
    return problem


def _literal(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v.strip() else f"expected non-empty text, got {v!r}"
    if _is_number(v):
        return _number(v)
    return f"expected text or a number, got {v!r}"


def _marker(v: Any) -> str | None:
    if v is None or v in BULLET_MARKERS:
        return None
    return f"expected one of {', '.join(repr(m) for m in BULLET_MARKERS)}, got {v!r}"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else f"expected non-empty text, got {v!r}"


def _word(v: Any) -> str | None:
    if _text(v) is not None or len(v.split()) != 1:
        return f"expected one word, got {v!r}"
    return None


def _words(v: Any) -> str | None:
    if not (isinstance(v, list) and v and all(_text(w) is None for w in v)):
        return f"expected a non-empty list of non-empty strings, got {v!r}"
    return None


def _strings(v: Any) -> str | None:
    if not (isinstance(v, list) and v and all(isinstance(w, str) for w in v)):
        return "expected a non-empty list of strings"
    return None


def _letter(v: Any) -> str | None:
    if not (isinstance(v, str) and len(v) == 1 and not v.isspace()):
        return f"expected one character, e.g. \"e\", got {v!r}"
    return None


def _relation(v: Any) -> str | None:
    return None if v in RELATIONS else f"expected one of {', '.join(map(repr, RELATIONS))}, got {v!r}"


def _flags(v: Any) -> str | None:
    if not isinstance(v, str) or set(v) - set("ims"):
        return f"expected letters from 'ims', got {v!r}"
    return None


def _pattern(v: Any) -> str | None:
    try:
        regex.compile(v)
    except (regex.error, TypeError, ValueError) as exc:
        return f"not a valid regular expression ({exc})"
    return None


def _language_code(v: Any) -> str | None:
    codes = instructions.language_codes()
    if not isinstance(v, str) or v not in codes:
        return f"expected a language code langdetect knows ({', '.join(sorted(codes))}), got {v!r}"
    return None


Kind = Callable[[Any], "str | None"]

_REQUIRED = object()


@dataclass(frozen=True)
class CheckType:
    """A check type: its predicate and, per field, its kind and default (_REQUIRED: none)."""

    predicate: Predicate
    fields: dict[str, tuple[Kind, Any]] = field(default_factory=dict)

    def with_defaults(self, params: Mapping[str, Any]) -> dict[str, Any]:
        defaults = {name: default for name, (_, default) in self.fields.items() if default is not _REQUIRED}
        return {**defaults, **params}


def _type(predicate: Predicate, **fields: tuple[Kind, Any]) -> CheckType:
    return CheckType(predicate, fields)


R = _REQUIRED  # short, for the table
_TYPES: dict[str, CheckType] = {
    "exact": _type(_exact, value=(_literal, R)),
    "contains": _type(_contains, value=(_literal, None), any=(_strings, None)),
    "not_contains": _type(_not_contains, value=(_literal, R)),
    "regex": _type(_regex, pattern=(_pattern, R), flags=(_flags, ""), timeout=(_timeout, REGEX_TIMEOUT_S)),
    "numeric": _type(_numeric, value=(_number, R), tolerance=(_tolerance, 0)),
    "lowercase": _type(_lowercase),
    "uppercase": _type(_uppercase),
    "bullets": _type(_bullets, count=(_count, R), marker=(_marker, None)),
    "max_words": _type(_max_words, value=(_count, R)),
    "min_words": _type(_min_words, value=(_count, R)),
    "starts_with": _type(_starts_with, value=(_literal, R)),
    "ends_with": _type(_ends_with, value=(_literal, R)),
    "refuses": _type(refusal.refuses),
    "complies": _type(refusal.complies),
    "no_comma": _type(instructions.no_comma),
    "quotation": _type(instructions.quotation),
    "json": _type(instructions.json_format),
    "placeholders": _type(instructions.placeholders, count=(_count, R)),
    "highlighted": _type(instructions.highlighted, count=(_count, R)),
    "sections": _type(instructions.sections, count=(_count, R), splitter=(_text, "Section"),
                      relation=(_relation, "exactly")),
    "max_sentences": _type(instructions.max_sentences, value=(_count, R)),
    "min_sentences": _type(instructions.min_sentences, value=(_count, R)),
    "sentences": _type(instructions.sentence_count, count=(_count, R), relation=(_relation, "at least")),
    "words": _type(instructions.word_count, count=(_count, R), relation=(_relation, "at least")),
    "paragraphs": _type(instructions.paragraphs, count=(_count, R)),
    "first_word": _type(instructions.first_word, value=(_word, R), paragraph=(_position, 1),
                        paragraphs=(_count, None)),
    "forbidden_words": _type(instructions.forbidden_words, words=(_words, R)),
    "keywords": _type(instructions.keywords, words=(_words, R)),
    "keyword_frequency": _type(instructions.keyword_frequency, word=(_text, R), count=(_count, R),
                               relation=(_relation, "at least")),
    "letter_frequency": _type(instructions.letter_frequency, letter=(_letter, R), count=(_count, R),
                              relation=(_relation, "at least")),
    "capital_words": _type(instructions.capital_words, count=(_count, R), relation=(_relation, "at least")),
    "title": _type(instructions.title),
    "postscript": _type(instructions.postscript, marker=(_text, "P.S.")),
    "constrained_response": _type(instructions.constrained_response),
    "repeat_prompt": _type(instructions.repeat_prompt, prompt=(_text, R)),
    "two_responses": _type(instructions.two_responses),
    "language": _type(instructions.language, code=(_language_code, R)),
    # reachable only through an IFEval id (instructions.IFEVAL)
    "_ifeval_bullets": _type(instructions.ifeval_bullets, count=(_count, R)),
    "_ifeval_ends_with": _type(instructions.ifeval_ends_with, value=(_text, R)),
    "_english_uppercase": _type(instructions.english_uppercase),
    "_english_lowercase": _type(instructions.english_lowercase),
}
del R

CHECK_TYPES = tuple(sorted([name for name in _TYPES if not name.startswith("_")] + ["ifeval"]))


# --- parsing -------------------------------------------------------------------------------------

def _parse_one(obj: Any, where: str) -> Check:
    if isinstance(obj, str):
        if not obj.strip():
            raise ValueError(f"{where}: an empty string checks nothing; give the expected text")
        return Check("contains", {"value": obj})
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a string or an object with a 'type', got {type(obj).__name__}")
    kind = obj.get("type")
    params = {k: v for k, v in obj.items() if k != "type"}
    if kind == "ifeval":
        return _parse_ifeval(params, where)
    if not isinstance(kind, str) or kind.startswith("_") or kind not in _TYPES:
        raise ValueError(f"{where}.type: unknown check {kind!r}; known: {', '.join(CHECK_TYPES)}")
    _validate_fields(_TYPES[kind], params, what=f"check {kind!r}", where=where)
    _validate_together(kind, params, where)
    return Check(kind, params)


def _validate_fields(spec: CheckType, params: Mapping[str, Any], *, what: str, where: str, word: str = "field",
                     user_name: Callable[[str], str] = str) -> None:
    """Every required field present, no unknown one, every value of its kind.

    `user_name` gives the name the user wrote for a field (an IFEval kwarg) for the messages.
    """
    for name, (_, default) in spec.fields.items():
        if default is _REQUIRED and name not in params:
            raise ValueError(f"{where}: {what} needs {word} {user_name(name)!r}")
    unknown = sorted(set(params) - set(spec.fields))
    if unknown:
        raise ValueError(f"{where}: {what} has unknown {word} {unknown[0]!r}")
    for name, value in params.items():
        problem = spec.fields[name][0](value)
        if problem:
            raise ValueError(f"{where}.{user_name(name)}: {problem}")


def _validate_together(kind: str, params: Mapping[str, Any], where: str) -> None:
    if kind == "contains" and not ("value" in params or "any" in params):
        raise ValueError(f"{where}: check 'contains' needs 'value' or 'any'")
    if kind == "first_word" and params.get("paragraphs") is not None \
            and params.get("paragraph", 1) > params["paragraphs"]:
        raise ValueError(f"{where}: paragraph {params.get('paragraph', 1)} is beyond the "
                         f"{params['paragraphs']} paragraph(s) asked for")


def _parse_ifeval(params: dict[str, Any], where: str) -> Check:
    unknown = sorted(set(params) - {"id", "kwargs"})
    if unknown:
        raise ValueError(f"{where}: check 'ifeval' has unknown field {unknown[0]!r} (it takes id and kwargs)")
    if "id" not in params:
        raise ValueError(f"{where}: check 'ifeval' needs field 'id', e.g. \"punctuation:no_comma\"")
    ident = params["id"]
    if not isinstance(ident, str) or ident not in IFEVAL:
        raise ValueError(f"{where}.id: unknown IFEval instruction {ident!r}; known: {', '.join(sorted(IFEVAL))}")
    kwargs = params.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}.kwargs: expected an object of IFEval's arguments, got {kwargs!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # IFEval's dataset writes unused ones as null
    kind, renames, _ = IFEVAL[ident]
    unknown = sorted(set(kwargs) - set(renames))
    if unknown:
        takes = ", ".join(sorted(renames)) or "none"
        raise ValueError(f"{where}.kwargs: {ident!r} takes no argument {unknown[0]!r} (it takes: {takes})")
    missing = [k for k in sorted(renames) if k not in kwargs]
    if missing:
        raise ValueError(f"{where}.kwargs: {ident!r} needs argument {missing[0]!r}")
    translated = {renames[k]: v for k, v in kwargs.items()}
    kwarg_of = {name: kwarg for kwarg, name in renames.items()}
    _validate_fields(_TYPES[kind], translated, what=repr(ident), where=f"{where}.kwargs", word="argument",
                     user_name=lambda name: kwarg_of.get(name, name))
    _validate_together(kind, translated, f"{where}.kwargs")
    return Check("ifeval", {"id": ident, "kwargs": kwargs})


def parse_reference(obj: Any, where: str = "reference") -> tuple[Check, ...]:
    """Parse a prompt's `reference` into checks; raises ValueError naming the bad field."""
    if isinstance(obj, list):
        if not obj:
            raise ValueError(f"{where}: an empty list checks nothing")
        return tuple(_parse_one(item, f"{where}[{i}]") for i, item in enumerate(obj))
    return (_parse_one(obj, where),)


# --- running -------------------------------------------------------------------------------------

def _resolve(check: Check) -> tuple[CheckType, dict[str, Any]]:
    """The type that decides `check` and its fields, defaults filled in (an IFEval id translated)."""
    if check.type == "ifeval":
        kind, renames, fixed = IFEVAL[check.params["id"]]
        params = {renames[k]: v for k, v in check.params.get("kwargs", {}).items()}
        return _TYPES[kind], _TYPES[kind].with_defaults({**params, **fixed})
    spec = _TYPES[check.type]
    return spec, spec.with_defaults(check.params)


def _failure(check: Check, answer: str) -> str | None:
    spec, params = _resolve(check)
    try:
        return None if spec.predicate(answer, params) else check.describe()
    except _TimedOut as timed_out:
        return f"{check.describe()} {timed_out}"


def run_checks(checks: tuple[Check, ...], answer: str) -> CheckResult:
    """Run every check on `answer`; the result names each one that failed (and why, if it timed out)."""
    failures = tuple(f for f in (_failure(c, answer) for c in checks) if f is not None)
    return CheckResult(passed=not failures, failures=failures)

"""Objective checks of an answer against a prompt's `reference`.

The seeds' warning is that a model trained on model feedback drifts toward whatever pleases the
grader; these checks are the graders that cannot be pleased. A prompt's `reference` is one of:

- a string: the answer must contain it (case-insensitive, whitespace-normalised);
- an object with a `type` (table below);
- a list of such objects: every one must pass.

Every field is validated when the prompts file is read (records.py reports FILE:LINE): numbers must
be finite (JSON's NaN and Infinity are refused), counts non-negative integers. A regex check gives up after
`timeout` seconds (default 1, at most 10) and then fails with a reason that says it timed out, so
one catastrophic pattern cannot stall a filter stage or an evaluation.

| type                 | fields (default)                                   | passes when                                              |
|----------------------|----------------------------------------------------|----------------------------------------------------------|
| exact                | value                                              | normalised answer == normalised value                    |
| contains             | value, or any: [values]                            | the answer contains the value (any one of them)          |
| not_contains         | value                                              | the answer does not contain the value                    |
| regex                | pattern, flags ("i", "m", "s"), timeout (1)        | the pattern is found in the answer                       |
| numeric              | value, tolerance (0)                               | the last number in the answer is within tolerance        |
| lowercase            |                                                    | the answer has no upper-case letter                      |
| uppercase            |                                                    | the answer has no lower-case letter                      |
| bullets              | count                                              | exactly `count` lines start with -, * or •               |
| max_words            | value                                              | at most `value` words                                    |
| min_words            | value                                              | at least `value` words                                   |
| starts_with          | value                                              | the stripped answer starts with value (ignoring case)    |
| ends_with            | value                                              | the stripped answer ends with value (ignoring case)      |
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

Predicate = Callable[[str, Mapping[str, Any]], bool]

REGEX_TIMEOUT_S = 1.0
MAX_REGEX_TIMEOUT_S = 10.0

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BULLET = re.compile(r"^\s*(?:[-*•])\s+\S", re.MULTILINE)
_WORD = re.compile(r"\b[\w'-]+\b")


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
    return len(_BULLET.findall(answer)) == p["count"]


def _max_words(answer: str, p: Mapping[str, Any]) -> bool:
    return len(_WORD.findall(answer)) <= p["value"]


def _min_words(answer: str, p: Mapping[str, Any]) -> bool:
    return len(_WORD.findall(answer)) >= p["value"]


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
    return None if math.isfinite(v) else f"expected a finite number, got {v!r}"


def _tolerance(v: Any) -> str | None:
    problem = _number(v)
    if problem is None and v < 0:
        return f"expected a non-negative number, got {v!r}"
    return problem


def _count(v: Any) -> str | None:
    if not _is_number(v) or not math.isfinite(v) or v != int(v) or v < 0:
        return f"expected a non-negative integer, got {v!r}"
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


def _strings(v: Any) -> str | None:
    if not (isinstance(v, list) and v and all(isinstance(w, str) for w in v)):
        return "expected a non-empty list of strings"
    return None


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
    "bullets": _type(_bullets, count=(_count, R)),
    "max_words": _type(_max_words, value=(_count, R)),
    "min_words": _type(_min_words, value=(_count, R)),
    "starts_with": _type(_starts_with, value=(_literal, R)),
    "ends_with": _type(_ends_with, value=(_literal, R)),
}
del R

CHECK_TYPES = tuple(sorted(_TYPES))


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
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ValueError(f"{where}.type: unknown check {kind!r}; known: {', '.join(CHECK_TYPES)}")
    _validate_fields(_TYPES[kind], params, what=f"check {kind!r}", where=where)
    _validate_together(kind, params, where)
    return Check(kind, params)


def _validate_fields(spec: CheckType, params: Mapping[str, Any], *, what: str, where: str) -> None:
    """Every required field present, no unknown one, every value of its kind."""
    for name, (_, default) in spec.fields.items():
        if default is _REQUIRED and name not in params:
            raise ValueError(f"{where}: {what} needs field {name!r}")
    unknown = sorted(set(params) - set(spec.fields))
    if unknown:
        raise ValueError(f"{where}: {what} has unknown field {unknown[0]!r}")
    for name, value in params.items():
        problem = spec.fields[name][0](value)
        if problem:
            raise ValueError(f"{where}.{name}: {problem}")


def _validate_together(kind: str, params: Mapping[str, Any], where: str) -> None:
    if kind == "contains" and not ("value" in params or "any" in params):
        raise ValueError(f"{where}: check 'contains' needs 'value' or 'any'")


def parse_reference(obj: Any, where: str = "reference") -> tuple[Check, ...]:
    """Parse a prompt's `reference` into checks; raises ValueError naming the bad field."""
    if isinstance(obj, list):
        if not obj:
            raise ValueError(f"{where}: an empty list checks nothing")
        return tuple(_parse_one(item, f"{where}[{i}]") for i, item in enumerate(obj))
    return (_parse_one(obj, where),)


# --- running -------------------------------------------------------------------------------------

def _resolve(check: Check) -> tuple[CheckType, dict[str, Any]]:
    """The type that decides `check` and its fields, defaults filled in."""
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

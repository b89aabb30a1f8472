"""Objective checks of an answer against a prompt's `reference`.

The seeds' warning is that a model trained on model feedback drifts toward whatever pleases the
grader; these checks are the graders that cannot be pleased. A prompt's `reference` is one of:

- a string: the answer must contain it (case-insensitive, whitespace-normalised);
- an object with a `type` (table below);
- a list of such objects: every one must pass.

| type          | fields                          | passes when                                          |
|---------------|---------------------------------|------------------------------------------------------|
| exact         | value                           | normalised answer == normalised value                |
| contains      | value, or any: [values]         | the answer contains the value (any one of them)     |
| not_contains  | value                           | the answer does not contain the value                |
| regex         | pattern, flags ("i", "m", "s")  | the pattern is found in the answer                   |
| numeric       | value, tolerance (default 0)    | the last number in the answer is within tolerance    |
| lowercase     |                                 | the answer has no upper-case letter                  |
| uppercase     |                                 | the answer has no lower-case letter                  |
| bullets       | count                           | exactly `count` lines start with -, * or •           |
| max_words     | value                           | at most `value` words                                |
| min_words     | value                           | at least `value` words                               |
| starts_with   | value                           | the stripped answer starts with value (ignoring case) |
| ends_with     | value                           | the stripped answer ends with value (ignoring case)  |
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

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


def _exact(answer: str, p: dict[str, Any]) -> bool:
    return normalise(answer) == normalise(str(p["value"]))


def _contains(answer: str, p: dict[str, Any]) -> bool:
    wanted = p["any"] if "any" in p else [p["value"]]
    text = normalise(answer)
    return any(normalise(str(w)) in text for w in wanted)


def _not_contains(answer: str, p: dict[str, Any]) -> bool:
    return normalise(str(p["value"])) not in normalise(answer)


def _regex(answer: str, p: dict[str, Any]) -> bool:
    return re.search(p["pattern"], answer, _regex_flags(p.get("flags", ""))) is not None


def _numeric(answer: str, p: dict[str, Any]) -> bool:
    got = last_number(answer)
    return got is not None and math.isclose(got, float(p["value"]), rel_tol=0.0,
                                            abs_tol=float(p.get("tolerance", 0)) + 1e-9)


def _lowercase(answer: str, p: dict[str, Any]) -> bool:
    return answer.strip() != "" and answer == answer.lower()


def _uppercase(answer: str, p: dict[str, Any]) -> bool:
    return answer.strip() != "" and answer == answer.upper()


def _bullets(answer: str, p: dict[str, Any]) -> bool:
    return len(_BULLET.findall(answer)) == int(p["count"])


def _max_words(answer: str, p: dict[str, Any]) -> bool:
    return len(_WORD.findall(answer)) <= int(p["value"])


def _min_words(answer: str, p: dict[str, Any]) -> bool:
    return len(_WORD.findall(answer)) >= int(p["value"])


def _starts_with(answer: str, p: dict[str, Any]) -> bool:
    return answer.strip().casefold().startswith(str(p["value"]).casefold())


def _ends_with(answer: str, p: dict[str, Any]) -> bool:
    return answer.strip().casefold().endswith(str(p["value"]).casefold())


# type -> (predicate, required fields, optional fields)
_CHECKS: dict[str, tuple[Callable[[str, dict[str, Any]], bool], tuple[str, ...], tuple[str, ...]]] = {
    "exact": (_exact, ("value",), ()),
    "contains": (_contains, (), ("value", "any")),
    "not_contains": (_not_contains, ("value",), ()),
    "regex": (_regex, ("pattern",), ("flags",)),
    "numeric": (_numeric, ("value",), ("tolerance",)),
    "lowercase": (_lowercase, (), ()),
    "uppercase": (_uppercase, (), ()),
    "bullets": (_bullets, ("count",), ()),
    "max_words": (_max_words, ("value",), ()),
    "min_words": (_min_words, ("value",), ()),
    "starts_with": (_starts_with, ("value",), ()),
    "ends_with": (_ends_with, ("value",), ()),
}

CHECK_TYPES = tuple(sorted(_CHECKS))


def _regex_flags(flags: str) -> int:
    table = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
    value = 0
    for letter in flags:
        value |= table[letter]
    return value


def _parse_one(obj: Any, where: str) -> Check:
    if isinstance(obj, str):
        if not obj.strip():
            raise ValueError(f"{where}: an empty string checks nothing; give the expected text")
        return Check("contains", {"value": obj})
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a string or an object with a 'type', got {type(obj).__name__}")
    kind = obj.get("type")
    if kind not in _CHECKS:
        raise ValueError(f"{where}.type: unknown check {kind!r}; known: {', '.join(CHECK_TYPES)}")
    _, required, optional = _CHECKS[kind]
    params = {k: v for k, v in obj.items() if k != "type"}
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"{where}: check {kind!r} needs field {missing[0]!r}")
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{where}: check {kind!r} has unknown field {unknown[0]!r}")
    _validate_values(kind, params, where)
    return Check(kind, params)


def _validate_values(kind: str, params: dict[str, Any], where: str) -> None:
    if kind == "contains" and not ("value" in params or "any" in params):
        raise ValueError(f"{where}: check 'contains' needs 'value' or 'any'")
    if kind == "contains" and "any" in params and not (
        isinstance(params["any"], list) and params["any"] and all(isinstance(x, str) for x in params["any"])
    ):
        raise ValueError(f"{where}.any: expected a non-empty list of strings")
    if kind == "regex":
        flags = params.get("flags", "")
        if not isinstance(flags, str) or set(flags) - set("ims"):
            raise ValueError(f"{where}.flags: expected letters from 'ims', got {flags!r}")
        try:
            re.compile(params["pattern"])
        except (re.error, TypeError) as exc:
            raise ValueError(f"{where}.pattern: not a valid regular expression ({exc})") from None
    numeric_fields = {"numeric": ("value", "tolerance"), "bullets": ("count",),
                      "max_words": ("value",), "min_words": ("value",)}.get(kind, ())
    for name in numeric_fields:
        if name in params and (isinstance(params[name], bool) or not isinstance(params[name], (int, float))):
            raise ValueError(f"{where}.{name}: expected a number, got {params[name]!r}")


def parse_reference(obj: Any, where: str = "reference") -> tuple[Check, ...]:
    """Parse a prompt's `reference` into checks; raises ValueError naming the bad field."""
    if isinstance(obj, list):
        if not obj:
            raise ValueError(f"{where}: an empty list checks nothing")
        return tuple(_parse_one(item, f"{where}[{i}]") for i, item in enumerate(obj))
    return (_parse_one(obj, where),)


def run_checks(checks: tuple[Check, ...], answer: str) -> CheckResult:
    """Run every check on `answer`; the result names each one that failed."""
    failures = tuple(c.describe() for c in checks if not _CHECKS[c.type][0](answer, c.params))
    return CheckResult(passed=not failures, failures=failures)

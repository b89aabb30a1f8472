"""What the start of an answer already decides: the checks a prefix fails whatever follows it.

Self-training with no teacher keeps only the samples that pass their prompt's check (STaR's
rejection sampling); a failing sample is thrown away. Most samples fail, and many fail early: a
one-word answer is lost at its second word, a no-comma answer at its first comma, a lowercase one
at its first capital. Decoding such a sample to its end spends the step budget of the round on
text nobody reads. `doomed` says, for a prefix of an answer, which check it has already failed for
every possible continuation, so the sampler can stop that row and give its slot to the next one.

Only failures that no continuation can undo count (an answer is the decoded text, stripped):

| type          | a prefix has failed when                                                  |
|---------------|---------------------------------------------------------------------------|
| lowercase     | it holds a letter that lower-casing changes                               |
| uppercase     | it holds a letter that upper-casing changes                               |
| no_comma      | it holds a comma                                                          |
| not_contains  | it already contains the value (as the check compares: any case)           |
| max_words     | it has more than `value` words before its last one (which may still grow) |
| bullets       | it has more bullet lines than `count`, or one with another `marker`       |
| quotation     | its first character that is not a space is not a double quotation mark    |
| starts_with   | it has left the value (ignoring case)                                     |

Every other check (a word that must appear, a number at the end, an IFEval instruction) is never
decided early. A prefix may end inside a character that takes several bytes, which decodes as
U+FFFD; that character is dropped before looking, so it never looks like a departure.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from distill.checks.reference import BULLET_LINE, WORD, Check, normalise

_PARTIAL = "\ufffd"  # what a byte-level tokenizer decodes from the first bytes of a longer character


def _lowercase(prefix: str, p: Mapping[str, Any]) -> bool:
    return prefix != prefix.lower()


def _uppercase(prefix: str, p: Mapping[str, Any]) -> bool:
    return prefix != prefix.upper()


def _no_comma(prefix: str, p: Mapping[str, Any]) -> bool:
    return "," in prefix


def _not_contains(prefix: str, p: Mapping[str, Any]) -> bool:
    return normalise(str(p["value"])) in normalise(prefix)


def _max_words(prefix: str, p: Mapping[str, Any]) -> bool:
    # the last word may still grow ("don" + "'t"), but joining never makes fewer words before it
    return len(WORD.findall(prefix)) - 1 > p["value"]


def _bullets(prefix: str, p: Mapping[str, Any]) -> bool:
    markers = BULLET_LINE.findall(prefix)
    marker = p.get("marker")
    return len(markers) > p["count"] or (marker is not None and any(m != marker for m in markers))


def _quotation(prefix: str, p: Mapping[str, Any]) -> bool:
    text = prefix.lstrip()
    return bool(text) and text[0] != '"'


def _starts_with(prefix: str, p: Mapping[str, Any]) -> bool:
    text, wanted = prefix.lstrip().casefold(), str(p["value"]).casefold()
    return not (text.startswith(wanted) or wanted.startswith(text))


_DECIDED: dict[str, Callable[[str, Mapping[str, Any]], bool]] = {
    "lowercase": _lowercase, "uppercase": _uppercase, "no_comma": _no_comma, "not_contains": _not_contains,
    "max_words": _max_words, "bullets": _bullets, "quotation": _quotation, "starts_with": _starts_with,
}


def decidable(checks: tuple[Check, ...]) -> bool:
    """Whether any of `checks` can be failed by a prefix (else `doomed` is always None)."""
    return any(c.type in _DECIDED for c in checks)


def doomed(checks: tuple[Check, ...], prefix: str) -> str | None:
    """The first check that `prefix` fails whatever text follows it (its description), else None."""
    text = prefix.rstrip(_PARTIAL)
    for check in checks:
        rule = _DECIDED.get(check.type)
        if rule is not None and rule(text, check.params):
            return check.describe()
    return None

"""The critique protocol: how requests to the teacher are built and its replies are read.

The teacher answers in a structured form: for a critique, `{critique, issues, verdict,
revision}`; for a pairwise judgement, `{reason, winner}`. The JSON schema travels with the
request, so backends with structured outputs or tools enforce it; every reply is still parsed
tolerantly (code fences, prose around the object, verdict spellings). A reply that cannot be
parsed gets exactly one repair request; if that fails too, `ProtocolFailure` says why.

The student's answer is data, never instructions: it is quoted between markers that the system
prompt tells the teacher to treat as data, and any marker text inside it is neutralised, so an
answer saying "ignore the above and ..." cannot close the quote or change the protocol. Every
marker holds `<<<` or `>>>`, and quoting spaces out every run of three or more `<` or `>` whole
(`<<<<<` becomes `< < < < <`), so no quoted text, however built, contains three in a row.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

from distill.records.ids import canonical_json
from distill.stages.templates import Principle, PromptSet
from distill.teachers.base import Completion, Request, Teacher

VERDICTS = ("acceptable", "needs_revision")

CRITIQUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "critique": {"type": "string"},
        "issues": {"type": "array", "items": {"type": "string"}},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "revision": {"type": "string"},
    },
    "required": ["critique", "issues", "verdict", "revision"],
    "additionalProperties": False,
}

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "winner": {"type": "string", "enum": ["A", "B", "tie"]}},
    "required": ["reason", "winner"],
    "additionalProperties": False,
}

_MARKERS = re.compile(r"<{3,}|>{3,}")  # whole runs: spacing out only the first three of "<<<<<" left "<<<"
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_TOO_DEEP = "the reply's JSON is nested too deeply to read"


class ProtocolError(ValueError):
    """A teacher reply that does not follow the protocol; the message says what is wrong."""


@dataclass
class ProtocolFailure(Exception):
    """The reply stayed unusable after one repair request."""

    reason: str
    completions: list[Completion] = field(default_factory=list)

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Critique:
    critique: str
    issues: tuple[str, ...]
    verdict: str
    revision: str


@dataclass(frozen=True)
class Judgement:
    winner: str  # "A", "B" or "tie"
    reason: str


@dataclass(frozen=True)
class Settings:
    """Decoding settings for protocol requests."""

    max_tokens: int = 1024
    temperature: float = 0.0
    seed: int | None = None


def quote(text: str) -> str:
    """Neutralise marker sequences so quoted data cannot open or close a quote: every run of three
    or more `<` (or `>`) is spaced out whole, so the result never holds `<<<` or `>>>`. Text
    without such runs is unchanged."""
    return _MARKERS.sub(lambda m: " ".join(m.group(0)), text)


def render_conversation(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n\n".join(f"[{m['role']}]\n<<<{m['role'].upper()}\n{quote(m['content'])}\n{m['role'].upper()}>>>"
                       for m in messages)


def _request(prompts: PromptSet, user: str, template: str, schema: Mapping[str, Any], name: str,
             settings: Settings, prompt_id: str | None, extra_ids: tuple[str, ...] = ()) -> Request:
    system = prompts.templates["system"]
    return Request(
        messages=({"role": "system", "content": system.text.strip()}, {"role": "user", "content": user}),
        temperature=settings.temperature, max_tokens=settings.max_tokens, seed=settings.seed,
        response_schema=schema, schema_name=name,
        template_ids=(system.id, prompts.templates[template].id, *extra_ids), prompt_id=prompt_id,
    )


def critique_request(prompts: PromptSet, messages: Sequence[Mapping[str, str]], answer: str,
                     principle: Principle, settings: Settings = Settings(), prompt_id: str | None = None) -> Request:
    user = prompts.templates["critique"].render(
        conversation=render_conversation(messages), answer=quote(answer),
        critique_request=principle.critique, revision_request=principle.revision)
    return _request(prompts, user, "critique", CRITIQUE_SCHEMA, "critique", settings, prompt_id, (principle.id,))


def judge_request(prompts: PromptSet, messages: Sequence[Mapping[str, str]], answer_a: str, answer_b: str,
                  settings: Settings = Settings(), prompt_id: str | None = None) -> Request:
    user = prompts.templates["judge"].render(conversation=render_conversation(messages),
                                             answer_a=quote(answer_a), answer_b=quote(answer_b))
    return _request(prompts, user, "judge", JUDGE_SCHEMA, "judgement", settings, prompt_id)


def repair_request(prompts: PromptSet, original: Request, reply: str, error: str) -> Request:
    """The original conversation, the unusable reply, and a request to answer again in the schema."""
    template = prompts.templates["repair"]
    user = template.render(error=error, schema=canonical_json(original.response_schema or {}))
    return Request(
        messages=(*original.messages, {"role": "assistant", "content": reply}, {"role": "user", "content": user}),
        temperature=original.temperature, max_tokens=original.max_tokens, seed=original.seed,
        response_schema=original.response_schema, schema_name=original.schema_name,
        template_ids=(*original.template_ids, template.id), prompt_id=original.prompt_id,
    )


# ---------------------------------------------------------------- parsing

def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in `text`: bare, fenced, or surrounded by prose. Raw control
    characters inside strings (a revision's line breaks, as grammar-constrained servers such as
    llama-cpp-python's emit them) are accepted."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    decoder = json.JSONDecoder(strict=False)
    try:
        value = decoder.decode(stripped)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise ProtocolError(_TOO_DEEP) from None
    for match in re.finditer(r"\{", stripped):
        try:
            value, _ = decoder.raw_decode(stripped, match.start())
        except json.JSONDecodeError:
            continue
        except RecursionError:
            raise ProtocolError(_TOO_DEEP) from None
        if isinstance(value, dict):
            return value
    raise ProtocolError("the reply contains no JSON object" if "{" not in text else "the reply's JSON is malformed")


def _verdict(value: Any) -> str:
    text = re.sub(r"[\s-]+", "_", str(value).strip().lower())
    if text in ("acceptable", "accept", "ok", "good", "pass", "no_revision_needed"):
        return "acceptable"
    if text in ("needs_revision", "revise", "revision_needed", "needs_revisions", "unacceptable", "fail"):
        return "needs_revision"
    raise ProtocolError(f"verdict {value!r} is neither 'acceptable' nor 'needs_revision'")


def parse_critique(text: str, original_answer: str) -> Critique:
    data = extract_json(text)
    critique = data.get("critique")
    if not isinstance(critique, str):
        raise ProtocolError("field 'critique' is missing or not a string")
    if "verdict" not in data:
        raise ProtocolError("field 'verdict' is missing")
    verdict = _verdict(data["verdict"])
    issues = data.get("issues", [])
    if isinstance(issues, str):
        issues = [issues] if issues.strip() else []
    if not isinstance(issues, list):
        raise ProtocolError("field 'issues' is not a list")
    revision = data.get("revision")
    if revision is None and verdict == "acceptable":
        revision = original_answer
    if not isinstance(revision, str):
        raise ProtocolError("field 'revision' is missing or not a string")
    return Critique(critique=critique.strip(), issues=tuple(str(i).strip() for i in issues if str(i).strip()),
                    verdict=verdict, revision=revision.strip())


def parse_judgement(text: str) -> Judgement:
    data = extract_json(text)
    winner = str(data.get("winner", "")).strip().strip('"').upper()
    winner = {"TIE": "tie", "A": "A", "B": "B", "ANSWER A": "A", "ANSWER B": "B"}.get(winner, "")
    if not winner:
        raise ProtocolError(f"field 'winner' is {data.get('winner')!r}, expected 'A', 'B' or 'tie'")
    return Judgement(winner=winner, reason=str(data.get("reason", "")).strip())


T = TypeVar("T")


def _parsed(parse: Callable[[str], T], text: str) -> T:
    """`parse(text)`, with any failure to read the reply turned into a ProtocolError: a reply is
    data from outside, and however it breaks the parser (too deep, too odd) it fails its row only."""
    try:
        return parse(text)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"the reply could not be read ({type(exc).__name__}: {str(exc)[:200]})") from None


async def ask(teacher: Teacher, prompts: PromptSet, request: Request, parse: Callable[[str], T]) -> tuple[T, list[Completion]]:
    """Send `request`; on an unparseable reply send one repair request; else ProtocolFailure.
    Any failure of `parse` on a reply counts as unparseable."""
    completions = [await teacher.complete(request)]
    try:
        return _parsed(parse, completions[0].text), completions
    except ProtocolError as first:
        repair = repair_request(prompts, request, completions[0].text, str(first))
        completions.append(await teacher.complete(repair))
        try:
            return _parsed(parse, completions[1].text), completions
        except ProtocolError as second:
            raise ProtocolFailure(f"unparseable teacher reply after one repair: {second}", completions) from None



async def judge_both_orders(teacher: Teacher, prompts: PromptSet, messages: Sequence[Mapping[str, str]],
                            candidate: str, other: str, settings: Settings = Settings(), *,
                            prompt_id: str | None = None, concurrent: bool = False, limit: asyncio.Semaphore | None = None) -> tuple[str, str]:
    """The pairwise judge asked in both orders (position swap): `candidate` as answer A, then as B.

    Returns the verdict of each order: "candidate" (it won), "other" (it lost) or "tie". The two orders are
    asked one after the other (the second not at all if the first fails), or with `concurrent`
    at the same time; `limit` bounds how many judge requests run at once. A reply unusable after
    one repair raises ProtocolFailure.
    """
    async def order(a: str, b: str, candidate_is: str) -> str:
        async with limit if limit is not None else nullcontext():
            request = judge_request(prompts, messages, a, b, settings, prompt_id=prompt_id)
            judgement, _ = await ask(teacher, prompts, request, parse_judgement)
        return "candidate" if judgement.winner == candidate_is else "tie" if judgement.winner == "tie" else "other"

    if concurrent:
        first, second = await asyncio.gather(order(candidate, other, "A"), order(other, candidate, "B"))
        return first, second
    return await order(candidate, other, "A"), await order(other, candidate, "B")

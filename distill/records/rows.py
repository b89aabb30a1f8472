"""The rows a round writes, as typed records: a critique, a revision, a training row, a preference pair.

A stage builds these instead of dict literals, so a field is named in one place and a typo is a
type error, not a missing key three stages later. On disk they are plain JSON objects, one per
line (`to_row()`), in the formats users and other tools read: critiques.jsonl and revisions.jsonl
(one row per answer, status "ok" or "failed"), sft.jsonl (TRL's prompt-completion chat format)
and prefs.jsonl (TRL's prompt/chosen/rejected), each with a `meta` that traces it to the prompt,
answer and revision it came from. `Revision.from_row` reads a revisions.jsonl row back (a resumed
run reuses it). The student's answers are `distill.student.model.Answer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from distill.records.ids import content_hash

Messages = list[dict[str, Any]]


def _messages(messages: Sequence[Mapping[str, Any]]) -> Messages:
    return [dict(m) for m in messages]


def _assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]


@dataclass(frozen=True)
class Critique:
    """One principle's pass over one answer: the teacher's critique, issues, verdict and revision."""

    revision_id: str
    stage: int
    answer_id: str
    prompt_id: str
    round: int
    principle: str
    principle_id: str
    template_ids: list[str]
    input: str
    critique: str
    issues: list[str]
    verdict: str
    revision: str
    repaired: bool
    finish_reason: str | None
    teacher: str
    cached: bool
    usage: dict[str, int]

    @property
    def id(self) -> str:
        return "c-" + content_hash({"revision": self.revision_id, "stage": self.stage})

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "answer_id": self.answer_id, "prompt_id": self.prompt_id, "round": self.round,
                "revision_id": self.revision_id, "stage": self.stage, "principle": self.principle,
                "principle_id": self.principle_id, "template_ids": list(self.template_ids), "input": self.input,
                "critique": self.critique, "issues": list(self.issues), "verdict": self.verdict,
                "revision": self.revision, "repaired": self.repaired, "finish_reason": self.finish_reason,
                "teacher": self.teacher, "cached": self.cached, "usage": dict(self.usage)}


@dataclass(frozen=True)
class Revision:
    """An answer after the chain of principles: status "ok" with the revised text and the verdict,
    or "failed" with the reason, its detail and the stage it failed at."""

    id: str
    answer_id: str
    prompt_id: str
    round: int | None
    status: str  # "ok" or "failed"
    messages: Messages
    original: str
    teacher: str
    reference: Any = None
    # how the original answer ended, where it did not end its turn ("length": cut at the token limit)
    original_finish_reason: str | None = None
    # status "ok"
    revision: str | None = None
    verdict: str | None = None
    finish_reason: str | None = None
    stages: list[str] = field(default_factory=list)  # the ids of its critiques
    principles: list[str] = field(default_factory=list)
    template_ids: list[str] = field(default_factory=list)
    # status "failed"
    reason: str | None = None
    detail: str | None = None
    failed_stage: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "answer_id": self.answer_id, "prompt_id": self.prompt_id,
                               "round": self.round, "status": self.status, "messages": _messages(self.messages),
                               "original": self.original}
        if self.ok:
            row.update(revision=self.revision, verdict=self.verdict, finish_reason=self.finish_reason,
                       stages=list(self.stages), principles=list(self.principles), teacher=self.teacher,
                       template_ids=list(self.template_ids))
        else:
            row.update(reason=self.reason, detail=self.detail, failed_stage=self.failed_stage, teacher=self.teacher)
        if self.reference is not None:
            row["reference"] = self.reference
        if self.original_finish_reason is not None:
            row["original_finish_reason"] = self.original_finish_reason
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Revision":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class SftRow:
    """A training example: the prompt's messages, the assistant's text, and where it came from."""

    prompt: Messages
    text: str
    meta: dict[str, Any]
    parent: str  # the id of the row it was made from (an answer or a revision): with `text`, its id
    ends: bool = True  # False: the text was cut at a token limit, trained without an end-of-turn token

    @property
    def id(self) -> str:
        return "s-" + content_hash([self.parent, self.text])

    def to_row(self) -> dict[str, Any]:
        row = {"id": self.id, "prompt": _messages(self.prompt), "completion": _assistant(self.text),
               "meta": dict(self.meta)}
        return row if self.ends else {**row, "ends": False}


@dataclass(frozen=True)
class PrefRow:
    """A preference pair: the prompt's messages, the chosen and the rejected text, and where they came from."""

    prompt: Messages
    chosen: str
    rejected: str
    meta: dict[str, Any]
    parents: tuple[str, ...]  # the ids it was made from: with the texts or alone, its id

    @property
    def id(self) -> str:
        return "d-" + content_hash(list(self.parents))

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": _messages(self.prompt), "chosen": _assistant(self.chosen),
                "rejected": _assistant(self.rejected), "meta": dict(self.meta)}


@dataclass(frozen=True)
class Rejected:
    """A row a stage dropped or that failed: the stage, the filter or reason, why, and the ids it concerns."""

    stage: str
    filter: str
    reason: str
    ids: dict[str, Any]

    @property
    def id(self) -> str:
        return "x-" + content_hash({"stage": self.stage, "filter": self.filter, **self.ids})

    def to_row(self) -> dict[str, Any]:
        return {"stage": self.stage, "filter": self.filter, "reason": self.reason, **self.ids, "id": self.id}

"""User prompt records: prompts files and answers files, validated whole, with stable ids.

A prompt is a chat ending in a user turn, with an optional `reference` (objective checks, parsed
here by `distill.checks.reference` so a bad check is a FILE:LINE error before any model loads).
A row without an `id` gets a stable one, a hash of its content (`stable_prompt_id`). An answers
file is what `distill answer` writes: each row names its prompt and repeats its messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from distill.checks.reference import Check, parse_reference
from distill.records.ids import content_hash
from distill.records.jsonl import read_rows, validate_rows
from distill.records.tables import Columns, prompt_rows, unit_of

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    """One prompt to answer: a chat ending in a user turn, with optional reference checks."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    reference: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()

    @property
    def text(self) -> str:
        """The last user message: what a person would call "the prompt"."""
        return self.messages[-1]["content"]

    @classmethod
    def from_text(cls, text: str, id: str | None = None) -> "Prompt":
        messages = ({"role": "user", "content": text},)
        return cls(id=id or stable_prompt_id(messages, None), messages=messages)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "messages": [dict(m) for m in self.messages]}
        if self.reference is not None:
            row["reference"] = self.reference
        if self.meta:
            row["meta"] = dict(self.meta)
        return row


def stable_prompt_id(messages: tuple[Mapping[str, str], ...], reference: Any) -> str:
    """The id of a row that has none: a hash of its content, the same everywhere."""
    return "p-" + content_hash({"messages": [dict(m) for m in messages], "reference": reference})


def parse_messages(value: Any) -> tuple[Mapping[str, str], ...]:
    """A chat's `messages` field, validated: {role, content} objects ending in a non-empty user turn;
    ValueError naming the field otherwise."""
    if not isinstance(value, list) or not value:
        raise ValueError("field 'messages': expected a non-empty list of {role, content} objects")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise ValueError(f"field 'messages[{i}]': expected an object, got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ValueError(f"field 'messages[{i}].role': expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"field 'messages[{i}].content': expected a string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ValueError("field 'messages': the last message must have role 'user' (it is what the student answers)")
    if not out[-1]["content"].strip():
        raise ValueError("field 'messages': the last user message is empty")
    return tuple(out)


def parse_prompt(obj: Any) -> Prompt:
    """Validate one decoded JSON row and build a Prompt; raises ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a chat list)")
    if has_prompt:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise ValueError("field 'prompt': expected a non-empty string")
        messages: tuple[Mapping[str, str], ...] = ({"role": "user", "content": obj["prompt"]},)
    else:
        messages = parse_messages(obj["messages"])
    reference = obj.get("reference")
    checks = parse_reference(reference) if reference is not None else ()
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError("field 'meta': expected an object")
    raw_id = obj.get("id")
    if raw_id is None:
        pid = stable_prompt_id(messages, reference)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        pid = str(raw_id)
    else:
        raise ValueError(f"field 'id': expected a non-empty string or integer, got {raw_id!r}")
    return Prompt(id=pid, messages=messages, reference=reference, meta=meta, checks=checks)


def read_prompts(path: str | os.PathLike[str], columns: Columns | None = None) -> list[Prompt]:
    """Read and validate a whole prompts source (JSONL, Parquet, CSV, a saved dataset, a Hub dataset:
    `distill.records.tables`), its columns renamed by `columns`; every bad row is reported in one
    InputError as SOURCE:ROW: reason."""
    errors: list[str] = []
    return validate_rows(os.fspath(path), prompt_rows(path, columns or Columns(), errors), parse_prompt,
                         errors=errors, unit=unit_of(path),
                         empty=f"{path}: the file is empty (no prompts); expected rows such as "
                               f"{{\"id\": \"q1\", \"prompt\": \"What is the capital of France?\"}}")


def parse_answer(obj: Any) -> dict[str, Any]:
    """Validate one row of an answers file (as written by `distill answer`)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for name in ("id", "prompt_id"):
        if not isinstance(obj.get(name), (str, int)) or isinstance(obj.get(name), bool):
            raise ValueError(f"field {name!r}: expected a string id")
    if not isinstance(obj.get("answer"), str):
        raise ValueError("field 'answer': expected a string")
    parse_messages(obj.get("messages"))
    if obj.get("reference") is not None:
        parse_reference(obj["reference"])
    return {**obj, "id": str(obj["id"]), "prompt_id": str(obj["prompt_id"]), "sample": int(obj.get("sample", 0))}


def read_answers(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return read_rows(path, parse_answer,
                     example=" with id, prompt_id, messages and answer (as `distill answer` writes)")

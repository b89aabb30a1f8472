"""Fakes at the Teacher seam: a scripted teacher that answers from a function and counts calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Mapping

from distill.teachers.base import Completion, Request, Teacher, Usage


class ScriptedTeacher:
    """A Teacher whose replies come from `script(request) -> str` (or raise). Counts every call."""

    backend = "scripted"
    model = "scripted-1"

    def __init__(self, script: Callable[[Request], str], delay: float = 0.0):
        self.script = script
        self.delay = delay
        self.requests: list[Request] = []

    def identity(self) -> Mapping[str, Any]:
        return {"provider": "scripted", "model": self.model, "key": "scripted:scripted-1"}

    async def complete(self, request: Request) -> Completion:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        text = self.script(request)
        return Completion(text=text, finish_reason="stop", usage=Usage(100, 20), model=self.model)

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> "ScriptedTeacher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def run_all(teacher: Teacher, requests: list[Request]) -> list[Completion | BaseException]:
    """Send every request at once and close the teacher; results (or the exceptions raised) in order."""
    async def go() -> list[Any]:
        try:
            return await asyncio.gather(*(teacher.complete(r) for r in requests), return_exceptions=True)
        finally:
            await teacher.aclose()

    return asyncio.run(go())


def critique_reply(revision: str, verdict: str = "needs_revision", critique: str = "It has problems.",
                   issues: tuple[str, ...] = ("an issue",)) -> str:
    return json.dumps({"critique": critique, "issues": list(issues), "verdict": verdict, "revision": revision})


def judge_reply(winner: str, reason: str = "because") -> str:
    return json.dumps({"reason": reason, "winner": winner})


def between(text: str, marker: str) -> str:
    """The text a prompt template quotes between <<<MARKER and MARKER>>>."""
    return text.split(f"<<<{marker}\n", 1)[1].split(f"\n{marker}>>>", 1)[0]


def quoted_answer(request: Request, marker: str = "ANSWER") -> str:
    """The text a critique request quotes between <<<MARKER and MARKER>>> (in its first user turn,
    which a repair request repeats)."""
    user = next(m["content"] for m in request.messages if m["role"] == "user")
    return between(user, marker)


def is_judge(request: Request) -> bool:
    return request.schema_name == "judgement"

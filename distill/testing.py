"""A scripted teacher for your own tests: distill without a model, a key or a network.

Like httpx's `MockTransport`, `ScriptedTeacher` stands at the Teacher seam and answers every
request from a function you write, so anything that takes a `Teacher` (a round, the critique
stage, the filters, the judge) runs offline, fast and deterministically, and you can assert on the
requests it was sent (`teacher.requests`):

    from distill.testing import ScriptedTeacher, critique_reply, is_judge, judge_reply

    def script(request):
        if is_judge(request):
            return judge_reply("tie")        # the pairwise judge: "A", "B" or "tie"
        return critique_reply("Paris.")      # every critique asks for this revision

    teacher = ScriptedTeacher(script)
    summary = run_round(config, prompts, teacher=teacher)   # distill.stages.round.run_round
    assert len(teacher.requests) == ...

The script may raise (a `TeacherError`, say) to test failure handling, and `delay` makes each call
wait, to test concurrency. `critique_reply` and `judge_reply` write replies in the JSON the
critique protocol (`distill.stages.protocol`) reads; `quoted_answer` and `between` read back the
text a request quotes. distill's own tests use these too (tests/fakes.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Mapping

from distill.teachers.base import Completion, Request, Usage


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

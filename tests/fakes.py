"""Fakes at the Teacher seam. The scripted teacher and its reply helpers are public, in
`distill.testing` (users test with them too); this module re-exports them for the tests and
bench/, and adds `run_all`."""

from __future__ import annotations

import asyncio
from typing import Any

from distill.teachers.base import Completion, Request, Teacher
from distill.testing import ScriptedTeacher, between, critique_reply, is_judge, judge_reply, quoted_answer

__all__ = ["ScriptedTeacher", "between", "critique_reply", "is_judge", "judge_reply", "quoted_answer", "run_all"]


def run_all(teacher: Teacher, requests: list[Request]) -> list[Completion | BaseException]:
    """Send every request at once and close the teacher; results (or the exceptions raised) in order."""
    async def go() -> list[Any]:
        try:
            return await asyncio.gather(*(teacher.complete(r) for r in requests), return_exceptions=True)
        finally:
            await teacher.aclose()

    return asyncio.run(go())

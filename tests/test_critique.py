"""The critique stage (`distill.stages.critique.critique_stage`) against a teacher that fails: one row's failure
is that row's, but the same failure row after row is a fault of the teacher, and stops the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.errors import SystematicFailure, TeacherError
from distill.stages.critique import STOP_AFTER
from distill.stages.round import RunConfig, critique_answers
from distill.teachers.base import Request
from fakes import ScriptedTeacher, critique_reply, quoted_answer

OOM = "local:default: generation failed (OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB)"


def answers(n: int) -> list[dict]:
    return [{"id": f"a-{i}", "prompt_id": f"p{i}", "sample": 0, "answer": f"answer {i}",
             "messages": [{"role": "user", "content": f"Question {i}?"}]} for i in range(n)]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_same_failure_row_after_row_stops_the_stage_naming_the_cause(tmp_path: Path) -> None:
    """Out of memory on every row: not 30 failed rows and a run that ends with nothing and no
    error, but an error after STOP_AFTER rows in a row, saying what failed."""
    def out_of_memory(request: Request) -> str:
        raise TeacherError(OOM, reason="local_error")

    teacher = ScriptedTeacher(out_of_memory)
    cfg = RunConfig(name="oom", runs_dir=tmp_path, stages=("facts",), concurrency=1)
    with pytest.raises(SystematicFailure) as caught:
        critique_answers(cfg, answers(30), teacher=teacher)
    message = str(caught.value)
    assert f"{STOP_AFTER} rows in a row" in message and "teacher_local_error" in message
    assert "OutOfMemoryError" in message
    assert len(teacher.requests) == STOP_AFTER  # nothing more was asked


def test_failures_broken_by_a_success_or_of_another_kind_do_not_stop_it(tmp_path: Path) -> None:
    def flaky(request: Request) -> str:
        n = int(request.prompt_id[1:])
        if n % (STOP_AFTER - 1) == 0:
            return critique_reply(quoted_answer(request) + " (fixed)")
        if n % 2:
            raise TeacherError("server error after retries", reason="server_error")
        raise TeacherError(OOM, reason="local_error")

    cfg = RunConfig(name="flaky", runs_dir=tmp_path, stages=("facts",), concurrency=1, filters=("acceptable",))
    critique_answers(cfg, answers(3 * STOP_AFTER), teacher=ScriptedTeacher(flaky))
    rows = read(cfg.run_dir / "revisions.jsonl")
    assert len(rows) == 3 * STOP_AFTER and sum(r["status"] == "failed" for r in rows) > STOP_AFTER


def test_replies_that_do_not_parse_are_the_rows_own_failures(tmp_path: Path) -> None:
    """An unparseable reply is about that row's content: any number of them in a row is recorded
    row by row, as before."""
    cfg = RunConfig(name="prose", runs_dir=tmp_path, stages=("facts",), concurrency=1)
    critique_answers(cfg, answers(STOP_AFTER + 4), teacher=ScriptedTeacher(lambda r: "I refuse to use JSON."))
    rows = read(cfg.run_dir / "revisions.jsonl")
    assert len(rows) == STOP_AFTER + 4 and {r["reason"] for r in rows} == {"unparseable_reply"}

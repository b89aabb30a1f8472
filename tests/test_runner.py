"""The stage runner (`distill.stages.runner.run_rows`): what every stage gets without writing it:
order, billing per row, batch passes around `Deferred`, resume from its files, commit in order."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distill.stages.accounting import Ledger
from distill.stages.runner import StageFiles, run_rows
from distill.teachers.base import Completion, Deferred, Request, Teacher, Usage
from distill.teachers.stack import TeacherHandle
from fakes import ScriptedTeacher


def ask(text: str) -> Request:
    return Request(messages=({"role": "user", "content": text},), prompt_id=text)


class BatchedTeacher:
    """A teacher in batch mode, at the handle's seam: a request it has not answered yet is deferred
    (queued for a 'provider batch'); `settle_batches()` answers everything queued so far."""

    backend, model = "fake", "batched"

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.answered: set[str] = set()
        self.settled = 0
        self.misses = None

    def identity(self) -> dict[str, Any]:
        return {"provider": "fake", "model": "batched"}

    async def complete(self, request: Request) -> Completion:
        text = request.messages[-1]["content"]
        if text not in self.answered:
            self.queued.append(text)
            raise Deferred(text)
        return Completion(f"answer to {text}", "stop", usage=Usage(10, 5), cost=0.01, batch=True)

    async def settle_batches(self) -> None:
        self.settled += 1
        self.answered.update(self.queued)
        self.queued.clear()

    async def aclose(self) -> None:
        return None


def test_outputs_come_back_in_input_order_and_every_call_is_billed_to_its_row() -> None:
    async def work(n: int, teacher: Teacher) -> str:
        await asyncio.sleep(0.001 * (5 - n))  # later rows finish first
        first = await teacher.complete(ask(f"q{n}"))
        second = await teacher.complete(ask(f"again {n}"))
        return first.text + "|" + second.text

    teacher = ScriptedTeacher(lambda r: r.messages[-1]["content"].upper())
    ledger = Ledger("stage")
    out = asyncio.run(run_rows("stage", list(range(5)), work, teacher=TeacherHandle.borrow(teacher), ledger=ledger,
                               concurrency=3, progress=False))
    assert out == [f"Q{n}|AGAIN {n}" for n in range(5)]
    assert (ledger.rows, ledger.calls) == (5, 10) and ledger.finished is not None


def test_a_deferred_row_bills_nothing_runs_again_after_the_batch_and_is_billed_once() -> None:
    """Stage code never sees Deferred: the runner holds the row back, settles the batches, runs it again."""
    seen: list[int] = []

    async def work(n: int, teacher: Teacher) -> str:
        seen.append(n)
        return (await teacher.complete(ask(f"q{n}"))).text

    teacher, ledger = BatchedTeacher(), Ledger("stage")
    out = asyncio.run(run_rows("stage", [0, 1, 2], work, teacher=teacher, ledger=ledger,  # type: ignore[arg-type]
                               concurrency=2, progress=False))
    assert out == ["answer to q0", "answer to q1", "answer to q2"]
    assert teacher.settled == 1 and sorted(seen) == [0, 0, 1, 1, 2, 2]
    assert (ledger.rows, ledger.calls, ledger.batch_calls) == (3, 3, 3)
    assert ledger.cost_usd == pytest.approx(0.03)


def test_a_row_that_stops_the_stage_is_still_billed_for_the_calls_it_made() -> None:
    class Stop(Exception):
        pass

    async def work(n: int, teacher: Teacher) -> str:
        await teacher.complete(ask(f"q{n}"))
        raise Stop(n)

    ledger = Ledger("stage")
    with pytest.raises(Stop):
        asyncio.run(run_rows("stage", [0], work, teacher=TeacherHandle.borrow(ScriptedTeacher(lambda r: "ok")),
                             ledger=ledger, concurrency=1, progress=False))
    assert (ledger.calls, ledger.rows, ledger.input_tokens) == (1, 0, 100)


@dataclass
class Doubled:
    """An output with a main row and two side rows that the main row lists."""

    n: int
    done: bool = True

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        side = [{"id": f"s{self.n}-{k}", "of": self.n} for k in range(2)]
        return {"main.jsonl": [{"id": f"m{self.n}", "n": self.n, "ok": self.done, "sides": [s["id"] for s in side]}],
                "side.jsonl": side}


def _files(directory: Path) -> StageFiles[Doubled]:
    return StageFiles(directory, ("main.jsonl", "side.jsonl"),
                      reuse=lambda row: Doubled(row["n"]) if row["ok"] else None,
                      links=lambda row: {"side.jsonl": row["sides"]})


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_resume_the_rows_already_done_and_commit_in_input_order(tmp_path: Path) -> None:
    ran: list[int] = []

    async def work(n: int, teacher: Teacher) -> Doubled:
        ran.append(n)
        await asyncio.sleep(0.001 * (4 - n))
        return Doubled(n, done=n != 2)  # row 2 fails: a re-run tries it again

    def go(items: list[int]) -> list[Doubled]:
        return asyncio.run(run_rows("stage", items, work, teacher=TeacherHandle.borrow(ScriptedTeacher(lambda r: "")),
                                    ledger=Ledger("stage"), concurrency=4, key=lambda n: f"m{n}",
                                    files=_files(tmp_path), progress=False))

    assert [o.n for o in go([3, 1, 2])] == [3, 1, 2]
    assert [r["id"] for r in _read(tmp_path / "main.jsonl")] == ["m3", "m1", "m2"]
    assert [r["id"] for r in _read(tmp_path / "side.jsonl")] == ["s3-0", "s3-1", "s1-0", "s1-1", "s2-0", "s2-1"]
    ran.clear()
    assert [o.n for o in go([0, 1, 2, 3])] == [0, 1, 2, 3]
    assert sorted(ran) == [0, 2]  # 1 and 3 were done; 2 had failed
    assert [r["id"] for r in _read(tmp_path / "main.jsonl")] == ["m0", "m1", "m2", "m3"]
    assert not (tmp_path / "main.jsonl.partial").exists()

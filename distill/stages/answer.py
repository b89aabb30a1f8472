"""The answer stage: the student answers a list of prompts into a JSONL file, resumably.

Answers stream to `OUTPUT.partial` after every batch. Rows already present, in the partial file
or in a finished OUTPUT from an earlier run, are reused when they answer the same prompt (its id,
conversation and reference: an edited prompt is answered again) with the same model (the weights
hash) and the same generation parameters; only the rest is generated, and the student
is not even loaded when nothing is left to do. OUTPUT is written, in input order, only once
every prompt has its answers.

With a `Server` (`--engine server`) a student served by an OpenAI-compatible server answers
instead (`distill.teachers.served_student`), into the same rows, resumed the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from distill.records.jsonl import JsonlSink
from distill.records.prompts import Prompt
from distill.student.model import ANSWER_BATCH, GenerationParams, ModelIdentity, Student, model_identity
from distill.teachers.served_student import Server, ServedStudent, connect


def _reusable(rows: Any, prompts: Sequence[Prompt], identity: ModelIdentity,
              params: GenerationParams) -> dict[tuple[str, int], dict]:
    """The stored answers still valid for `prompts`: same prompt (conversation and reference, not
    just its id), same model, same generation parameters."""
    generation = params.to_dict()
    asked = {p.id: ([dict(m) for m in p.messages], p.reference) for p in prompts}
    return {(r["prompt_id"], r["sample"]): r for r in rows
            if r.get("model", {}).get("key") == identity.key and r.get("generation") == generation
            and asked.get(r["prompt_id"]) == (r.get("messages"), r.get("reference"))}


def answer_to_file(prompts: Sequence[Prompt], output: Path, params: GenerationParams, *,
                   student: Student | ServedStudent | None = None, source: str | None = None,
                   adapter: str | None = None, batch_size: int = ANSWER_BATCH, progress: bool = True,
                   round_: int | None = None, server: Server | None = None,
                   require_verified: bool = False) -> list[dict]:
    """Answer every prompt `params.samples` times into `output`; returns the rows in input order.
    With `server`, the student served there answers (checked first to be `source` + `adapter`,
    see `distill.teachers.served_student`; `require_verified` refuses a server without hashes)."""
    if student is None and server is not None:
        student = connect(server, source, adapter, concurrency=batch_size, require_verified=require_verified)
    identity = student.identity if student is not None else model_identity(source, adapter)[1]
    sink = JsonlSink(output, reuse_finished=True)
    reused = _reusable(sink.done.values(), prompts, identity, params)
    wanted = [(p.id, k) for p in prompts for k in range(params.samples)]
    missing = [key for key in wanted if key not in reused]
    if missing:
        if reused:
            print(f"distill: resuming, {len(wanted) - len(missing)} of {len(wanted)} answers already done",
                  file=sys.stderr)
        student = student or Student.load(source, adapter=adapter)
        print(f"distill: student {student.identity.key} on {student.device}", file=sys.stderr)
        try:
            for batch in student.iter_answers(prompts, params, batch_size=batch_size,
                                              skip=frozenset(reused), progress=progress):
                sink.write(_with_round(a.to_row(), round_) for a in batch)
        finally:
            sink.close()
    by_key = _reusable(sink.done.values(), prompts, identity, params)
    rows = [by_key[key] for key in wanted]
    sink.commit([str(r["id"]) for r in rows])
    return rows


def _with_round(row: dict[str, Any], round_: int | None) -> dict[str, Any]:
    return row if round_ is None else {**row, "round": round_}

"""The critique-and-revise stage: each answer goes through a chain of principles.

For every answer, each stage (one principle) asks the teacher for a critique, the concrete
issues, a verdict and a revision of the current text; a stage that says "needs_revision" hands
its revision to the next stage. Every stage writes a row to `critiques.jsonl`; every answer
ends as one row in `revisions.jsonl`, with status "ok" or "failed" and the reason.

Rows are independent: a teacher error or an unparseable reply fails that row only. An exhausted
quota stops the whole batch at once (retrying cannot help), and so do STOP_AFTER rows in a row that
fail for the same reason (`SystematicFailure`): out of memory, a server that is down or a rejected
key is a fault of the teacher, not of the rows, and failing every row for it would end the run
with nothing and no error. Reasons that belong to a row (ROW_REASONS: its reply did not parse,
its prompt is too long, its batch row failed, it is not cached offline) never stop the stage.

Rows are processed concurrently (`concurrency` at a time; the teacher layer paces the calls),
written as they finish, and a re-run skips the rows already done; failed rows are tried again,
and calls that succeeded before a crash are cache hits. In batch mode (`distill.teachers.batch`) a row
whose request went into a provider batch is deferred: nothing is written or billed for it, and
`revise_all` hands it back to run again once the batch has answered.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

from distill.errors import QuotaExhausted, SystematicFailure, TeacherError
from distill.records.ids import content_hash
from distill.records.jsonl import JsonlSink
from distill.stages.accounting import Ledger
from distill.stages.protocol import ProtocolFailure, Settings, ask, critique_request, parse_critique
from distill.stages.templates import Principle, PromptSet
from distill.teachers.base import Deferred, Teacher
from distill.teachers.cache.layer import OfflineMiss


STOP_AFTER = 8  # rows in a row failing for the same reason that stop the stage
ROW_REASONS = frozenset({"unparseable_reply", "offline_miss", "teacher_too_long", "teacher_batch_errored",
                         "teacher_batch_expired", "teacher_batch_canceled"})  # about the row, not the teacher


@dataclass
class StageOutcome:
    """The result of revising one answer: its revisions row and its per-stage critique rows."""

    revision: dict[str, Any]
    critiques: list[dict[str, Any]]


REVISION_TEMPLATES = ("system", "critique", "repair")  # the templates a critique request is built from


def revision_id(answer: Mapping[str, Any], chain: tuple[Principle, ...], teacher_key: str, prompts: PromptSet,
                settings: Settings) -> str:
    """The id of an answer's revision: a hash of everything that shapes it (the answer's id, text,
    conversation and reference; the chain's principles; the system, critique and repair templates;
    the teacher; its decoding settings, the token limit included). A re-run reuses a stored
    revision only when all of them are unchanged."""
    return "r-" + content_hash({
        "answer": answer["id"], "text": answer["answer"], "messages": answer["messages"],
        "reference": answer.get("reference"), "chain": [p.id for p in chain],
        "templates": [prompts.templates[name].id for name in REVISION_TEMPLATES], "teacher": teacher_key,
        "settings": asdict(settings)})


def teacher_key(teacher: Teacher) -> str:
    identity = dict(teacher.identity())
    return str(identity.get("key") or f"{identity.get('provider', teacher.backend)}:{teacher.model}")


async def revise_one(answer: Mapping[str, Any], chain: tuple[Principle, ...], teacher: Teacher,
                     prompts: PromptSet, settings: Settings, ledger: Ledger, round_: int = 1, *,
                     tkey: str | None = None, rid: str | None = None) -> StageOutcome:
    """Run the chain on one answer; failures become a 'failed' row, except an exhausted quota.
    `tkey` and `rid` (the teacher's key and the revision id) are derived here unless the caller has them."""
    tkey = tkey or teacher_key(teacher)
    rid = rid or revision_id(answer, chain, tkey, prompts, settings)
    messages = answer["messages"]
    current, critiques, last_finish = answer["answer"], [], None
    base = {"answer_id": answer["id"], "prompt_id": answer["prompt_id"], "round": round_}
    try:
        with ledger.row() as spend:  # billed when the row ends; a deferred row (batch mode) bills nothing
            for index, principle in enumerate(chain):
                text_in = current
                request = critique_request(prompts, messages, text_in, principle, settings, prompt_id=answer["prompt_id"])
                parsed, completions = await ask(teacher, prompts, request, lambda t, a=text_in: parse_critique(t, a))
                spend += completions
                critiques.append({
                    "id": "c-" + content_hash({"revision": rid, "stage": index}), **base, "revision_id": rid,
                    "stage": index, "principle": principle.name, "principle_id": principle.id,
                    "template_ids": list(request.template_ids), "input": text_in, "critique": parsed.critique,
                    "issues": list(parsed.issues), "verdict": parsed.verdict, "revision": parsed.revision,
                    "repaired": len(completions) > 1, "finish_reason": completions[-1].finish_reason,
                    "teacher": tkey, "cached": all(c.cached for c in completions),
                    "usage": {"input": sum(c.usage.input_tokens for c in completions),
                              "output": sum(c.usage.output_tokens for c in completions)},
                })
                if parsed.verdict == "needs_revision":
                    current, last_finish = parsed.revision, completions[-1].finish_reason
    except QuotaExhausted:
        raise
    except ProtocolFailure as exc:  # its calls, the repair included, are billed by ledger.row()
        return StageOutcome(_failed(rid, base, answer, "unparseable_reply", str(exc), len(critiques), tkey), critiques)
    except (TeacherError, OfflineMiss) as exc:  # this row only; any other cache error stops the batch
        reason = "offline_miss" if isinstance(exc, OfflineMiss) else f"teacher_{exc.reason}"
        return StageOutcome(_failed(rid, base, answer, reason, str(exc), len(critiques), tkey), critiques)
    verdict = "needs_revision" if any(c["verdict"] == "needs_revision" for c in critiques) else "acceptable"
    return StageOutcome({
        "id": rid, **base, "status": "ok", "messages": messages, "original": answer["answer"],
        "revision": current, "verdict": verdict, "finish_reason": last_finish,
        "stages": [c["id"] for c in critiques], "principles": [p.name for p in chain], "teacher": tkey,
        "template_ids": sorted({t for c in critiques for t in c["template_ids"]}),
        **({"reference": answer["reference"]} if answer.get("reference") is not None else {}),
    }, critiques)


def _failed(rid: str, base: dict[str, Any], answer: Mapping[str, Any], reason: str, detail: str,
            stage: int, tkey: str) -> dict[str, Any]:
    return {"id": rid, **base, "status": "failed", "reason": reason, "detail": detail, "failed_stage": stage,
            "messages": answer["messages"], "original": answer["answer"], "teacher": tkey,
            **({"reference": answer["reference"]} if answer.get("reference") is not None else {})}


async def revise_all(answers: Iterable[Mapping[str, Any]], chain: tuple[Principle, ...], teacher: Teacher,
                     prompts: PromptSet, settings: Settings, *, revisions: JsonlSink, critiques: JsonlSink,
                     ledger: Ledger, concurrency: int = 16, round_: int = 1,
                     on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> list[Mapping[str, Any]]:
    """Revise every answer not already done, `concurrency` at a time, writing rows as they finish.
    Returns the answers left waiting on a provider batch (batch mode; nothing is written for them)."""
    tkey = teacher_key(teacher)
    done = {rid for rid, row in revisions.done.items() if row.get("status") == "ok"}
    todo = [(a, rid) for a in answers if (rid := revision_id(a, chain, tkey, prompts, settings)) not in done]
    queue: asyncio.Queue[tuple[Mapping[str, Any], str]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    deferred: list[Mapping[str, Any]] = []
    streak = FailureStreak()

    async def worker() -> None:
        while True:
            try:
                answer, rid = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                outcome = await revise_one(answer, chain, teacher, prompts, settings, ledger, round_,
                                           tkey=tkey, rid=rid)
            except Deferred:
                deferred.append(answer)
                continue
            critiques.write(outcome.critiques)
            revisions.write([outcome.revision])
            ledger.rows += 1
            if outcome.revision["status"] == "failed":
                ledger.fail(outcome.revision["reason"])
            on_row(outcome.revision)
            streak.add(outcome.revision)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(todo))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
    order = {id(a): i for i, (a, _) in enumerate(todo)}
    return sorted(deferred, key=lambda a: order[id(a)])


class FailureStreak:
    """The rows that finished last, while they all failed for one reason: STOP_AFTER of them raise
    SystematicFailure, naming the reason and the last row's error. A row that succeeds, or fails
    for another reason or one of ROW_REASONS, starts it again."""

    def __init__(self, limit: int = STOP_AFTER):
        self.limit = limit
        self.reason: str | None = None
        self.count = 0

    def add(self, row: Mapping[str, Any]) -> None:
        reason = row.get("reason") if row.get("status") == "failed" else None
        if reason is None or reason in ROW_REASONS:
            self.reason, self.count = None, 0
            return
        self.count = self.count + 1 if reason == self.reason else 1
        self.reason = reason
        if self.count >= self.limit:
            raise SystematicFailure(
                f"critique stopped: {self.count} rows in a row failed with {reason} (the last: "
                f"{str(row.get('detail', ''))[:300]}). That is a fault of the teacher, not of the rows: fix it "
                "(memory, server, key, model) and re-run the same command; the rows finished so far are kept",
                reason=reason)

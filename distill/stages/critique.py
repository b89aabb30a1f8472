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

`critique_stage` runs the rows through the stage runner (`distill.stages.runner`): concurrently,
written as they finish, billed per row; a re-run skips the rows already done and tries failed
ones again, and calls that succeeded before a crash are cache hits. In batch mode the runner
holds a row back while its request waits on a provider batch and runs it again afterwards;
nothing here sees that happen. The rows are typed (`distill.records.rows.Revision`, `Critique`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.errors import QuotaExhausted, SystematicFailure, TeacherError
from distill.records.ids import content_hash
from distill.records.rows import Critique, Revision
from distill.stages.accounting import Ledger
from distill.stages.protocol import ProtocolFailure, Settings, ask, critique_request, parse_critique
from distill.stages.runner import StageFiles, run_rows
from distill.stages.templates import Principle, PromptSet
from distill.teachers.base import Teacher
from distill.teachers.cache.layer import OfflineMiss
from distill.teachers.stack import TeacherHandle


STOP_AFTER = 8  # rows in a row failing for the same reason that stop the stage
REVISIONS, CRITIQUES = "revisions.jsonl", "critiques.jsonl"
ROW_REASONS = frozenset({"unparseable_reply", "offline_miss", "teacher_too_long", "teacher_batch_errored",
                         "teacher_batch_expired", "teacher_batch_canceled"})  # about the row, not the teacher


@dataclass
class StageOutcome:
    """The result of revising one answer: its revisions row and its per-stage critique rows."""

    revision: Revision
    critiques: list[Critique]

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        return {REVISIONS: [self.revision.to_row()], CRITIQUES: [c.to_row() for c in self.critiques]}

    @classmethod
    def stored(cls, row: Mapping[str, Any]) -> "StageOutcome | None":
        """A revisions.jsonl row a re-run keeps (status ok; a failed row is tried again)."""
        return cls(Revision.from_row(row), []) if row.get("status") == "ok" else None


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
                     prompts: PromptSet, settings: Settings, round_: int = 1, *,
                     tkey: str | None = None, rid: str | None = None) -> StageOutcome:
    """Run the chain on one answer; failures become a 'failed' row, except an exhausted quota.
    `tkey` and `rid` (the teacher's key and the revision id) are derived here unless the caller has them."""
    tkey = tkey or teacher_key(teacher)
    rid = rid or revision_id(answer, chain, tkey, prompts, settings)
    messages = [dict(m) for m in answer["messages"]]
    current, critiques, last_finish = answer["answer"], [], None
    base = Revision(id=rid, answer_id=answer["id"], prompt_id=answer["prompt_id"], round=round_, status="ok",
                    messages=messages, original=answer["answer"], teacher=tkey, reference=answer.get("reference"),
                    original_finish_reason=_cut(answer))
    try:
        for index, principle in enumerate(chain):
            text_in = current
            request = critique_request(prompts, messages, text_in, principle, settings, prompt_id=answer["prompt_id"])
            parsed, completions = await ask(teacher, prompts, request, lambda t, a=text_in: parse_critique(t, a))
            critiques.append(Critique(
                revision_id=rid, stage=index, answer_id=answer["id"], prompt_id=answer["prompt_id"], round=round_,
                principle=principle.name, principle_id=principle.id, template_ids=list(request.template_ids),
                input=text_in, critique=parsed.critique, issues=list(parsed.issues), verdict=parsed.verdict,
                revision=parsed.revision, repaired=len(completions) > 1,
                finish_reason=completions[-1].finish_reason, teacher=tkey,
                cached=all(c.cached for c in completions),
                usage={"input": sum(c.usage.input_tokens for c in completions),
                       "output": sum(c.usage.output_tokens for c in completions)}))
            if parsed.verdict == "needs_revision":
                current, last_finish = parsed.revision, completions[-1].finish_reason
    except QuotaExhausted:
        raise
    except ProtocolFailure as exc:
        return StageOutcome(_failed(base, "unparseable_reply", str(exc), len(critiques)), critiques)
    except (TeacherError, OfflineMiss) as exc:  # this row only; any other cache error stops the batch
        reason = "offline_miss" if isinstance(exc, OfflineMiss) else f"teacher_{exc.reason}"
        return StageOutcome(_failed(base, reason, str(exc), len(critiques)), critiques)
    verdict = "needs_revision" if any(c.verdict == "needs_revision" for c in critiques) else "acceptable"
    return StageOutcome(replace(
        base, revision=current, verdict=verdict, finish_reason=last_finish, stages=[c.id for c in critiques],
        principles=[p.name for p in chain], template_ids=sorted({t for c in critiques for t in c.template_ids})),
        critiques)


def _cut(answer: Mapping[str, Any]) -> str | None:
    """How an answer ended where it did not end its turn (None for "stop", and for rows that do not say)."""
    reason = answer.get("finish_reason")
    return None if reason in (None, "stop") else str(reason)


def _failed(base: Revision, reason: str, detail: str, stage: int) -> Revision:
    return replace(base, status="failed", reason=reason, detail=detail, failed_stage=stage)


async def critique_stage(answers: Sequence[Mapping[str, Any]], chain: tuple[Principle, ...], teacher: TeacherHandle,
                         prompts: PromptSet, settings: Settings, *, run_dir: Path, ledger: Ledger,
                         concurrency: int = 16, round_: int = 1, progress: bool = True) -> list[Revision]:
    """Revise every answer into run_dir's revisions.jsonl (+ critiques.jsonl) through the stage
    runner: a re-run keeps the rows already revised and tries failed ones again. Returns the
    revisions in the answers' order."""
    tkey = teacher_key(teacher)
    rids = {id(a): revision_id(a, chain, tkey, prompts, settings) for a in answers}
    streak = FailureStreak()

    async def work(answer: Mapping[str, Any], row_teacher: Teacher) -> StageOutcome:
        return await revise_one(answer, chain, row_teacher, prompts, settings, round_, tkey=tkey, rid=rids[id(answer)])

    files = StageFiles(run_dir, (REVISIONS, CRITIQUES), reuse=StageOutcome.stored,
                       links=lambda row: {CRITIQUES: row.get("stages", [])})
    outcomes = await run_rows("critique", answers, work, teacher=teacher, ledger=ledger, concurrency=concurrency,
                              key=lambda a: rids[id(a)], files=files, progress=progress,
                              failure=lambda o: o.revision.reason, after=lambda o: streak.add(o.revision))
    return [o.revision for o in outcomes]


class FailureStreak:
    """The rows that finished last, while they all failed for one reason: STOP_AFTER of them raise
    SystematicFailure, naming the reason and the last row's error. A row that succeeds, or fails
    for another reason or one of ROW_REASONS, starts it again."""

    def __init__(self, limit: int = STOP_AFTER):
        self.limit = limit
        self.reason: str | None = None
        self.count = 0

    def add(self, row: Revision) -> None:
        reason = row.reason if not row.ok else None
        if reason is None or reason in ROW_REASONS:
            self.reason, self.count = None, 0
            return
        self.count = self.count + 1 if reason == self.reason else 1
        self.reason = reason
        if self.count >= self.limit:
            raise SystematicFailure(
                f"critique stopped: {self.count} rows in a row failed with {reason} (the last: "
                f"{str(row.detail or '')[:300]}). That is a fault of the teacher, not of the rows: fix it "
                "(memory, server, key, model) and re-run the same command; the rows finished so far are kept",
                reason=reason)

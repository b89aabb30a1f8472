"""One distillation round, stage by stage, with every artefact under `runs/NAME/`.

    prompts --dedup--> answers.jsonl --critique/revise--> critiques.jsonl + revisions.jsonl
            --filter--> sft.jsonl + prefs.jsonl + rejected.jsonl, and manifest.json

Each stage reads the previous stage's file and writes its own, so a killed run resumes where it
stopped: answers and revisions are appended as they are produced and reused on re-run, teacher
calls that already succeeded are served by the cache, and the filter stage re-derives its
output from the revisions (its judge calls are cached too). Every dropped row is written to
`rejected.jsonl` with the stage and filter that dropped it and why; every failed row with its
reason. `manifest.json` records the configuration, template ids, model identities, counts per
stage, token usage, estimated cost, cache hit rate and timings.

The critique and filter stages run their rows through the stage runner (`distill.stages.runner`):
concurrency, billing, resume, progress, offline misses and, in batch mode (`--batch`, see
`distill.teachers.batch`), the passes around provider batches are its job, not theirs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.checks.similarity import near_duplicates
from distill.records.files import run_lock, write_atomic, write_jsonl
from distill.records.prompts import Prompt
from distill.records.rundir import as_argument
from distill.records.rows import PrefRow, Rejected, Revision, SftRow
from distill.stages import consistency, filters, self_training
from distill.stages.accounting import Ledger
from distill.stages.answer import answer_to_file
from distill.stages.config import RunConfig
from distill.stages.critique import critique_stage, teacher_key
from distill.stages.filters import Selection
from distill.stages.protocol import Settings
from distill.stages.templates import PromptSet, load_prompt_set
from distill.student.model import GenerationParams
from distill.teachers.base import Teacher
from distill.teachers.batch.book import batch_summary, open_batches, summary_line
from distill.teachers.batch.queue import BatchMode
from distill.teachers.cache.layer import offline_from_env
from distill.teachers.none import NAME as NO_TEACHER
from distill.teachers.settings import masked_identity
from distill.teachers.stack import TeacherHandle, open_teacher


DEFAULT_CONCURRENCY = 16  # rows at a time when neither the run nor the teacher's settings say


@dataclass
class Summary:
    """Counts and ledgers of one round; printed as a table and written into the manifest."""

    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    batches: dict[str, Any] | None = None  # batch mode: every provider batch of the run (distill.teachers.batch)
    dataset: dict[str, int] = field(default_factory=dict)  # training rows by where they came from
    sft: list[SftRow] = field(default_factory=list)  # the training rows written to sft.jsonl
    prefs: list[PrefRow] = field(default_factory=list)  # the preference pairs written to prefs.jsonl

    def table(self) -> str:
        lines = [("| stage | in | out | dropped/failed | teacher calls | cached | batch | tokens | cost "
                  "| at live prices | at batch prices | seconds |"),
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for stage, c in self.counts.items():
            ledger = self.ledgers.get(stage)
            calls = f"{ledger.calls} | {ledger.cache_hits} | {ledger.batch_calls} | " \
                    f"{ledger.input_tokens + ledger.output_tokens} | {ledger.cost_text()} | " \
                    f"{ledger.price_text(batch=False)} | {ledger.price_text(batch=True)}" if ledger else \
                "- | - | - | - | - | - | -"
            lines.append(f"| {stage} | {c['in']} | {c['out']} | {c['in'] - c['out']} | {calls} | {c['seconds']:.1f} |")
        if self.dataset:
            lines.append("")
            lines.append(f"training rows: {sum(self.dataset.values())} (" +
                         ", ".join(f"{DATASET_SOURCES.get(k, k)} {v}" for k, v in sorted(self.dataset.items())) + ")")
        if self.prefs:
            decided: dict[str, int] = {}
            for pair in self.prefs:
                key = str(pair.meta.get("decided_by", pair.meta.get("source")))
                decided[key] = decided.get(key, 0) + 1
            lines.append(f"preference pairs: {len(self.prefs)} (" +
                         ", ".join(f"{k} {v}" for k, v in sorted(decided.items())) + ")")
        if self.rejected:
            lines.append("")
            lines.append("dropped or failed, by reason: " +
                         ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items(), key=lambda kv: -kv[1])))
        if self.batches:
            lines.append(summary_line(self.batches))
        return "\n".join(lines)


DATASET_SOURCES = {  # training rows by meta.source, and whether the prompt's check verifies them
    "revision": "teacher revisions, no check", "revision_verified": "teacher revisions that pass their check",
    "acceptable": "accepted answers, no check", "acceptable_verified": "accepted answers that pass their check",
    "self_verified": "student samples that pass their check", "self_consistent": "student majority answers, no check",
}


def dataset_kind(meta: Mapping[str, Any]) -> str:
    """The DATASET_SOURCES key of a training row's meta."""
    return str(meta.get("source")) + ("_verified" if meta.get("verified") else "")


def _log(message: str) -> None:
    print(f"distill: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- stages

def dedup_stage(prompts: Sequence[Prompt], threshold: float | None) -> tuple[list[Prompt], list[Rejected]]:
    if threshold is None:
        return list(prompts), []
    dups = near_duplicates([p.messages for p in prompts], threshold)
    rejected = [Rejected("prompts", "near_duplicate", f"near-duplicate of prompt {prompts[j].id!r}",
                         {"prompt_id": prompts[i].id}) for i, j in sorted(dups.items())]
    return [p for i, p in enumerate(prompts) if i not in dups], rejected


def select_stage(answers: Sequence[Mapping[str, Any]], skip_consistent: float | None,
                 samples: int) -> tuple[list[dict], list[Rejected]]:
    """One answer per prompt to critique; with samples, the majority's and its agreement."""
    if samples == 1:
        return [dict(a) for a in answers], []
    chosen, skipped = [], []
    for pid, (row, found) in consistency.choose(answers).items():
        row = {**row, "agreement": found.fraction, "samples": found.samples}
        if skip_consistent is not None and found.fraction >= skip_consistent:
            skipped.append(Rejected("select", "consistent", f"the student agrees with itself in "
                                    f"{found.fraction:.0%} of {found.samples} samples",
                                    {"prompt_id": pid, "answer_id": row["id"]}))
        else:
            chosen.append(row)
    return chosen, skipped


# ---------------------------------------------------------------- the round

def teacher_settings(teacher: str | None = None, batch: bool | None = None) -> Any:
    """The resolved teacher settings: `teacher` (a --teacher flag) over the config file and environment."""
    from distill.teachers.resolve import resolve_settings

    return resolve_settings(overrides={"teacher": teacher, "batch": batch})


def no_teacher(teacher: str | None = None) -> bool:
    """True when the teacher is `none`: self-training only, no teacher calls at all."""
    return teacher_settings(teacher).backend == NO_TEACHER


def open_round_teacher(offline: bool | None, teacher: str | None = None, *, batch: bool | None = None,
                       run_dir: Path | None = None, wait: bool = True) -> tuple[TeacherHandle | None, Any]:
    """The configured teacher behind the cache, and its settings; a missing key fails here, before any work.
    In batch mode (`batch`, else DISTILL_TEACHER_BATCH) misses go to provider batches recorded in `run_dir`;
    a caller that gives no `run_dir` (its stage does not run in passes) gets a live teacher.
    The teacher `none` gives (None, settings): the round self-trains and calls no one."""
    settings = teacher_settings(teacher, batch)
    if settings.backend == NO_TEACHER:
        return None, settings
    offline = offline_from_env() if offline is None else offline
    if settings.uses_default:
        _log("no teacher configured (DISTILL_TEACHER unset): using local:default, the embedded model critiquing itself")
    mode = BatchMode(run_dir, wait=wait) if settings.batch and not offline and run_dir is not None else None
    if mode is not None:
        _log(f"batch mode: teacher requests not in the cache go to {settings.backend}'s batch API "
             f"(recorded in {mode.run_dir / 'batches.json'})")
    elif run_dir is not None and not offline and (running := open_batches(run_dir)):
        _log(f"warning: {running} provider batch(es) of this run are still running; requests they hold are sent "
             f"live now and paid twice. To use them instead: `distill batch collect {as_argument(run_dir)} --wait`, or --batch")
    return open_teacher(settings, offline=offline, batch=mode, check_key=True), settings


def run_round(config: RunConfig, prompts: Sequence[Prompt], teacher: Teacher | None = None) -> Summary:
    """Answer, critique, revise and filter `prompts`; writes every artefact under `config.run_dir`.

    The teacher is the configured one behind the cache unless one is given (any `Teacher`, which
    the caller closes); with the teacher `none` the round self-trains (`distill.stages.self_training`)
    and calls no teacher.
    Another process working on the same run directory is an error (`distill.records.files.run_lock`)."""
    with run_lock(config.run_dir):
        prompt_set, chain = _templates(config)
        handle, settings = (TeacherHandle.borrow(teacher), None) if teacher else open_round_teacher(
            config.offline, config.teacher, batch=config.batch, run_dir=config.run_dir, wait=config.batch_wait)
        summary, started = Summary(), time.monotonic()
        kept, rejected = dedup_stage(prompts, config.dedup_threshold)
        summary.counts["prompts"] = {"in": len(prompts), "out": len(kept), "seconds": time.monotonic() - started}
        t0 = time.monotonic()
        answers = answer_to_file(kept, config.run_dir / "answers.jsonl", _generation(config, handle),
                                 source=config.student,
                                 adapter=config.adapter, batch_size=config.batch_size, round_=config.round,
                                 server=config.server, require_verified=trained_here(config))
        summary.counts["answer"] = {"in": len(kept), "out": len(answers), "seconds": time.monotonic() - t0}
        return _critique_and_filter(config, answers, prompt_set, chain, handle, settings, summary, rejected, started)


def _generation(config: RunConfig, teacher: TeacherHandle | None) -> GenerationParams:
    """The round's decoding: with no teacher, samples stop once they fail their check for good (`--no-self-stop`:
    never). A local student only: a served one answers whole."""
    if teacher is None and config.self_stop and config.engine == "local":
        return replace(config.generation, stop_failing=True)
    return config.generation


def trained_here(config: RunConfig) -> bool:
    """Whether the round's adapter is one a multi-round run trained itself (a later round's promoted
    adapter): a served student must then be shown by its hashes to be it, not taken by name."""
    return config.adapter is not None and config.round > 1


def critique_answers(config: RunConfig, answers: Sequence[Mapping[str, Any]], teacher: Teacher | None = None) -> Summary:
    """Critique, revise and filter existing answers (from `distill answer`) into `config.run_dir`."""
    with run_lock(config.run_dir):
        prompt_set, chain = _templates(config)
        handle, settings = (TeacherHandle.borrow(teacher), None) if teacher else open_round_teacher(
            config.offline, config.teacher, batch=config.batch, run_dir=config.run_dir, wait=config.batch_wait)
        write_jsonl(config.run_dir / "answers.jsonl", answers)
        summary = Summary()
        summary.counts["answer"] = {"in": len(answers), "out": len(answers), "seconds": 0.0}
        return _critique_and_filter(config, answers, prompt_set, chain, handle, settings, summary, [],
                                    time.monotonic())


def _templates(config: RunConfig) -> tuple[PromptSet, Any]:
    prompt_set = load_prompt_set(config.prompts_dir)
    chain = prompt_set.stages(list(config.stages)) if config.stages else prompt_set.chain(config.chain)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    return prompt_set, chain


def self_stage(config: RunConfig, answers: Sequence[Mapping[str, Any]], summary: Summary,
               teacher: Teacher | None) -> tuple[Selection, list[Mapping[str, Any]]]:
    """Self-training on the student's samples: its rows, and the answers left for the teacher.
    With no teacher the prompts nothing verified are rejected; with one (--self-first) they go on."""
    t0 = time.monotonic()
    outcome = self_training.select(answers, self_training.SelfPolicy(config.self_keep, config.self_agreement))
    prompts = len({a["prompt_id"] for a in answers})
    summary.counts["self"] = {"in": prompts, "out": prompts - len(outcome.unresolved),
                              "seconds": time.monotonic() - t0}
    if teacher is not None:
        return Selection(outcome.sft, outcome.prefs), [a for a in answers if a["prompt_id"] in outcome.unresolved]
    rejected = [Rejected("self", "unverified", why, {"prompt_id": pid, "round": config.round})
                for pid, why in outcome.unresolved.items()]
    return Selection(outcome.sft, outcome.prefs, rejected), []


def _critique_and_filter(config: RunConfig, answers: Sequence[Mapping[str, Any]], prompt_set: PromptSet, chain: Any,
                         teacher: TeacherHandle | None, settings: Any, summary: Summary, rejected: list[Rejected],
                         started: float) -> Summary:
    rows = Selection(rejected=list(rejected))
    to_teacher: Sequence[Mapping[str, Any]] = answers
    if teacher is None or config.self_first:
        selfish, to_teacher = self_stage(config, answers, summary, teacher)
        rows.extend(selfish)
    if teacher is not None and config.pairs == "online":
        pairs, dropped, ledger = asyncio.run(_online_pairs(config, to_teacher, prompt_set, teacher, settings))
        summary.ledgers["pairs"] = ledger
        prompts_in = len({a["prompt_id"] for a in to_teacher})
        summary.counts["pairs"] = {"in": prompts_in, "out": len(pairs), "seconds": ledger.seconds}
        rows.extend(Selection(prefs=pairs, rejected=dropped))
    elif teacher is not None:
        samples = max((int(a.get("sample", 0)) for a in to_teacher), default=0) + 1
        chosen, skipped = select_stage(to_teacher, config.skip_consistent, samples)
        rows.rejected += skipped
        if samples > 1:
            summary.counts["select"] = {"in": len(chosen) + len(skipped), "out": len(chosen), "seconds": 0.0}
        revisions, critique_ledger, selection, filter_ledger = asyncio.run(
            _teacher_stages(config, chosen, chain, prompt_set, teacher, settings))
        summary.ledgers.update(critique=critique_ledger, filter=filter_ledger)
        ok = sum(r.ok for r in revisions)
        summary.counts["critique"] = {"in": len(chosen), "out": ok, "seconds": critique_ledger.seconds}
        summary.counts["filter"] = {"in": ok, "out": len(selection.sft), "seconds": filter_ledger.seconds}
        rows.extend(selection)
    for sft_row in rows.sft:
        kind = dataset_kind(sft_row.meta)
        summary.dataset[kind] = summary.dataset.get(kind, 0) + 1
    for dropped in rows.rejected:
        summary.rejected[dropped.filter] = summary.rejected.get(dropped.filter, 0) + 1
    run_dir = config.run_dir
    summary.sft, summary.prefs = list(rows.sft), list(rows.prefs)
    write_jsonl(run_dir / "sft.jsonl", (r.to_row() for r in rows.sft))
    write_jsonl(run_dir / "prefs.jsonl", (r.to_row() for r in rows.prefs))
    write_jsonl(run_dir / "rejected.jsonl", (r.to_row() for r in rows.rejected))
    summary.batches = batch_summary(run_dir, teacher.pricing if teacher is not None else None)
    write_manifest(run_dir, config, prompt_set, chain, answers, teacher, settings, summary,
                   time.monotonic() - started, len(rows.sft), len(rows.prefs))
    return summary


def _concurrency(config: RunConfig, settings: Any) -> int:
    """Rows in flight: the run's setting, else the teacher's, else DEFAULT_CONCURRENCY (a borrowed teacher)."""
    return config.concurrency or (settings.concurrency if settings is not None else DEFAULT_CONCURRENCY)


async def _online_pairs(config: RunConfig, answers: Sequence[Mapping[str, Any]], prompt_set: PromptSet,
                        teacher: TeacherHandle, settings: Any) -> tuple[list[PrefRow], list[Rejected], Ledger]:
    """The online pairs stage (`--pairs online`) on its own event loop; the handle closes after it."""
    from distill.stages.pairs import pairs_stage

    concurrency = _concurrency(config, settings)
    ledger = Ledger("pairs")
    async with teacher:
        pairs, rejected = await pairs_stage(answers, teacher, prompt_set, ledger=ledger, concurrency=concurrency,
                                            round_=config.round,
                                            settings=Settings(max_tokens=min(config.teacher_max_tokens, 512)))
    return pairs, rejected, ledger


async def _teacher_stages(config: RunConfig, chosen: list[dict], chain: Any, prompt_set: PromptSet,
                          teacher: TeacherHandle, settings: Any) -> tuple[list[Revision], Ledger, Selection, Ledger]:
    """The critique and filter stages, sharing one teacher (and its cache) on one event loop; the
    handle closes what it owns when they end."""
    concurrency = _concurrency(config, settings)
    async with teacher:
        ledger = Ledger("critique")
        revisions = await critique_stage(chosen, chain, teacher, prompt_set,
                                         Settings(max_tokens=config.teacher_max_tokens), run_dir=config.run_dir,
                                         ledger=ledger, concurrency=concurrency, round_=config.round)
        fledger = Ledger("filter")
        ctx = filters.FilterContext(teacher=teacher, prompts=prompt_set, keep_acceptable=config.keep_acceptable,
                                    verified_positives=config.verified_positives,
                                    max_length_ratio=config.max_length_ratio,
                                    unchanged_threshold=config.unchanged_threshold,
                                    settings=Settings(max_tokens=min(config.teacher_max_tokens, 512)))
        selection = await filters.filter_stage(revisions, ctx, config.filters, teacher=teacher, ledger=fledger,
                                               concurrency=concurrency)
    return revisions, ledger, selection, fledger


def write_manifest(run_dir: Path, config: RunConfig, prompt_set: PromptSet, chain: Any, answers: Sequence[dict],
                   teacher: Teacher | None, settings: Any, summary: Summary, seconds: float, sft: int,
                   prefs: int) -> None:
    student = answers[0].get("model") if answers else None
    manifest = {
        "name": config.name,
        "round": config.round,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config.to_dict(),
        "templates": prompt_set.ids(),
        "chain": [p.name for p in chain],
        "models": {"student": student,
                   "teacher": masked_identity(teacher.identity()) if teacher is not None else None,
                   "teacher_name": settings.name if settings is not None else teacher_key(teacher)},
        "counts": {stage: {k: v for k, v in c.items() if k != "seconds"} for stage, c in summary.counts.items()},
        "rejected_by_filter": summary.rejected,
        "dataset": {"sft": sft, "prefs": prefs, "by_source": summary.dataset},
        "teacher_usage": {stage: ledger.to_dict() for stage, ledger in summary.ledgers.items()},
        "batches": summary.batches,
        "timings_s": {**{stage: round(c["seconds"], 3) for stage, c in summary.counts.items()},
                      "total": round(seconds, 3)},
    }
    write_atomic(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")

"""Evaluation: does the new student beat the current one on held-out prompts, without forgetting?

Both models answer the held-out prompts (never used in training), greedily. Then, each as a mean
of paired per-prompt differences (new minus current) with a 95% bootstrap interval:

- `checks`: objective reference checks (expected answers, numeric answers, checkable constraints
  such as "answer in lowercase"); the metric the seeds say cannot be gamed.
- `judge`: a pairwise judge asked in both orders (position swap); per prompt +1 when the new
  answer wins, -1 when it loses, 0 for a tie, averaged over the two orders. A warning is raised
  when the judge is the same model as the teacher that wrote the training data.
- `fidelity`: per-token NLL of held-out teacher revisions, current minus new (positive: the new
  model is closer to the teacher).
- `forgetting`: the relative rise in per-token NLL on a replay/general set, and the mean
  per-token KL(current || new) on the current model's own held-out answers.

- `general`: where general prompts with a reference are given (`--general`), both students'
  pass rates on them and the `drop` (current minus new): whether answers outside the trained
  task stay right, which the NLL of the base's answers does not tell.

Fidelity and KL cost a forward pass of both students per row and decide nothing by default, so they
are measured on `logprob_rows` held-out rows spread evenly through the file (every row where the
gate's policy reads them: `logprob_rows_for`).

The gate (`distill.evaluation.gate`) turns these into a promote-or-refuse decision. With
`--engine server` the held-out answers come from the server serving both students
(`distill.teachers.served_student`); fidelity and forgetting need the models' log-probabilities,
so the local models compute them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TypeVar

from distill.checks.reference import run_checks
from distill.config import default_of
from distill.evaluation.config import RoundsConfig
from distill.evaluation.gate import Interval, Policy, bootstrap_ci
from distill.records.prompts import Prompt
from distill.stages.accounting import Ledger
from distill.stages.protocol import ProtocolFailure, Settings, judge_both_orders
from distill.stages.runner import run_rows
from distill.stages.templates import PromptSet
from distill.student.model import ANSWER_BATCH, GenerationParams, Student
from distill.teachers.base import Teacher
from distill.teachers.served_student import ServedStudent
from distill.teachers.stack import TeacherHandle


T = TypeVar("T")


@dataclass
class Evaluation:
    """Metrics plus per-prompt rows; `metrics[name]["delta"]` is an Interval."""

    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    general_rows: list[dict[str, Any]] = field(default_factory=list)  # per general prompt: both answers, both checks
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": _plain(self.metrics), "warnings": self.warnings}


def _plain(value: Any) -> Any:
    if isinstance(value, Interval):
        return {"mean": value.mean, "low": value.low, "high": value.high, "n": value.n, "confidence": value.confidence}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def answers_of(student: Student | ServedStudent, prompts: Sequence[Prompt], max_new_tokens: int,
               batch_size: int = ANSWER_BATCH) -> list[str]:
    """Greedy answers, `batch_size` prompts generated together, with the `answer` progress bar (the
    gate's answers are minutes of its work on a CPU)."""
    return [a.text for a in student.answer(prompts, GenerationParams(max_new_tokens=max_new_tokens),
                                           batch_size=batch_size, progress=True)]


def check_results(prompts: Sequence[Prompt], current: Sequence[str],
                  new: Sequence[str]) -> list[tuple[bool, bool] | None]:
    """Per prompt, whether the current and the new answer pass its reference checks (None: it has none)."""
    return [(run_checks(p.checks, c).passed, run_checks(p.checks, n).passed) if p.checks else None
            for p, c, n in zip(prompts, current, new)]


def checks_metric(passed: Sequence[tuple[bool, bool] | None]) -> dict[str, Any] | None:
    pairs = [(int(c), int(n)) for c, n in (x for x in passed if x is not None)]
    if not pairs:
        return None
    return {"current_pass_rate": sum(c for c, _ in pairs) / len(pairs),
            "new_pass_rate": sum(n for _, n in pairs) / len(pairs),
            "delta": bootstrap_ci([n - c for c, n in pairs])}


def kind_of(prompt: Prompt) -> str:
    """What a held-out prompt's check tests, for the per-kind table: its `meta.kind` where the prompt
    file names one, else the types of its reference checks ("lowercase", "max_words+min_words")."""
    kind = prompt.meta.get("kind")
    return str(kind) if kind else "+".join(sorted({c.type for c in prompt.checks}))


def checks_by_kind(prompts: Sequence[Prompt], passed: Sequence[tuple[bool, bool] | None]) -> dict[str, dict[str, int]]:
    """Per kind (`kind_of`) of the prompts with a reference: how many there are and how many the
    current and the new student's answers pass. Empty where they are all of one kind (the
    overall pass rates say it all)."""
    table: dict[str, dict[str, int]] = {}
    for p, ok in zip(prompts, passed):
        if ok is not None:
            counts = table.setdefault(kind_of(p), {"n": 0, "current": 0, "new": 0})
            counts["n"] += 1
            counts["current"] += ok[0]
            counts["new"] += ok[1]
    return dict(sorted(table.items())) if len(table) > 1 else {}


async def judge_scores(teacher: TeacherHandle, prompt_set: PromptSet, prompts: Sequence[Prompt],
                       current: Sequence[str], new: Sequence[str], concurrency: int = 8) -> list[float | None]:
    """Per prompt in [-1, 1] (new vs current, averaged over both orders); None if the judge failed.
    The rows run through the stage runner (`distill.stages.runner`), `concurrency` judge requests at a time."""
    limit = asyncio.Semaphore(concurrency)
    settings = Settings(max_tokens=256)
    points = {"candidate": 1.0, "other": -1.0, "tie": 0.0}

    async def score(row: tuple[Prompt, str, str], judge: Teacher) -> float | None:
        p, c, n = row
        try:
            verdicts = await judge_both_orders(judge, prompt_set, p.messages, n, c, settings, prompt_id=p.id,
                                               concurrent=True, limit=limit)
        except ProtocolFailure:
            return None
        return sum(points[v] for v in verdicts) / 2

    return await run_rows("judge", list(zip(prompts, current, new)), score, teacher=teacher, ledger=Ledger("judge"),
                          concurrency=concurrency, failure=lambda s: "unparseable_reply" if s is None else None)


async def _judge(teacher: Teacher, prompt_set: PromptSet, prompts: Sequence[Prompt], current: Sequence[str],
                 new: Sequence[str]) -> list[float | None]:
    """The judge's scores; a teacher handle from `open_teacher` is closed when they are in (on the
    event loop its connections live on), a teacher the caller built is left to the caller."""
    handle = teacher if isinstance(teacher, TeacherHandle) else TeacherHandle.borrow(teacher)
    async with handle:
        return await judge_scores(handle, prompt_set, prompts, current, new)


def judge_metric(scores: Sequence[float | None]) -> dict[str, Any] | None:
    valid = [s for s in scores if s is not None]
    if not valid:
        return None
    return {"wins": sum(s > 0 for s in valid), "ties": sum(s == 0 for s in valid),
            "losses": sum(s < 0 for s in valid), "failed": len(scores) - len(valid),
            "win_rate": (sum(s > 0 for s in valid) + 0.5 * sum(s == 0 for s in valid)) / len(valid),
            "delta": bootstrap_ci(valid)}


def read_general(path: Any) -> list[Prompt]:
    """The prompts of `--general FILE`; an InputError when none has a `reference` (nothing to check)."""
    from distill.errors import InputError
    from distill.records.prompts import read_prompts

    prompts = read_prompts(path)
    if not any(p.checks for p in prompts):
        raise InputError(f"{path}: none of its {len(prompts)} prompt(s) has a `reference`; --general needs prompts "
                         "whose answers can be checked (e.g. prompts/instructions/general.jsonl)")
    return prompts


def general_metric(current: Student | ServedStudent, new: Student | ServedStudent, general: Sequence[Prompt],
                   max_new_tokens: int, batch_size: int = ANSWER_BATCH) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Pass rates of both students on the `general` prompts that have a reference, and their drop;
    and per prompt, both answers and whether each passed."""
    checked = [p for p in general if p.checks]
    if not checked:
        return None, []
    cur, nxt = answers_of(current, checked, max_new_tokens, batch_size), answers_of(new, checked, max_new_tokens, batch_size)
    passed = check_results(checked, cur, nxt)
    metric = checks_metric(passed)
    assert metric is not None  # every prompt in `checked` has a reference
    rows = [{"prompt_id": p.id, "prompt": p.text, "current": c, "new": n, "current_passed": ok[0], "new_passed": ok[1]}
            for p, c, n, ok in zip(checked, cur, nxt, passed) if ok is not None]
    return {**metric, "drop": metric["current_pass_rate"] - metric["new_pass_rate"]}, rows


def per_example_nll(student: Student, examples: Sequence[Any]) -> list[float]:
    """Per-token NLL of each example's completion (rendered exactly as in training)."""
    from distill.training.examples import completion_losses

    return [total / max(count, 1) for total, count in completion_losses(student, examples)]


def spread(items: Sequence[T], count: int) -> list[T]:
    """`count` of `items`, evenly spaced through them, the same on every run (all of them when `count` is 0
    or not below their number): a held-out file's kinds keep their shares."""
    if count <= 0 or len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def logprob_rows_for(policy: Policy, rows: int) -> int:
    """The held-out rows to measure fidelity and KL on: `rows`, or every one (0) when `policy` reads them."""
    return 0 if policy.reads_logprobs() else rows


def fidelity_metric(current: Student, new: Student, revisions: Sequence[Any]) -> dict[str, Any] | None:
    if not revisions:
        return None
    cur, nxt = per_example_nll(current, revisions), per_example_nll(new, revisions)
    return {"current_nll": sum(cur) / len(cur), "new_nll": sum(nxt) / len(nxt),
            "delta": bootstrap_ci([c - n for c, n in zip(cur, nxt)])}


def mean_kl(current: Student, new: Student, examples: Sequence[Any], batch_size: int = 8) -> float | None:
    """Mean per-token KL(current || new) over the completion positions of `examples`."""
    import torch

    from distill.training.examples import by_length, completion_logits, encode, summed_kl

    encoded = [encode(e, current) for e in examples]
    total, count = 0.0, 0
    with torch.inference_mode():
        for rows in by_length(encoded, batch_size):
            batch = [encoded[i] for i in rows]
            cur_logits, new_logits = (completion_logits(s, batch)[0] for s in (current, new))
            total += float(summed_kl(cur_logits, new_logits))
            count += cur_logits.shape[0]
    return total / count if count else None


def forgetting_metric(current: Student, new: Student, replay: Sequence[Any],
                      own_answers: Sequence[Any]) -> dict[str, Any]:
    from distill.training.examples import completion_nll

    out: dict[str, Any] = {}
    if replay:
        cur, nxt = completion_nll(current, replay), completion_nll(new, replay)
        out.update(current_nll=cur, new_nll=nxt, nll_increase=nxt / cur - 1 if cur > 0 else 0.0)
    if own_answers:
        out.update(kl=mean_kl(current, new, own_answers), kl_rows=len(own_answers))
    return out


def evaluate(current: Student, new: Student, prompts: Sequence[Prompt], *, teacher: Teacher | None = None,
             prompt_set: PromptSet | None = None, revisions: Sequence[Any] = (), replay: Sequence[Any] = (),
             max_new_tokens: int = default_of(RoundsConfig, "eval_max_new_tokens"),
             teacher_identity: Mapping[str, Any] | None = None,
             served: tuple[ServedStudent, ServedStudent] | None = None,
             general: Sequence[Prompt] = (), batch_size: int = ANSWER_BATCH,
             current_answers: Sequence[str] | None = None, logprob_rows: int = 0) -> Evaluation:
    """Compare `new` against `current` on held-out `prompts` (see the module docstring). A
    `teacher` opened by `distill.teachers.stack.open_teacher` is closed once the judge is done.
    With `served` (the current and the new student as a server serves them, `--engine server`)
    the held-out answers come from the server; the log-probabilities are the local models'.
    `current_answers`: the current student's greedy answers to `prompts` where the caller has them
    (`max_new_tokens` long at most), instead of generating them again. `logprob_rows`: how many held-out
    rows (`spread`) fidelity and KL are measured on, 0 for all."""
    from distill.training.examples import Example

    result = Evaluation()
    cur_answerer, new_answerer = served if served is not None else (current, new)
    cur_answers = (list(current_answers) if current_answers is not None
                   else answers_of(cur_answerer, prompts, max_new_tokens, batch_size))
    new_answers = answers_of(new_answerer, prompts, max_new_tokens, batch_size)
    passed = check_results(prompts, cur_answers, new_answers)
    checks = checks_metric(passed)
    if checks:
        result.metrics["checks"] = checks
        by_kind = checks_by_kind(prompts, passed)
        if by_kind:
            checks["by_kind"] = by_kind
    scores: list[float | None] = [None] * len(prompts)
    if teacher is not None and prompt_set is not None:
        scores = asyncio.run(_judge(teacher, prompt_set, prompts, cur_answers, new_answers))
        judged = judge_metric(scores)
        if judged:
            result.metrics["judge"] = judged
        if teacher_identity is not None and dict(teacher.identity()) == dict(teacher_identity):
            result.warnings.append("the judge is the same model as the teacher that wrote the training data: "
                                   "its preferences are what the student was trained to please")
    fidelity = fidelity_metric(current, new, spread(revisions, logprob_rows))
    if fidelity:
        result.metrics["fidelity"] = fidelity
    own = [Example(id=p.id, prompt=tuple(p.messages), completion=a) for p, a in zip(prompts, cur_answers)]
    result.metrics["forgetting"] = forgetting_metric(current, new, replay, spread(own, logprob_rows))
    kept, result.general_rows = general_metric(cur_answerer, new_answerer, general, max_new_tokens, batch_size)
    if kept:
        result.metrics["general"] = kept
    for p, c, n, s, pass_pair in zip(prompts, cur_answers, new_answers, scores, passed):
        row: dict[str, Any] = {"prompt_id": p.id, "prompt": p.text, "current": c, "new": n, "judge": s}
        if pass_pair is not None:
            row["current_passed"], row["new_passed"] = pass_pair
        result.rows.append(row)
    return result

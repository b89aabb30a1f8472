"""On-policy distillation (GKD-style): the student samples, the teacher scores the student's tokens.

`train_on_policy()` fits a LoRA adapter to prompts alone. Each step the student, with its current
adapter, samples an answer to each of the step's prompts (temperature `onpolicy_temperature`, no
gradient through sampling); the teacher scores every sampled token's position (its next-token
log-probs: the full vocabulary from a local model, its top-k from a server, with the remaining
mass as one tail bucket); the loss is the per-token divergence of the student from the teacher on
those positions, averaged over the step's answer tokens:

    rkl  KL(student || teacher), the reverse KL of on-policy distillation (mode-seeking: the
         student is pushed off tokens the teacher finds unlikely);
    jsd  GKD's generalized Jensen-Shannon divergence with `jsd_beta` b:
         b KL(T || M) + (1 - b) KL(S || M), M = b T + (1 - b) S.

With top-k scores both distributions are compared on k + 1 buckets: the teacher's k candidates
and "everything else" (the student's mass off those k tokens goes to the tail). Training on the
student's own samples is what on-policy distillation is for: the student learns from the states it
actually reaches, rather than from teacher text it would never write (Agarwal et al., 2023).

Teacher and student must share one tokenizer (`distill.teachers.scoring.check_vocabulary`; a
teacher with another vocabulary is refused before anything trains). Teacher scores are cached
like every teacher call (top-k scores in the teacher-call cache; see `distill.teachers.scoring`).

Why it is built this way:

- The run machinery (accelerate, the LoRA, the optimizer and schedule, checkpoints every
  `save_every` steps and resume, replay mixing, the loss log, saving the adapter and
  training.json) is `distill.training.run`, shared with SFT, DPO and KTO. The items of an epoch are
  the prompts (plus replay answers, each adding its mean token NLL, like DPO's replay); sampling
  is seeded by (seed, step, process), so a resumed run samples what the unbroken run would have.
- A hand loop, not TRL's GKDTrainer. GKDTrainer (TRL docs, `GKDTrainer(model, teacher_model, ...)`
  with `lmbda`, `beta`, `seq_kd`) takes the teacher as a model in the same process and runs its
  forward pass inside `compute_loss`: there is no seam for a teacher behind an API that returns
  top-k log-probs, no teacher-call cache and no tail bucket; adopting it would need both paths
  anyway. Its speed against this loop was not measured (the decision does not rest on speed);
  like DPO and SFT here, this loop projects onto the vocabulary only at answer positions.

The options (onpolicy_loss, jsd_beta, onpolicy_temperature, onpolicy_max_new_tokens,
onpolicy_top_k) are `distill.training.config.TrainConfig`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from distill.errors import ConfigError, InputError
from distill.records.ids import content_hash
from distill.records.prompts import Prompt
from distill.student.model import Student
from distill.teachers.scoring import TokenScores, Vocabulary, check_vocabulary
from distill.training.config import TrainConfig
from distill.training.examples import IGNORE, Encoded, Example, collate, encode_all, head_logits
from distill.training.lora import add_lora, linear_layer_names
from distill.training.run import (Session, TrainResult, check_can_start, finish, loop, open_session, optimizer_step,
                                  plan, prepare_run, replay_answers, run_summary, timing)


# ---------------------------------------------------------------- losses

def log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x <= 0, clamped away from log(0)."""
    import torch

    return torch.log((-torch.expm1(x.clamp(max=0))).clamp(min=1e-12))


def student_buckets(logps: Any, ids: Any) -> Any:
    """The student's log-probs ([positions, vocabulary]) on k + 1 buckets: the k `ids` per position
    ([positions, k]) and the tail (all other tokens)."""
    import torch

    top = logps.gather(-1, ids)
    return torch.cat([top, log1mexp(torch.logsumexp(top, dim=-1)).unsqueeze(-1)], dim=-1)


def teacher_buckets(top_logps: Any) -> Any:
    """The teacher's top-k log-probs ([positions, k]) plus the tail bucket; renormalised where a
    server's rounding makes the k probabilities sum above 1."""
    import torch

    total = torch.logsumexp(top_logps, dim=-1, keepdim=True)
    top = top_logps - total.clamp(min=0)
    return torch.cat([top, log1mexp(torch.logsumexp(top, dim=-1)).unsqueeze(-1)], dim=-1)


def divergence(student: Any, teacher: Any, loss: str = "rkl", beta: float = 0.5) -> Any:
    """Per-position divergence of two log-distributions over the same buckets ([positions, buckets]):
    rkl = KL(student || teacher); jsd = b KL(T || M) + (1 - b) KL(S || M), M = b T + (1 - b) S."""
    import torch

    if loss == "rkl":
        return (student.exp() * (student - teacher)).sum(-1)
    if loss == "jsd":
        mix = torch.logaddexp(teacher + math.log(beta), student + math.log(1 - beta))
        return beta * (teacher.exp() * (teacher - mix)).sum(-1) + (1 - beta) * (student.exp() * (student - mix)).sum(-1)
    raise ConfigError(f"training option onpolicy_loss: expected rkl or jsd, got {loss!r}")


def token_losses(student_logits: Any, scores: TokenScores, loss: str, beta: float) -> Any:
    """The divergence at each answer position of one row, from the student's logits ([positions,
    vocabulary]) and the teacher's scores (full vocabulary or top-k)."""
    import torch

    logps = torch.log_softmax(student_logits.float(), dim=-1)
    if scores.full is not None:
        return divergence(logps, scores.full.to(logps.device, torch.float32), loss, beta)
    width = min(len(r) for r in scores.ids)
    ids = torch.tensor([list(r[:width]) for r in scores.ids], device=logps.device)
    top = torch.tensor([list(r[:width]) for r in scores.logprobs], device=logps.device, dtype=torch.float32)
    return divergence(student_buckets(logps, ids), teacher_buckets(top), loss, beta)


# ---------------------------------------------------------------- the data

@dataclass(frozen=True)
class PromptItem:
    """A prompt as the student's generation prompt in tokens (what it samples from)."""

    id: str
    input_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_prompts(prompts: Sequence[Prompt], student: Student, limit: int) -> tuple[list[PromptItem], list[str]]:
    """Each prompt rendered with the student's chat template, as tokens; those over `limit` dropped."""
    kept, dropped = [], []
    for prompt in prompts:
        ids = tuple(student.tokenizer(student.render(prompt.messages), add_special_tokens=False)["input_ids"])
        (kept.append(PromptItem(prompt.id, ids)) if len(ids) <= limit else dropped.append(prompt.id))
    return kept, dropped


# ---------------------------------------------------------------- the run

def train_on_policy(prompts: Sequence[Prompt], output_dir: str | os.PathLike[str], scorer: Any,
                    config: TrainConfig | None = None, *, student: str | os.PathLike[str] | None = None,
                    replay: Sequence[Example] = (), replay_prompts: Sequence[Prompt] = (),
                    data_info: Mapping[str, Any] | None = None, restart: bool = False,
                    on_step: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> TrainResult:
    """Train a LoRA adapter on `prompts` by on-policy distillation from `scorer` (a
    `distill.teachers.scoring.Scorer`, usually `open_scorer(settings)`); resumes from its
    checkpoints. The other arguments are `distill.training.sft.train`'s."""
    config = dataclasses.replace(config or TrainConfig(), method="on-policy")
    output_dir = Path(output_dir)
    check_can_start(len(prompts), output_dir, restart, what="prompts")
    accelerator, precision, base = prepare_run(config, output_dir, restart, student)
    teacher_vocab = scorer.vocabulary(base.tokenizer)
    teacher = scorer.identity()
    check_vocabulary(base.identity.name, Vocabulary.of(base.tokenizer),
                     f"{teacher.get('backend')}:{teacher.get('model')}", teacher_vocab)
    if config.onpolicy_top_k == 0 and not scorer.full_vocabulary:
        raise ConfigError(f"teacher {teacher.get('backend')}:{teacher.get('model')} gives only top-k log-probs: "
                          "pass --onpolicy-top-k K (e.g. 20)")
    limit = min(config.max_length, base.context_window) - config.onpolicy_max_new_tokens
    items, dropped = encode_prompts(prompts, base, limit)
    if not items:
        raise InputError(f"all {len(prompts)} prompts are longer than max_length - onpolicy_max_new_tokens = {limit} "
                         "tokens; raise --max-length or shorten them")
    replay = list(replay) + replay_answers(base, replay_prompts, output_dir, accelerator)
    replay_set, _ = encode_all(replay, base, min(config.max_length, base.context_window))
    targets = tuple(config.target_modules or linear_layer_names(base.model))
    model = add_lora(base.model, config, targets)
    fingerprint = content_hash({"config": config.run_key(), "base": base.identity.weights_sha256,
                                "teacher": dict(teacher), "processes": accelerator.num_processes,
                                "prompts": [(p.id, p.input_ids) for p in items],
                                "replay": [(e.id, e.input_ids, e.labels) for e in replay_set]}, length=32)
    session = open_session(model, targets, config, output_dir, accelerator, _logits_module(model),
                           plan(len(items), len(replay_set), config, accelerator.num_processes),
                           fingerprint, base.tokenizer.pad_token_id)
    start = session.resume()
    eos = tuple(base.eos_ids)
    totals = loop(session, items, replay_set, start, lambda s, b: _step(s, b, scorer, eos), on_step, progress)
    teacher_cost = {"scored_answer_tokens": getattr(scorer, "scored_tokens", None),
                    "cache_hits": getattr(scorer, "hits", None), "cache_misses": getattr(scorer, "misses", None)}
    summary = {**run_summary(session, base, totals, start, precision), "method": "on-policy",
               "teacher": dict(teacher), "teacher_scoring": teacher_cost,
               "data": {**dict(data_info or {}), "prompts": len(prompts), "trained": len(items),
                        "dropped_over_length": len(dropped)},
               "replay": {"available": len(replay_set)}}
    finish(session, summary)
    return TrainResult(output_dir=output_dir, steps=session.plan.total_steps, resumed_from=start,
                       final_loss=summary["final_loss"], examples=len(items), replay_examples=len(replay_set),
                       dropped=dropped, tokens_per_s=summary["throughput"]["tokens_per_s"], summary=summary,
                       model=session.model.eval())


def _logits_module(peft_model: Any) -> Any:
    """An nn.Module returning the logits at the picked positions (what DDP wraps)."""
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = peft_model

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
            picked = labels[:, 1:] != IGNORE
            return head_logits(self.model, input_ids, attention_mask, picked).float(), picked

    return _Logits()


def sample_answers(session: Session, prompts: Sequence[PromptItem], eos: Sequence[int]) -> list[list[int]]:
    """The student's answers (token ids, end-of-turn token included when it stopped) under its
    current adapter; seeded by (seed, step, process)."""
    import torch
    from transformers import GenerationConfig

    if not prompts:
        return []
    config, model = session.config, session.model
    step = int(session.scheduler.last_epoch)
    torch.manual_seed(int(content_hash([config.seed, step, session.accelerator.process_index]), 16) % 2**63)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), session.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding, as generation wants
        ids[row, width - len(p):] = torch.tensor(p.input_ids)
        mask[row, width - len(p):] = 1
    generation = GenerationConfig(max_new_tokens=config.onpolicy_max_new_tokens, do_sample=True,
                                  temperature=config.onpolicy_temperature, top_p=None, top_k=None,
                                  pad_token_id=session.pad_id, eos_token_id=list(eos))
    model.eval()
    try:
        with torch.no_grad(), session.accelerator.autocast():
            out = model.generate(input_ids=ids.to(session.accelerator.device),
                                 attention_mask=mask.to(session.accelerator.device), generation_config=generation)
    finally:
        model.train()
    answers = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        answers.append(row if stop is None else row[:stop + 1])
    return answers


def _step(session: Session, batches: list[list[Any]], scorer: Any, eos: Sequence[int]) -> dict[str, Any]:
    """One optimizer step: sample, score, and descend on the mean per-token divergence (plus replay NLL)."""
    import torch
    import torch.nn.functional as F

    config, accelerator = session.config, session.accelerator
    started, cpu_started = time.perf_counter(), time.process_time()
    items = [x for batch in batches for x in batch]
    prompts = [x for x in items if isinstance(x, PromptItem)]
    replay = [x for x in items if isinstance(x, Encoded)]
    answers = sample_answers(session, prompts, eos)
    scores = scorer.score([(p.input_ids, a) for p, a in zip(prompts, answers)], config.onpolicy_top_k)
    rows = [Encoded(id=p.id, input_ids=p.input_ids + tuple(a), labels=(IGNORE,) * len(p) + tuple(a), source="onpolicy")
            for p, a in zip(prompts, answers)]
    answer_tokens = sum(len(a) for a in answers)
    n_replay = len(replay)
    sums = torch.zeros(4, device=accelerator.device)  # divergence, answer tokens, replay nll, all tokens
    pieces = [[*rows], [*replay]] if replay else [rows]
    pieces = [p for p in pieces if p]
    for i, piece in enumerate(pieces):
        tensors = {k: v.to(accelerator.device) for k, v in collate(piece, session.pad_id).items()}
        with nullcontext() if i == len(pieces) - 1 else accelerator.no_sync(session.loss_module):
            with accelerator.autocast():
                logits, picked = session.loss_module(**tensors)
            counts = picked.sum(dim=1).tolist()
            if piece[0].source == "onpolicy":
                per_row = logits.split(counts)
                div = sum(token_losses(lg, sc, config.onpolicy_loss, config.jsd_beta).sum()
                          for lg, sc in zip(per_row, scores))
                loss = div / max(answer_tokens, 1)
                sums[0] += div.detach()
            else:
                targets = tensors["labels"][:, 1:][picked]
                nll = F.cross_entropy(logits, targets, reduction="none")
                per_row = torch.stack([part.mean() for part in nll.split(counts)])
                loss = per_row.sum() / max(len(prompts), 1)  # each replay answer weighs as one prompt's mean
                sums[2] += per_row.detach().sum()
            accelerator.backward(loss)
        sums[3] += float(tensors["attention_mask"].sum())
    sums[1] += answer_tokens
    stepped = optimizer_step(session)
    div, tokens, replay_nll, all_tokens = accelerator.reduce(sums, reduction="sum").tolist()
    row = {"loss": round(div / max(tokens, 1), 6), "answer_tokens": int(tokens),
           "mean_answer_tokens": round(tokens / max(len(prompts), 1), 2),
           **timing(all_tokens, started, cpu_started), **stepped}
    if n_replay:
        row.update(replay_nll=round(replay_nll / n_replay, 6), replay=n_replay)
    return row

"""Preference training: DPO on prefs.jsonl's pairs, KTO on answers labelled desirable or undesirable.

`train_preferences()` fits a LoRA adapter so that the student prefers the chosen answers (DPO; the
sigmoid loss of the DPO paper, IPO, or a length-normalised DPO) or raises the desirable answers
and lowers the undesirable ones (KTO, with the paper's KL estimate from mismatched pairs and its
class-balance weights, `kto_weights`). It writes what `sft.train` writes, in the same layout: the
adapter, training.json (with the reward statistics) and loss.jsonl, one row per step with the loss,
the chosen and rejected rewards (beta * log(policy / reference), summed over the answer's tokens),
their margin and the accuracy (share of pairs whose chosen reward is higher); for KTO the KL estimate
and the desirable and undesirable rewards.

Why it is built this way:

- The policy starts from the run's SFT adapter (`init_adapter`, trained further) or from a fresh
  LoRA on the base. The reference policy is that starting point. Its log-probabilities are
  computed once, before the first step, in one no-grad pass over the data, and kept with each
  example: a fresh LoRA starts as the base exactly (its B matrices are zero), and an SFT adapter is
  its own starting point, so one mechanism covers both, no second copy of the weights is held,
  and every later step runs one forward pass per answer instead of two (the policy and, with the
  adapter disabled, the reference). A resumed run recomputes them from the starting weights before
  loading its checkpoint, so they are the same numbers.
- Rendering and labels are SFT's (`distill.training.examples.encode`): loss on the answer's tokens
  only, end-of-turn token included; a pair with an answer over `max_length` is dropped and counted.
- The run itself (accelerate devices and precision, multi-process DDP, the step loop and data
  order, checkpoints every `save_every` steps and resume after Ctrl-C or kill -9, replay mixing,
  the loss log, saving) is `distill.training.run`, shared with SFT. Replay examples mixed into a
  batch add their mean token NLL to the loss, with the weight of one pair each: the policy keeps
  its general answers while it learns the preference.
- A hand loop on accelerate + PEFT, not TRL's DPOTrainer/KTOTrainer, for a measured reason
  (`bench/preference.py`, SmolLM2-135M, float32, LoRA r=16 on every linear layer, batch 4, 10 steps
  over 40 pairs, tokens per CPU-second, OMP_NUM_THREADS=2 on a machine shared with other jobs):

      | config (one run each, see below)           | steps: tok/CPU-s | distill / it | end to end: tok/CPU-s | distill / it |
      |--------------------------------------------|------------------|--------------|-----------------------|--------------|
      | this loop                                  | 28.8             | 1.00x        | 22.0                  | 1.00x        |
      | TRL DPOTrainer (reference run every step)  | 13.9             | 2.07x        | 13.8                  | 1.59x        |
      | TRL DPOTrainer, precompute_ref_log_probs   | 18.2             | 1.58x        | 14.0                  | 1.57x        |

  TRL runs and learns at these settings (final loss 0.2505 for both TRL modes, 0.2726 here:
  its schedule is linear without warm-up, this one cosine after 10% warm-up), but it was 1.6-2.1x
  slower per CPU-second, above the 1.5x the issue allows, so the hand loop stays. Caveats: the
  2-core machine was shared with other jobs (load average 5-7 throughout), so these are rough:
  only one run of each mode finished in the time there was (the bench's default median of 3 was
  cut short), and the precomputed mode's 1.57-1.58x is close to the threshold. KTOTrainer was not
  measured; KTO runs on the same loop. "end to end" includes loading, tokenization and the
  reference pass; "steps" the optimizer steps alone. From TRL's source (not profiled here): by
  default it runs a second forward pass per step with the adapter disabled for the reference, and
  its fused output head computes log-probs at every position of each row, prompt and padding
  included, where this loop projects onto the vocabulary only at answer positions.

The options (method, beta, loss_type, desirable_weight, undesirable_weight and the rest) are
`distill.training.config.TrainConfig`; the data is `distill.training.pairs`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from distill.errors import ConfigError, InputError
from distill.records.ids import content_hash
from distill.records.jsonl import MAX_REPORTED_ERRORS
from distill.records.prompts import Prompt
from distill.student.model import Student, model_identity, weights_sha256
from distill.training.batching import replay_count, split_by_tokens
from distill.training.config import TrainConfig
from distill.training.examples import Encoded, Example, collate, encode_all
from distill.training.lora import add_lora, linear_layer_names, sequence_logps_module
from distill.training.pairs import (EncodedLabelled, EncodedPair, Item, Labelled, Pair, encode_labelled,
                                    encode_pairs, with_reference)
from distill.training.run import (Session, TrainResult, check_can_start, finish, loop, open_session, optimizer_step,
                                  plan, prepare_run, replay_answers, run_summary, timing)

KTO_BALANCE = (1.0, 4 / 3)  # the KTO paper's range for desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
# the sums a step reduces over processes, by name (one tensor, one all-reduce)
_SUMS = ("loss", "items", "chosen_reward", "rejected_reward", "correct", "desirable", "undesirable",
         "desirable_reward", "undesirable_reward", "replay_nll", "replay", "tokens")


# ---------------------------------------------------------------- losses

def dpo_losses(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, chosen_tokens: Any,
               rejected_tokens: Any, beta: float, loss_type: str = "sigmoid") -> tuple[Any, Any, Any]:
    """Per-pair DPO losses and the chosen and rejected rewards, from summed answer log-probs ([pairs] each).

    sigmoid: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)) (the DPO paper);
    ipo: (delta - 1 / (2 beta))^2 with delta the difference of per-token averaged log-ratios (the IPO
    paper's loss as its authors and TRL compute it); sigmoid_norm: DPO on per-token averaged log-ratios.
    The rewards are beta * log-ratio (summed over tokens) whatever the loss, detached.
    """
    import torch.nn.functional as F

    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type in ("ipo", "sigmoid_norm"):
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * delta)
    else:
        raise ConfigError(f"training option loss_type: expected sigmoid, ipo or sigmoid_norm, got {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def kto_losses(logps: Any, ref_logps: Any, desirable: Any, kl: Any, beta: float, desirable_weight: float,
               undesirable_weight: float) -> tuple[Any, Any]:
    """Per-example KTO losses (weighted) and rewards (beta * log-ratio, detached).

    Desirable: w_D * (1 - sigmoid(beta * (log-ratio - KL))); undesirable: w_U * (1 - sigmoid(beta *
    (KL - log-ratio))), KL being the batch's (detached, clamped at 0) estimate of KL(policy || reference).
    """
    import torch

    ratio = logps - ref_logps
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    return losses, beta * ratio.detach()


def kto_weights(n_desirable: int, n_undesirable: int, desirable: float | None = None,
                undesirable: float | None = None) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with desirable_weight * n_desirable / (undesirable_weight *
    n_undesirable) in [1, 4/3], the KTO paper's range; a weight given is kept and the other is set
    from the counts (with neither, undesirable_weight is 1, as the paper does); both given, both kept."""
    if (desirable is not None and undesirable is not None) or not n_desirable or not n_undesirable:
        return (1.0 if desirable is None else desirable), (1.0 if undesirable is None else undesirable)
    low, high = KTO_BALANCE
    if desirable is None:
        ratio = n_desirable / ((1.0 if undesirable is None else undesirable) * n_undesirable)
        return (1.0 if low <= ratio <= high else min(max(ratio, low), high) / ratio), \
            (1.0 if undesirable is None else undesirable)
    ratio = desirable * n_desirable / n_undesirable
    return desirable, 1.0 if low <= ratio <= high else ratio / min(max(ratio, low), high)


# ---------------------------------------------------------------- the run

@dataclasses.dataclass
class _Data:
    """A run's items (pairs or labelled answers) and replay examples as tokens, and what was dropped."""

    train: list[Item]
    replay: list[Encoded]
    dropped: list[str]
    replay_dropped: list[str]
    weights: tuple[float, float] = (1.0, 1.0)  # KTO's desirable and undesirable weights


def train_preferences(rows: Sequence[Pair] | Sequence[Labelled], output_dir: str | os.PathLike[str],
                      config: TrainConfig | None = None, *, method: str | None = None,
                      student: str | os.PathLike[str] | None = None,
                      init_adapter: str | os.PathLike[str] | None = None, replay: Sequence[Example] = (),
                      replay_prompts: Sequence[Prompt] = (), data_info: Mapping[str, Any] | None = None,
                      restart: bool = False, on_step: Callable[[dict[str, Any]], None] | None = None,
                      progress: bool = False) -> TrainResult:
    """Train a LoRA adapter by DPO on `rows` (pairs) or KTO (labelled answers, or pairs split into
    them) into `output_dir`; resumes from its checkpoints. `method` ("dpo" or "kto") overrides
    `config.method`. `init_adapter` is the adapter to start from (and the reference); None = a fresh
    LoRA on the base. The other arguments are `distill.training.sft.train`'s."""
    config = config or TrainConfig(method=method or "dpo")
    if method is not None:
        config = dataclasses.replace(config, method=method)
    if config.method not in ("dpo", "kto"):
        raise ConfigError(f"training option method={config.method!r}: train_preferences runs dpo or kto")
    output_dir = Path(output_dir)
    check_can_start(len(rows), output_dir, restart, what="preference pairs" if config.method == "dpo" else
                    "labelled answers")
    accelerator, precision, base = prepare_run(config, output_dir, restart, student)
    replay = list(replay) + replay_answers(base, replay_prompts, output_dir, accelerator)
    data = _encode_data(base, rows, replay, config)
    model, targets, adapter = _policy(base, config, student, init_adapter)
    fingerprint = content_hash({"config": config.run_key(), "base": base.identity.weights_sha256,
                                "init_adapter": adapter.get("sha256"), "processes": accelerator.num_processes,
                                "train": [(i.id, *[(r.input_ids, r.labels) for r in i.rows],
                                           getattr(i, "desirable", None)) for i in data.train],
                                "replay": [(e.id, e.input_ids, e.labels) for e in data.replay]}, length=32)
    session = open_session(model, targets, config, output_dir, accelerator, sequence_logps_module(model),
                           plan(len(data.train), len(data.replay), config, accelerator.num_processes),
                           fingerprint, base.tokenizer.pad_token_id)
    data.train = _with_references(session, data.train)  # the starting policy's, before any checkpoint loads
    start = session.resume()
    step = _kto_step if config.method == "kto" else _dpo_step
    totals = loop(session, data.train, data.replay, start, lambda s, b: step(s, b, data.weights), on_step, progress)
    summary = {**run_summary(session, base, totals, start, precision),
               **_data_summary(data, config, data_info), "method": config.method, "init_adapter": adapter,
               "reference": "the starting policy (init_adapter, else the base): log-probs computed once before "
                            "training", "last_step": _last_metrics(totals.last_row)}
    finish(session, summary)
    return TrainResult(output_dir=output_dir, steps=session.plan.total_steps, resumed_from=start,
                       final_loss=summary["final_loss"], examples=len(data.train), replay_examples=len(data.replay),
                       dropped=data.dropped, tokens_per_s=summary["throughput"]["tokens_per_s"], summary=summary,
                       model=session.model.eval())


def _encode_data(base: Student, rows: Sequence[Pair] | Sequence[Labelled], replay: Sequence[Example],
                 config: TrainConfig) -> _Data:
    from distill.training.pairs import pairs_as_labelled

    limit = min(config.max_length, base.context_window)
    replay_set, replay_dropped = encode_all(replay, base, limit)
    if config.method == "dpo":
        if not all(isinstance(r, Pair) for r in rows):
            raise InputError("method dpo needs preference pairs (prompt, chosen, rejected); labelled answers "
                             "without a partner train with --method kto")
        items, dropped = encode_pairs(rows, base, limit)  # type: ignore[arg-type]
        weights = (1.0, 1.0)
    else:
        labelled = [x for r in rows for x in (pairs_as_labelled([r]) if isinstance(r, Pair) else [r])]
        items, dropped = encode_labelled(labelled, base, limit)  # type: ignore[assignment]
        n_desirable = sum(i.desirable for i in items)  # type: ignore[union-attr]
        weights = kto_weights(n_desirable, len(items) - n_desirable, config.desirable_weight,
                              config.undesirable_weight)
    if not items:
        raise InputError(f"all {len(rows)} training rows are longer than max_length={config.max_length} tokens; "
                         "raise --max-length or shorten them")
    return _Data(train=list(items), replay=replay_set, dropped=dropped, replay_dropped=replay_dropped,
                 weights=weights)


def _policy(base: Student, config: TrainConfig, student: Any,
            init_adapter: str | os.PathLike[str] | None) -> tuple[Any, tuple[str, ...], dict[str, Any]]:
    """The model to train: the init adapter, trainable (refused if trained on other weights), or a fresh LoRA."""
    if init_adapter is None:
        targets = tuple(config.target_modules or linear_layer_names(base.model))
        return add_lora(base.model, config, targets), targets, {}
    import torch
    from peft import PeftModel

    model_identity(student, init_adapter)  # ModelError if the adapter was trained on other weights
    torch.manual_seed(config.seed)
    model = PeftModel.from_pretrained(base.model, Path(init_adapter), is_trainable=True)
    lora = model.peft_config["default"]
    return model, tuple(sorted(lora.target_modules)), {"path": str(init_adapter), "rank": lora.r,
                                                       "sha256": weights_sha256(Path(init_adapter))}


def _with_references(session: Session, items: Sequence[Item]) -> list[Item]:
    """Each item with the starting policy's log-probs of its two sequences (one no-grad pass)."""
    import torch

    accelerator, module = session.accelerator, _no_grad_module(session)
    out: list[Item] = []
    session.model.eval()
    with torch.no_grad(), accelerator.autocast():
        for piece in split_by_tokens(list(items), session.config.micro_batch_tokens):
            logps = _logps(session, module, [r for item in piece for r in item.rows])[0].tolist()
            out += [with_reference(item, (logps[2 * k], logps[2 * k + 1])) for k, item in enumerate(piece)]
    session.model.train()
    order = {item.id: k for k, item in enumerate(items)}
    return sorted(out, key=lambda item: order[item.id])


def _no_grad_module(session: Session) -> Any:
    """The loss module without its DDP wrapper, for passes without gradient: DDP's forward syncs
    buffers across processes, and these passes need not run as often on every process."""
    return session.accelerator.unwrap_model(session.loss_module)


def _logps(session: Session, module: Any, rows: Sequence[Encoded]) -> tuple[Any, Any, int]:
    """(summed log-probs, labelled tokens, all tokens) of `rows` under the module's current weights."""
    tensors = {k: v.to(session.accelerator.device) for k, v in collate(rows, session.pad_id).items()}
    logps, counts = module(**tensors)
    return logps, counts, int(tensors["attention_mask"].sum())


def _dpo_step(session: Session, batches: list[list[Any]], weights: tuple[float, float]) -> dict[str, Any]:
    """One optimizer step of DPO (with replay) over `batches`; returns the loss-log fields."""
    import torch

    def piece_loss(piece: list[Any], sums: dict[str, Any]) -> Any:
        pairs = [x for x in piece if isinstance(x, EncodedPair)]
        rows = [r for p in pairs for r in p.rows] + [x for x in piece if isinstance(x, Encoded)]
        logps, counts, sums["tokens"] = _logps(session, session.loss_module, rows)
        loss = _replay_nll(logps[2 * len(pairs):], counts[2 * len(pairs):], sums)
        if pairs:
            ref = torch.tensor([p.ref for p in pairs], device=logps.device)
            losses, chosen, rejected = dpo_losses(logps[0:2 * len(pairs):2], logps[1:2 * len(pairs):2], ref[:, 0],
                                                  ref[:, 1], counts[0:2 * len(pairs):2], counts[1:2 * len(pairs):2],
                                                  session.config.beta, session.config.loss_type)
            loss = loss + losses.sum()
            sums.update(loss=sums["loss"] + losses.detach().sum(), items=len(pairs), chosen_reward=chosen.sum(),
                        rejected_reward=rejected.sum(), correct=(chosen > rejected).sum())
        return loss

    s = _step(session, batches, piece_loss)
    n = max(s["items"], 1)
    return {"loss": round(s["loss"] / n, 6), "chosen_reward": round(s["chosen_reward"] / n, 6),
            "rejected_reward": round(s["rejected_reward"] / n, 6),
            "margin": round((s["chosen_reward"] - s["rejected_reward"]) / n, 6),
            "accuracy": round(s["correct"] / n, 4), "pairs": int(s["items"]), **_replay_fields(s), **s["extra"]}


def _kto_step(session: Session, batches: list[list[Any]], weights: tuple[float, float]) -> dict[str, Any]:
    """One optimizer step of KTO (with replay) over `batches`; returns the loss-log fields."""
    import torch

    kl = _kl_estimate(session, [x for b in batches for x in b if isinstance(x, EncodedLabelled)])

    def piece_loss(piece: list[Any], sums: dict[str, Any]) -> Any:
        items = [x for x in piece if isinstance(x, EncodedLabelled)]
        rows = [i.answer for i in items] + [x for x in piece if isinstance(x, Encoded)]
        logps, counts, sums["tokens"] = _logps(session, session.loss_module, rows)
        loss = _replay_nll(logps[len(items):], counts[len(items):], sums)
        if items:
            desirable = torch.tensor([i.desirable for i in items], device=logps.device)
            ref = torch.tensor([i.ref[0] for i in items], device=logps.device)  # type: ignore[index]
            losses, rewards = kto_losses(logps[:len(items)], ref, desirable, kl, session.config.beta, *weights)
            loss = loss + losses.sum()
            sums.update(loss=sums["loss"] + losses.detach().sum(), items=len(items), desirable=desirable.sum(),
                        undesirable=(~desirable).sum(), desirable_reward=rewards[desirable].sum(),
                        undesirable_reward=rewards[~desirable].sum())
        return loss

    s = _step(session, batches, piece_loss)
    return {"loss": round(s["loss"] / max(s["items"], 1), 6), "kl": round(float(kl), 6),
            "desirable_reward": round(s["desirable_reward"] / max(s["desirable"], 1), 6),
            "undesirable_reward": round(s["undesirable_reward"] / max(s["undesirable"], 1), 6),
            "desirable": int(s["desirable"]), "undesirable": int(s["undesirable"]), **_replay_fields(s), **s["extra"]}


def _kl_estimate(session: Session, items: Sequence[EncodedLabelled]) -> Any:
    """The KTO paper's KL(policy || reference) estimate: the mean log-ratio of the step's mismatched
    (prompt, other answer) companions over all processes, clamped at 0, without gradient."""
    import torch

    accelerator, module = session.accelerator, _no_grad_module(session)
    total = torch.zeros(2, device=accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        for piece in split_by_tokens(list(items), session.config.micro_batch_tokens):
            logps = _logps(session, module, [i.companion for i in piece])[0]
            ref = torch.tensor([i.ref[1] for i in piece], device=logps.device)  # type: ignore[index]
            total += torch.stack([(logps - ref).sum(), logps.new_tensor(len(piece))])
    total = accelerator.reduce(total, reduction="sum")
    return (total[0] / total[1].clamp(min=1)).clamp(min=0)


def _replay_nll(logps: Any, counts: Any, sums: dict[str, Any]) -> Any:
    """The replay rows' mean token NLL each, summed (one pair's weight per row)."""
    nll = (-logps / counts.clamp(min=1)).sum()
    sums.update(replay_nll=nll.detach(), replay=len(counts))
    return nll


def _replay_fields(s: dict[str, float]) -> dict[str, Any]:
    return {"replay_nll": round(s["replay_nll"] / s["replay"], 6), "replay": int(s["replay"])} if s["replay"] else {}


def _step(session: Session, batches: list[list[Any]],
          piece_loss: Callable[[list[Any], dict[str, Any]], Any]) -> dict[str, Any]:
    """Forward and backward over every piece of the step (gradient accumulation: the loss is the mean
    over the step's items, however they are cut), one optimizer step; the summed statistics."""
    import torch

    accelerator = session.accelerator
    started, cpu_started = time.perf_counter(), time.process_time()
    pieces = [piece for batch in batches for piece in split_by_tokens(batch, session.config.micro_batch_tokens)]
    n_items = sum(len(piece) for piece in pieces)
    totals = torch.zeros(len(_SUMS), device=accelerator.device)
    for i, piece in enumerate(pieces):
        sums: dict[str, Any] = dict.fromkeys(_SUMS, 0)
        with nullcontext() if i == len(pieces) - 1 else accelerator.no_sync(session.loss_module):
            accelerator.backward(piece_loss(piece, sums) / n_items)
        totals += torch.tensor([float(sums[k]) for k in _SUMS], device=accelerator.device)
    stepped = optimizer_step(session)
    reduced = dict(zip(_SUMS, accelerator.reduce(totals, reduction="sum").tolist()))
    reduced["extra"] = {**stepped, **timing(reduced["tokens"], started, cpu_started)}
    return reduced


def _data_summary(data: _Data, config: TrainConfig, data_info: Mapping[str, Any] | None) -> dict[str, Any]:
    info: dict[str, Any] = {**dict(data_info or {}), "rows": len(data.train) + len(data.dropped),
                            "trained": len(data.train), "dropped_over_length": len(data.dropped),
                            "dropped_ids": data.dropped[:MAX_REPORTED_ERRORS]}
    if config.method == "kto":
        n_desirable = sum(i.desirable for i in data.train if isinstance(i, EncodedLabelled))
        info.update(desirable=n_desirable, undesirable=len(data.train) - n_desirable,
                    desirable_weight=data.weights[0], undesirable_weight=data.weights[1])
    return {"data": info,
            "replay": {"examples": len(data.replay) + len(data.replay_dropped), "available": len(data.replay),
                       "dropped_over_length": len(data.replay_dropped),
                       "per_epoch": replay_count(len(data.train), len(data.replay), config.replay_fraction)}}


def _last_metrics(row: Mapping[str, Any] | None) -> dict[str, Any]:
    keep = ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy", "kl", "desirable_reward",
            "undesirable_reward", "replay_nll")
    return {k: row[k] for k in keep if row and k in row}


def preference_margins(student: Student, pairs: Sequence[Pair], batch_size: int = 8) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair under `student` (answers' tokens only, no training):
    the held-out measure of a preference."""
    import torch

    module = sequence_logps_module(student.model)
    encoded, _ = encode_pairs(pairs, student, student.context_window)
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            rows = [r for p in encoded[start:start + batch_size] for r in p.rows]
            tensors = {k: v.to(student.device) for k, v in collate(rows, student.tokenizer.pad_token_id).items()}
            logps = module(**tensors)[0].tolist()
            out += [logps[k] - logps[k + 1] for k in range(0, len(logps), 2)]
    return out

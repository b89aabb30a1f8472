"""LoRA distillation: completion-only fine-tuning of the student on verified revisions, with replay.

`train()` fits a PEFT LoRA adapter on prompt-completion chat examples (a round's `sft.jsonl`)
and writes one directory: the adapter in the layout PEFT and vLLM load (`adapter_config.json` +
`adapter_model.safetensors`), `training.json` (the config, what the data held and what was dropped,
the base model's identity, the throughput) and `loss.jsonl` (one row per optimizer step).

Why it is built this way:

- Rendering and labels come from `distill.training.examples.encode`: the student is trained on the very
  token sequence it produces when it answers, with loss on the completion only (end-of-turn
  token included), and the evaluation gate measures the same loss on held-out data.
- Over-length examples are dropped and counted (`training.json`), never truncated into rows whose
  completion is cut off or wholly masked.
- Replay. The seeds warn that training only on self-generated corrections garbles the rest of the
  model, so every epoch mixes in a fresh sample of replay examples (the student's own answers on
  general prompts, or a chat file the user gives): `replay_fraction` of each epoch. An optional
  KL-to-base penalty (`kl_weight`) keeps the completion distributions near the base model's, the
  base being the same network with the adapter switched off (no second copy in memory).
- A hand loop on accelerate + PEFT instead of TRL's SFTTrainer, for a measured reason
  (`bench/train.py`, SmolLM2-135M, 2 CPU cores): given the same settings (precision, no gradient
  checkpointing, batches grouped by length) SFTTrainer trains about half as fast. On CPU its fused
  output head scores every position of every row, prompt and padding included, recomputes the
  49k-wide vocabulary projection in the backward pass and computes entropy and accuracy over the
  whole vocabulary for its logs. This loop runs the backbone once and projects onto the
  vocabulary only at completion positions. PEFT still builds and saves the adapter, and
  accelerate still does devices, mixed precision and multi-process (DDP) training, so
  `accelerate launch --multi_gpu --num_processes N -m distill train ...` trains on N GPUs (or, with
  no GPU, N CPU processes on gloo).
- Precision: bf16 mixed precision wherever it is faster (GPUs; CPUs with AVX512-BF16 or AMX where
  a probe measures bf16 ahead, as on an EPYC where it trains 2x faster than float32 and learns the
  same, but not on a Xeon where it ran at 0.78x; see `native_bf16`), float32 elsewhere. No
  gradient checkpointing by default: a 135M model does not need the memory.
- Checkpoints (adapter, optimizer, scheduler, step) are written every `save_every` steps and on
  Ctrl-C; running the same command again resumes from the last one. A checkpoint's state file is
  read with torch's weights-only unpickler (tensors and plain containers, nothing callable), so a
  `state.pt` planted in an output directory cannot run code; one that does not load that way is
  refused before anything else is read (`distill.training.checkpoints`). Data order is a pure
  function of (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would
  have seen (`distill.training.batching`).

The options are `distill.training.config.TrainConfig`; the adapter and its loss are
`distill.training.lora`; the loss log is `distill.training.losslog`; the machinery every method
shares (devices, the step loop, checkpoints and resume, saving) is `distill.training.run`. This
module is what is SFT's own: its data, its step and what it records.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from distill.errors import ConfigError, InputError
from distill.records.ids import content_hash
from distill.records.jsonl import MAX_REPORTED_ERRORS
from distill.records.prompts import Prompt
from distill.student.model import Student
from distill.training.batching import replay_count, split_by_tokens
from distill.training.config import TrainConfig
from distill.training.examples import Encoded, Example, collate, encode_all
from distill.training.lora import add_lora, completion_loss_module, linear_layer_names
from distill.training.run import (REPLAY_FILE, TRAINING_FILE, Session, Totals, TrainResult, check_can_start, finish, loop,
                                  native_bf16, open_session, optimizer_step, plan, prepare_run, replay_answers,
                                  run_summary, timing)

__all__ = ["REPLAY_FILE", "TRAINING_FILE", "TrainResult", "native_bf16", "train"]


# ---------------------------------------------------------------- the run

@dataclass
class _Data:
    """A run's examples as tokens, and what was dropped as over-length on the way."""

    train: list[Encoded]
    replay: list[Encoded]
    dropped: list[str]
    replay_dropped: list[str]


def train(data: Sequence[Example], output_dir: str | os.PathLike[str], config: TrainConfig | None = None, *,
          student: str | os.PathLike[str] | None = None, replay: Sequence[Example] = (),
          replay_prompts: Sequence[Prompt] = (), data_info: Mapping[str, Any] | None = None,
          restart: bool = False, on_step: Callable[[dict[str, Any]], None] | None = None,
          progress: bool = False) -> TrainResult:
    """Train a LoRA adapter on `data` (+ replay) into `output_dir`; resumes from its checkpoints.

    `student` is the base model (directory or hub id; default `$DISTILL_STUDENT`, else the embedded
    SmolLM2). `replay_prompts` are answered by the base student first (kept in
    `output_dir/replay.jsonl`). `data_info` is recorded in training.json. `on_step` sees each
    loss-log row as it is written. Ctrl-C saves a checkpoint before it stops the run.
    """
    config = config or TrainConfig()
    if config.method != "sft":
        raise ConfigError(f"training option method={config.method!r}: this is the SFT trainer; preference methods "
                          "run through distill.training.preference.train_preferences (`distill train RUN --method "
                          f"{config.method}`)")
    output_dir = Path(output_dir)
    check_can_start(len(data), output_dir, restart)
    accelerator, precision, base = prepare_run(config, output_dir, restart, student)
    replay = list(replay) + replay_answers(base, replay_prompts, output_dir, accelerator)
    encoded = _encode_data(base, data, replay, config)
    session = _start_session(base, encoded, config, output_dir, accelerator)
    start = session.resume()
    totals = loop(session, encoded.train, encoded.replay, start, _train_step, on_step, progress)
    summary = _summary(session, base, encoded, totals, start, data_info, precision)
    finish(session, summary)
    return TrainResult(output_dir=output_dir, steps=session.plan.total_steps, resumed_from=start,
                       final_loss=summary["final_loss"], examples=len(encoded.train),
                       replay_examples=len(encoded.replay), dropped=encoded.dropped,
                       tokens_per_s=summary["throughput"]["tokens_per_s"], summary=summary, model=session.model.eval())


def _encode_data(base: Student, data: Sequence[Example], replay: Sequence[Example], config: TrainConfig) -> _Data:
    limit = min(config.max_length, base.context_window)
    train_set, dropped = encode_all(data, base, limit)
    replay_set, replay_dropped = encode_all(replay, base, limit)
    if not train_set:
        raise InputError(f"all {len(data)} training examples are longer than max_length={config.max_length} tokens; "
                         "raise --max-length or shorten them")
    return _Data(train=train_set, replay=replay_set, dropped=dropped, replay_dropped=replay_dropped)


def _start_session(base: Student, data: _Data, config: TrainConfig, output_dir: Path, accelerator: Any) -> Session:
    """LoRA on the base model, optimizer, schedule, and the loss module prepared for the processes."""
    targets = tuple(config.target_modules or linear_layer_names(base.model))
    model = add_lora(base.model, config, targets)
    fingerprint = content_hash({"config": config.run_key(), "base": base.identity.weights_sha256,
                                "processes": accelerator.num_processes,
                                "train": [(e.id, e.input_ids, e.labels) for e in data.train],
                                "replay": [(e.id, e.input_ids, e.labels) for e in data.replay]}, length=32)
    return open_session(model, targets, config, output_dir, accelerator,
                        completion_loss_module(model, config.kl_weight),
                        plan(len(data.train), len(data.replay), config, accelerator.num_processes),
                        fingerprint, base.tokenizer.pad_token_id)


def _train_step(session: Session, batches: list[list[Encoded]]) -> dict[str, Any]:
    """One optimizer step over `batches` (gradient accumulation); returns the loss-log fields.

    Each batch is cut into forward passes of at most `micro_batch_tokens` padded tokens, and the
    loss is the mean over all completion tokens of the step, so how a batch is cut changes memory,
    not the result.
    """
    import torch

    config, accelerator, loss_module = session.config, session.accelerator, session.loss_module
    started, cpu_started = time.perf_counter(), time.process_time()
    pieces = [piece for batch in batches for piece in split_by_tokens(batch, config.micro_batch_tokens)]
    completion_tokens = sum(e.completion_tokens for piece in pieces for e in piece)
    sums = torch.zeros(4, device=accelerator.device)  # nll, kl, completion tokens, all tokens
    for i, piece in enumerate(pieces):
        tensors = {k: v.to(accelerator.device) for k, v in collate(piece, session.pad_id).items()}
        with nullcontext() if i == len(pieces) - 1 else accelerator.no_sync(loss_module):
            out = loss_module(**tensors)
            accelerator.backward(out["loss"] / max(completion_tokens, 1))
        sums += torch.stack([out["nll"].detach(), out.get("kl", out["nll"].new_zeros(())).detach(),
                             out["tokens"].to(sums.dtype), tensors["attention_mask"].sum().to(sums.dtype)])
    stepped = optimizer_step(session)
    nll, kl, completion, tokens = accelerator.reduce(sums, reduction="sum").tolist()
    row = {"loss": round(nll / max(completion, 1), 6), "lr": stepped["lr"], "completion_tokens": int(completion),
           **timing(tokens, started, cpu_started), **stepped}
    if config.kl_weight > 0:
        row["kl"] = round(kl / max(completion, 1), 6)
    return row


def _summary(session: Session, base: Student, data: _Data, totals: Totals, start: int,
             data_info: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """What training.json records: options, base model, data counts, throughput, library versions."""
    config = session.config
    return {
        **run_summary(session, base, totals, start, precision),
        "data": {**dict(data_info or {}), "examples": len(data.train) + len(data.dropped), "trained": len(data.train),
                 "dropped_over_length": len(data.dropped), "dropped_ids": data.dropped[:MAX_REPORTED_ERRORS],
                 "completion_tokens": sum(e.completion_tokens for e in data.train)},
        "replay": {"examples": len(data.replay) + len(data.replay_dropped), "available": len(data.replay),
                   "dropped_over_length": len(data.replay_dropped),
                   "per_epoch": replay_count(len(data.train), len(data.replay), config.replay_fraction)},
    }

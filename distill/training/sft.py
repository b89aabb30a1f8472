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
- Precision: bf16 mixed precision wherever bf16 is native (GPUs, and CPUs with AVX512-BF16 or
  AMX, where it trains 2x faster than float32 and learns the same; see `native_bf16`), float32
  elsewhere. No gradient checkpointing by default: a 135M model does not need the memory.
- Checkpoints (adapter, optimizer, scheduler, step) are written every `save_every` steps and on
  Ctrl-C; running the same command again resumes from the last one. A checkpoint's state file is
  read with torch's weights-only unpickler (tensors and plain containers, nothing callable), so a
  `state.pt` planted in an output directory cannot run code; one that does not load that way is
  refused before anything else is read (`distill.training.checkpoints`). Data order is a pure
  function of (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would
  have seen (`distill.training.batching`).

The options are `distill.training.config.TrainConfig`; the adapter and its loss are
`distill.training.lora`; the loss log is `distill.training.losslog`. This module is the run:
devices, the training loop, and what it writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from distill.errors import ConfigError, InputError
from distill.records.files import fsync_files, write_atomic, write_jsonl
from distill.records.ids import content_hash
from distill.records.jsonl import MAX_REPORTED_ERRORS
from distill.records.prompts import Prompt
from distill.student.model import Student, weights_sha256
from distill.training.batching import epoch_batches, rank_batches, replay_count, split_by_tokens
from distill.training.checkpoints import (CHECKPOINTS, last_checkpoint_step, load_checkpoint, resume_point,
                                          save_checkpoint)
from distill.training.config import TrainConfig
from distill.training.examples import Encoded, Example, answer_replay, collate, encode_all, read_examples
from distill.training.lora import adapter_state_sha256, add_lora, completion_loss_module, linear_layer_names
from distill.training.losslog import LOSS_LOG, LossLog

TRAINING_FILE = "training.json"
REPLAY_FILE = "replay.jsonl"


# ---------------------------------------------------------------- the run

@dataclass
class TrainResult:
    """What a finished run wrote and measured."""

    output_dir: Path
    steps: int
    resumed_from: int
    final_loss: float | None
    examples: int
    replay_examples: int
    dropped: list[str] = field(default_factory=list)
    tokens_per_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)  # the trained PeftModel, still in memory


@dataclass
class _Plan:
    """Steps per epoch and in total, for this process's share of the data."""

    steps_per_epoch: int
    total_steps: int


@dataclass
class _Data:
    """A run's examples as tokens, and what was dropped as over-length on the way."""

    train: list[Encoded]
    replay: list[Encoded]
    dropped: list[str]
    replay_dropped: list[str]


@dataclass
class _Session:
    """What a run holds while it trains."""

    config: TrainConfig
    output_dir: Path
    accelerator: Any
    model: Any  # the PeftModel
    targets: tuple[str, ...]
    optimizer: Any
    scheduler: Any
    loss_module: Any  # what DDP wraps
    plan: _Plan
    fingerprint: str
    pad_id: int

    def checkpoint(self, step: int) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(self.output_dir, step, self.model, self.optimizer, self.scheduler, self.fingerprint,
                            self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()


@dataclass
class _Totals:
    """What the loop measured."""

    last_row: dict[str, Any] | None
    tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.last_row = row
        self.tokens += row["tokens"]
        self.cpu_seconds += row["cpu_seconds"]


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
    output_dir = Path(output_dir)
    _check_can_start(data, output_dir, restart)
    accelerator, precision = _make_accelerator(config)
    if restart and accelerator.is_main_process:
        _clear_run(output_dir)
    accelerator.wait_for_everyone()
    # bf16 on a GPU: weights in bf16 (half the memory). On a CPU: weights stay float32 and autocast
    # runs the matmuls in bf16, so the frozen base is exactly the model the adapter is later applied to.
    weights = precision if accelerator.device.type == "cuda" else "float32"
    # a view over the process's shared weights: add_lora puts LoRA into the view's own modules and the
    # base tensors stay frozen, so answering and evaluation Students in this process see them unchanged
    base = Student.load(student, device=str(accelerator.device), dtype=weights)
    replay = list(replay) + _replay_answers(base, replay_prompts, output_dir, accelerator)
    encoded = _encode_data(base, data, replay, config)
    session = _start_session(base, encoded, config, output_dir, accelerator)
    checkpoint = resume_point(output_dir, session.fingerprint)
    start = load_checkpoint(checkpoint, session.model, session.optimizer, session.scheduler) if checkpoint else 0
    totals = _loop(session, encoded, start, on_step, progress)
    summary = _summary(session, base, encoded, totals, start, data_info, precision)
    if accelerator.is_main_process:
        _save_adapter(session.model, output_dir, summary)
    accelerator.wait_for_everyone()
    return TrainResult(output_dir=output_dir, steps=session.plan.total_steps, resumed_from=start,
                       final_loss=summary["final_loss"], examples=len(encoded.train),
                       replay_examples=len(encoded.replay), dropped=encoded.dropped,
                       tokens_per_s=summary["throughput"]["tokens_per_s"], summary=summary, model=session.model.eval())


def _check_can_start(data: Sequence[Example], output_dir: Path, restart: bool) -> None:
    if not data:
        raise InputError("no training examples: the dataset is empty")
    if not restart and (output_dir / TRAINING_FILE).is_file():
        raise ConfigError(f"{output_dir}: already holds a finished adapter ({TRAINING_FILE}); pass --restart "
                          "(restart=True) to train it again from scratch, or choose another output directory")


def _make_accelerator(config: TrainConfig) -> tuple[Any, str]:
    """The accelerate Accelerator (devices, precision, processes) and the precision it runs in."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = config.precision
    if precision == "auto":
        precision = "bfloat16" if native_bf16() else "float32"
    # One process may train several times (rounds, tests) with different precisions; accelerate
    # keeps the first run's mixed precision in a process-wide state, so start each run afresh
    # (the process group, in PartialState, is kept).
    AcceleratorState._reset_state()
    # cpu=True where there is no GPU: accelerate then runs several processes with DDP on gloo
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if precision == "bfloat16" else "no")
    return accelerator, precision


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a bf16-capable GPU, or a CPU with AVX512-BF16 or AMX.

    On such CPUs bf16 matmuls are several times faster than float32 ones (a whole training step
    2x: bench/train.py on a 2-core AVX512-BF16 EPYC); elsewhere bf16 is emulated and slower.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but long-standing torch.cpu helpers
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _encode_data(base: Student, data: Sequence[Example], replay: Sequence[Example], config: TrainConfig) -> _Data:
    limit = min(config.max_length, base.context_window)
    train_set, dropped = encode_all(data, base, limit)
    replay_set, replay_dropped = encode_all(replay, base, limit)
    if not train_set:
        raise InputError(f"all {len(data)} training examples are longer than max_length={config.max_length} tokens; "
                         "raise --max-length or shorten them")
    return _Data(train=train_set, replay=replay_set, dropped=dropped, replay_dropped=replay_dropped)


def _start_session(base: Student, data: _Data, config: TrainConfig, output_dir: Path, accelerator: Any) -> _Session:
    """LoRA on the base model, optimizer, schedule, and the loss module prepared for the processes."""
    import torch

    plan = _plan(data, config, accelerator.num_processes)
    targets = tuple(config.target_modules or linear_layer_names(base.model))
    model = add_lora(base.model, config, targets)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    fingerprint = content_hash({"config": config.run_key(), "base": base.identity.weights_sha256,
                                "processes": accelerator.num_processes,
                                "train": [(e.id, e.input_ids, e.labels) for e in data.train],
                                "replay": [(e.id, e.input_ids, e.labels) for e in data.replay]}, length=32)
    return _Session(config=config, output_dir=output_dir, accelerator=accelerator, model=model, targets=targets,
                    optimizer=optimizer, scheduler=_scheduler(optimizer, config, plan.total_steps),
                    loss_module=accelerator.prepare(completion_loss_module(model, config.kl_weight)), plan=plan,
                    fingerprint=fingerprint, pad_id=base.tokenizer.pad_token_id)


def _plan(data: _Data, config: TrainConfig, world: int) -> _Plan:
    n = len(data.train) + replay_count(len(data.train), len(data.replay), config.replay_fraction)
    batches_per_process = math.ceil(math.ceil(n / config.batch_size) / world)
    per_epoch = math.ceil(batches_per_process / config.grad_accum)
    return _Plan(steps_per_epoch=per_epoch,
                 total_steps=per_epoch * config.epochs if config.max_steps is None else config.max_steps)


def _loop(session: _Session, data: _Data, start: int, on_step: Callable[[dict[str, Any]], None] | None,
          progress: bool) -> _Totals:
    """Train from step `start` to the end, logging every step and checkpointing every `save_every`."""
    accelerator, plan = session.accelerator, session.plan
    log = LossLog(session.output_dir / LOSS_LOG, keep_through=start, enabled=accelerator.is_main_process)
    bar = _progress_bar(plan.total_steps, start, enabled=progress and accelerator.is_main_process)
    totals = _Totals(last_row=log.last)
    started, completed = time.monotonic(), start
    try:
        for step, epoch, batches in _steps(data, session.config, plan, accelerator.process_index,
                                           accelerator.num_processes, start):
            measured = _train_step(session, batches)
            completed = step
            done_in_epoch = (step - 1) % plan.steps_per_epoch + 1
            row = {"step": step, "epoch": round(epoch + done_in_epoch / plan.steps_per_epoch, 4), **measured}
            log.write(row)
            totals.add(row)
            bar.update(1)
            bar.set_postfix_str(f"loss {row['loss']:.3f}, {row['tokens_per_s']:.0f} tok/s", refresh=False)
            if on_step is not None:
                on_step(row)
            if step % session.config.save_every == 0 and step < plan.total_steps:
                session.checkpoint(step)
    except KeyboardInterrupt:  # keep the steps done; with several processes, only the periodic checkpoints
        if accelerator.num_processes == 1 and completed > max(start, last_checkpoint_step(session.output_dir)):
            session.checkpoint(completed)
        raise
    finally:
        bar.close()
        log.close()
    totals.seconds = time.monotonic() - started
    return totals


def _steps(data: _Data, config: TrainConfig, plan: _Plan, rank: int, world: int,
           start: int) -> Iterator[tuple[int, int, list[list[Encoded]]]]:
    """(step, epoch, batches) for every step after `start`, in the order an unbroken run takes."""
    step = 0
    epoch = 0
    while True:
        mine = rank_batches(epoch_batches(data.train, data.replay, config, epoch), rank, world)
        for first in range(0, len(mine), config.grad_accum):
            step += 1
            if step > plan.total_steps:
                return
            if step > start:
                yield step, epoch, mine[first:first + config.grad_accum]
        epoch += 1


def _train_step(session: _Session, batches: list[list[Encoded]]) -> dict[str, Any]:
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
    grad_norm = None
    if config.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(loss_module.parameters(), config.max_grad_norm))
    lr = session.scheduler.get_last_lr()[0]
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    nll, kl, completion, tokens = accelerator.reduce(sums, reduction="sum").tolist()
    seconds = time.perf_counter() - started
    row = {"loss": round(nll / max(completion, 1), 6), "lr": lr, "completion_tokens": int(completion),
           "tokens": int(tokens), "seconds": round(seconds, 4),
           "cpu_seconds": round(time.process_time() - cpu_started, 4),
           "tokens_per_s": round(tokens / seconds, 2)}
    if grad_norm is not None:
        row["grad_norm"] = round(grad_norm, 6)
    if config.kl_weight > 0:
        row["kl"] = round(kl / max(completion, 1), 6)
    return row


def _scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up, then cosine, linear or no decay; no step runs at learning rate 0."""
    import torch

    warmup = round(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:  # step counts from 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1 - progress if config.scheduler == "linear" else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _replay_answers(student: Student, prompts: Sequence[Prompt], output_dir: Path, accelerator: Any) -> list[Example]:
    """The base student's answers to the replay prompts, generated once and kept in replay.jsonl."""
    if not prompts:
        return []
    cache = output_dir / REPLAY_FILE
    if accelerator.is_main_process and not cache.is_file():
        answered = answer_replay(student, prompts)
        write_jsonl(cache, ({**e.to_row(), "meta": {"answered_by": student.identity.key}} for e in answered))
    accelerator.wait_for_everyone()
    return read_examples(cache, source="replay")


def _clear_run(output_dir: Path) -> None:
    """Remove what an earlier run wrote (and only that) before starting over."""
    shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    for name in (TRAINING_FILE, LOSS_LOG, REPLAY_FILE, "adapter_model.safetensors", "adapter_config.json"):
        (output_dir / name).unlink(missing_ok=True)


def _summary(session: _Session, base: Student, data: _Data, totals: _Totals, start: int,
             data_info: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """What training.json records: options, base model, data counts, throughput, library versions."""
    import accelerate
    import peft
    import torch
    import transformers
    from accelerate.utils import gather_object

    config = session.config
    shas = gather_object([adapter_state_sha256(session.model)])  # every process's own copy
    return {
        "config": config.to_dict(),
        "target_modules": list(session.targets),
        "base_model": base.identity.to_dict(),
        "data": {**dict(data_info or {}), "examples": len(data.train) + len(data.dropped), "trained": len(data.train),
                 "dropped_over_length": len(data.dropped), "dropped_ids": data.dropped[:MAX_REPORTED_ERRORS],
                 "completion_tokens": sum(e.completion_tokens for e in data.train)},
        "replay": {"examples": len(data.replay) + len(data.replay_dropped), "available": len(data.replay),
                   "dropped_over_length": len(data.replay_dropped),
                   "per_epoch": replay_count(len(data.train), len(data.replay), config.replay_fraction)},
        "steps": session.plan.total_steps, "steps_per_epoch": session.plan.steps_per_epoch,
        "resumed_from_step": start, "final_loss": totals.last_row["loss"] if totals.last_row else None,
        "throughput": {"tokens": totals.tokens, "seconds": round(totals.seconds, 2),
                       "cpu_seconds": round(totals.cpu_seconds, 2),
                       "tokens_per_s": round(totals.tokens / totals.seconds, 2) if totals.tokens else 0.0},
        "processes": session.accelerator.num_processes, "precision": precision,
        "rank_adapter_sha256": shas, "ranks_agree": len(set(shas)) == 1,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__},
    }


def _save_adapter(model: Any, output_dir: Path, summary: dict[str, Any]) -> None:
    """Adapter files, then training.json (its presence marks a finished run), then drop the checkpoints."""
    model.save_pretrained(output_dir)
    fsync_files(output_dir)  # the adapter is on disk before training.json says it is finished
    summary["adapter_sha256"] = weights_sha256(output_dir)
    write_atomic(output_dir / TRAINING_FILE, json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", disable=not enabled, dynamic_ncols=True)

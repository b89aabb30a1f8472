"""A training run's machinery, shared by every training method (SFT in `sft`, DPO and KTO in `preference`).

A method brings its data (items with a length, plus replay examples), its loss module and the
function that takes one optimizer step; this module owns the rest, once: the accelerate
Accelerator (devices, precision, processes), loading the base weights, the optimizer and the
learning-rate schedule, the step loop (data order from `batching`, so a resumed run sees the
batches an unbroken one would), checkpoints every `save_every` steps and on Ctrl-C (resume from the
newest one that belongs to this very run, also after kill -9), the loss log, the parts of
training.json every method records, and saving the adapter (adapter files, then training.json,
whose presence marks a finished run).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from distill.errors import ConfigError, InputError
from distill.records.files import fsync_files, write_atomic, write_jsonl
from distill.records.prompts import Prompt
from distill.student.model import Student, weights_sha256
from distill.training.batching import epoch_batches, rank_batches, replay_count
from distill.training.checkpoints import (CHECKPOINTS, last_checkpoint_step, load_checkpoint, resume_point,
                                          save_checkpoint)
from distill.training.config import TrainConfig
from distill.training.examples import Example, answer_replay, read_examples
from distill.training.lora import adapter_state_sha256
from distill.training.losslog import LOSS_LOG, LossLog

TRACKING = "tracking"  # the tracker's folder in the adapter directory (report_to)

TRAINING_FILE = "training.json"
REPLAY_FILE = "replay.jsonl"


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
class Plan:
    """Steps per epoch and in total, for this process's share of the data."""

    steps_per_epoch: int
    total_steps: int


@dataclass
class Session:
    """What a run holds while it trains."""

    config: TrainConfig
    output_dir: Path
    accelerator: Any
    model: Any  # the PeftModel
    targets: tuple[str, ...]
    optimizer: Any
    scheduler: Any
    loss_module: Any  # what DDP wraps
    plan: Plan
    fingerprint: str
    pad_id: int

    def checkpoint(self, step: int) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(self.output_dir, step, self.model, self.optimizer, self.scheduler, self.fingerprint,
                            self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def resume(self) -> int:
        """Restore the newest checkpoint of this run, if any; the step it was taken at (0: none)."""
        checkpoint = resume_point(self.output_dir, self.fingerprint)
        return load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler) if checkpoint else 0


@dataclass
class Totals:
    """What the loop measured."""

    last_row: dict[str, Any] | None
    tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.last_row = row
        self.tokens += row["tokens"]
        self.cpu_seconds += row["cpu_seconds"]


StepFn = Callable[[Session, list[list[Any]]], dict[str, Any]]


def check_can_start(n_items: int, output_dir: Path, restart: bool, what: str = "training examples") -> None:
    if not n_items:
        raise InputError(f"no {what}: the dataset is empty")
    if not restart and (output_dir / TRAINING_FILE).is_file():
        raise ConfigError(f"{output_dir}: already holds a finished adapter ({TRAINING_FILE}); pass --restart "
                          "(restart=True) to train it again from scratch, or choose another output directory")


def make_accelerator(config: TrainConfig, output_dir: Path | None = None) -> tuple[Any, str]:
    """The accelerate Accelerator (devices, precision, processes, and the tracker of `report_to`, writing
    under OUTPUT_DIR/tracking) and the precision it runs in."""
    precision = config.precision
    if precision == "auto":
        precision = "bfloat16" if native_bf16() else "float32"
    tracking = {} if config.report_to == "none" or output_dir is None else {
        "log_with": config.report_to, "project_dir": str(output_dir / TRACKING)}
    accelerator = _accelerator(mixed_precision="bf16" if precision == "bfloat16" else "no", **tracking)
    if tracking:
        accelerator.init_trackers("distill", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                     for k, v in config.to_dict().items()})
    return accelerator, precision


def _accelerator(**options: Any) -> Any:
    """A fresh accelerate Accelerator: one process may train several times (rounds, tests) with different
    precisions, and accelerate keeps the first run's mixed precision in a process-wide state, so each
    starts afresh (the process group, in PartialState, is kept). cpu=True where there is no GPU:
    accelerate then runs several processes with DDP on gloo."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), **options)


def log_gate(adapter_dir: Path, metrics: Mapping[str, Any], promoted: bool) -> dict[str, float]:
    """Log the gate's metrics (as `Evaluation.to_dict()` writes them) to the tracker the adapter was trained
    with (training.json's `tracking`), at its last training step, as `gate/METRIC_FIELD` scalars (an
    interval as its mean, `_low` and `_high`) plus `gate/promoted` (1 or 0). Returns what was logged;
    nothing when the adapter was trained without a tracker."""
    path = adapter_dir / TRAINING_FILE
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    tracking = summary.get("tracking")
    if not tracking:
        return {}
    values = {"gate/promoted": float(promoted)}
    for name, metric in metrics.items():
        for key, value in (metric or {}).items():
            if isinstance(value, dict) and "mean" in value:
                values.update({f"gate/{name}_{key}": value["mean"], f"gate/{name}_{key}_low": value["low"],
                               f"gate/{name}_{key}_high": value["high"]})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"gate/{name}_{key}"] = float(value)
    accelerator = _accelerator(log_with=tracking["report_to"], project_dir=tracking["dir"])
    accelerator.init_trackers("distill")
    accelerator.log(values, step=summary.get("steps"))
    accelerator.end_training()
    return values


BF16_MIN_SPEEDUP = 1.15  # bf16 autocast must beat float32 by this much on the probe to be chosen


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether bf16 mixed precision trains faster than float32 here (what precision auto picks).

    A GPU: whether it supports bf16. A CPU: bf16 without AVX512-BF16 or AMX is emulated and several
    times slower, so no; with them it depends on the chip, so the answer is measured once per process
    (`bf16_speedup`): on a 2-core AVX512-BF16 EPYC a training step ran 2x faster in bf16, while on a
    2-core AVX512-BF16 Xeon without AMX bf16 matmuls ran at 74 GFLOP/s against 120-131 in float32
    and `bench/train.py` trained at 156 tokens/s in bf16 against 200 in float32. Under a multi-process
    launch (WORLD_SIZE > 1) every rank must agree without talking, so the instruction flags decide.
    """
    import os

    import torch

    from distill.student.packed import cpu_bf16

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if not cpu_bf16():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return bf16_speedup() >= BF16_MIN_SPEEDUP


def bf16_speedup(repeats: int = 5) -> float:
    """How many times faster a training step of one SmolLM2-sized projection (512 tokens, 576 -> 1536,
    forward and backward) runs under bf16 autocast than in float32 on this CPU: best of `repeats` each."""
    import torch

    generator = torch.Generator().manual_seed(0)  # its own: training's seeded global RNG is left as it was
    weight = torch.randn(1536, 576, generator=generator, requires_grad=True)
    x = torch.randn(512, 576, generator=generator, requires_grad=True)

    def best(bf16: bool) -> float:
        times = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(repeats + 1):  # the first run warms up (allocations, kernel choice)
                started = time.perf_counter()
                torch.nn.functional.linear(x, weight).sum().backward()
                times.append(time.perf_counter() - started)
        return min(times[1:])

    return best(False) / best(True)


def prepare_run(config: TrainConfig, output_dir: Path, restart: bool,
                student: Any) -> tuple[Any, str, Student]:
    """The accelerator, its precision and the base student on its device (an earlier run's files
    cleared first with `restart`)."""
    accelerator, precision = make_accelerator(config, output_dir)
    if restart and accelerator.is_main_process:
        clear_run(output_dir)
    accelerator.wait_for_everyone()
    # bf16 on a GPU: weights in bf16 (half the memory). On a CPU: weights stay float32 and autocast
    # runs the matmuls in bf16, so the frozen base is exactly the model the adapter is later applied to.
    weights = precision if accelerator.device.type == "cuda" else "float32"
    # a view over the process's shared weights: add_lora puts LoRA into the view's own modules and the
    # base tensors stay frozen, so answering and evaluation Students in this process see them unchanged
    return accelerator, precision, Student.load(student, device=str(accelerator.device), dtype=weights)


def open_session(model: Any, targets: Sequence[str], config: TrainConfig, output_dir: Path, accelerator: Any,
                 loss_module: Any, plan: Plan, fingerprint: str, pad_id: int) -> Session:
    """Optimizer and schedule over the adapter's trainable weights; the loss module prepared for the processes."""
    import torch

    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    return Session(config=config, output_dir=output_dir, accelerator=accelerator, model=model, targets=tuple(targets),
                   optimizer=optimizer, scheduler=scheduler(optimizer, config, plan.total_steps),
                   loss_module=accelerator.prepare(loss_module), plan=plan, fingerprint=fingerprint, pad_id=pad_id)


def plan(n_train: int, n_replay: int, config: TrainConfig, world: int) -> Plan:
    n = n_train + replay_count(n_train, n_replay, config.replay_fraction)
    batches_per_process = math.ceil(math.ceil(n / config.batch_size) / world)
    per_epoch = math.ceil(batches_per_process / config.grad_accum)
    return Plan(steps_per_epoch=per_epoch,
                total_steps=per_epoch * config.epochs if config.max_steps is None else config.max_steps)


def loop(session: Session, train: Sequence[Any], replay: Sequence[Any], start: int, step_fn: StepFn,
         on_step: Callable[[dict[str, Any]], None] | None, progress: bool) -> Totals:
    """Train from step `start` to the end, logging every step and checkpointing every `save_every`."""
    accelerator, plan = session.accelerator, session.plan
    log = LossLog(session.output_dir / LOSS_LOG, keep_through=start, enabled=accelerator.is_main_process)
    bar = _progress_bar(plan.total_steps, start, enabled=progress and accelerator.is_main_process)
    totals = Totals(last_row=log.last)
    started, completed = time.monotonic(), start
    try:
        for step, epoch, batches in _steps(train, replay, session.config, plan, accelerator.process_index,
                                           accelerator.num_processes, start):
            measured = step_fn(session, batches)
            completed = step
            done_in_epoch = (step - 1) % plan.steps_per_epoch + 1
            row = {"step": step, "epoch": round(epoch + done_in_epoch / plan.steps_per_epoch, 4), **measured}
            log.write(row)
            if session.config.report_to != "none":
                accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"},
                                step=step)
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


def _steps(train: Sequence[Any], replay: Sequence[Any], config: TrainConfig, plan: Plan, rank: int, world: int,
           start: int) -> Iterator[tuple[int, int, list[list[Any]]]]:
    """(step, epoch, batches) for every step after `start`, in the order an unbroken run takes."""
    step = 0
    epoch = 0
    while True:
        mine = rank_batches(epoch_batches(train, replay, config, epoch), rank, world)
        for first in range(0, len(mine), config.grad_accum):
            step += 1
            if step > plan.total_steps:
                return
            if step > start:
                yield step, epoch, mine[first:first + config.grad_accum]
        epoch += 1


def optimizer_step(session: Session) -> dict[str, Any]:
    """Clip, step the optimizer and the schedule, clear the gradients; the learning rate used and the
    gradient norm (when clipping is on), as loss-log fields."""
    config, accelerator = session.config, session.accelerator
    grad_norm = None
    if config.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(session.loss_module.parameters(), config.max_grad_norm))
    lr = session.scheduler.get_last_lr()[0]
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    return {"lr": lr} if grad_norm is None else {"lr": lr, "grad_norm": round(grad_norm, 6)}


def timing(tokens: float, started: float, cpu_started: float) -> dict[str, Any]:
    """The loss-log fields of a step's throughput (from `time.perf_counter()` and `time.process_time()`)."""
    seconds = time.perf_counter() - started
    return {"tokens": int(tokens), "seconds": round(seconds, 4),
            "cpu_seconds": round(time.process_time() - cpu_started, 4), "tokens_per_s": round(tokens / seconds, 2)}


def scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
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


def replay_answers(student: Student, prompts: Sequence[Prompt], output_dir: Path, accelerator: Any) -> list[Example]:
    """The base student's answers to the replay prompts, generated once and kept in replay.jsonl."""
    if not prompts:
        return []
    cache = output_dir / REPLAY_FILE
    if accelerator.is_main_process and not cache.is_file():
        answered = answer_replay(student, prompts)
        write_jsonl(cache, ({**e.to_row(), "meta": {"answered_by": student.identity.key}} for e in answered))
    accelerator.wait_for_everyone()
    return read_examples(cache, source="replay")


def clear_run(output_dir: Path) -> None:
    """Remove what an earlier run wrote (and only that) before starting over."""
    shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    for name in (TRAINING_FILE, LOSS_LOG, REPLAY_FILE, "adapter_model.safetensors", "adapter_config.json"):
        (output_dir / name).unlink(missing_ok=True)


def run_summary(session: Session, base: Student, totals: Totals, start: int, precision: str) -> dict[str, Any]:
    """What every method's training.json records: options, base model, steps, throughput, processes,
    each process's adapter hash and the library versions."""
    import accelerate
    import peft
    import torch
    import transformers
    from accelerate.utils import gather_object

    shas = gather_object([adapter_state_sha256(session.model)])  # every process's own copy
    return {
        "config": session.config.to_dict(),
        "target_modules": list(session.targets),
        "base_model": base.identity.to_dict(),
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


def finish(session: Session, summary: dict[str, Any]) -> None:
    """Save the adapter and training.json from the first process; every process waits for it."""
    if session.config.report_to != "none":
        summary["tracking"] = {"report_to": session.config.report_to, "dir": str(session.output_dir / TRACKING)}
        session.accelerator.end_training()
    if session.accelerator.is_main_process:
        save_adapter(session.model, session.output_dir, summary)
    session.accelerator.wait_for_everyone()


def save_adapter(model: Any, output_dir: Path, summary: dict[str, Any]) -> None:
    """Adapter files, then training.json (its presence marks a finished run), then drop the checkpoints."""
    model.save_pretrained(output_dir)
    fsync_files(output_dir)  # the adapter is on disk before training.json says it is finished
    summary["adapter_sha256"] = weights_sha256(output_dir)
    write_atomic(output_dir / TRAINING_FILE, json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", disable=not enabled, dynamic_ncols=True)

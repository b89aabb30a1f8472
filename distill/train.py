"""LoRA distillation: completion-only fine-tuning of the student on verified revisions, with replay.

`train()` fits a PEFT LoRA adapter on prompt-completion chat examples (the pipeline's `sft.jsonl`)
and writes one directory: the adapter in the layout PEFT and vLLM load (`adapter_config.json` +
`adapter_model.safetensors`), `training.json` (the config, what the data held and what was dropped,
the base model's identity, the throughput) and `loss.jsonl` (one row per optimizer step).

Why it is built this way:

- Rendering and labels come from `distill.examples.encode`: the student is trained on the very
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
  refused before anything else is read. Data order is a pure function
  of (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from distill.errors import ConfigError, InputError, ModelError
from distill.examples import (IGNORE, Encoded, Example, answer_replay, collate, encode_all, head_logits, read_examples,
                              summed_kl)
from distill.records.files import fsync_dir, fsync_files, write_atomic, write_jsonl
from distill.records.ids import content_hash
from distill.records.jsonl import MAX_REPORTED_ERRORS
from distill.records.prompts import Prompt
from distill.student.model import Student, weights_sha256

CHECKPOINTS = "checkpoints"
LOSS_LOG = "loss.jsonl"
TRAINING_FILE = "training.json"
REPLAY_FILE = "replay.jsonl"
STATE_FILE = "state.pt"


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run, with defaults that fit LoRA on a small chat model.

    The learning rate was swept over 1e-4, 2e-4, 5e-4 and 1e-3 on the task of
    tests/test_train_learning.py (64 revisions that end with "Final answer: X", 25% replay, 3 epochs
    of batch 8, SmolLM2-135M, float32), measuring the held-out rate of the rule and the NLL of the student's
    own answers to the unrelated prompts of prompts/examples (drift outside the training data):

        learning rate        1e-4    2e-4    5e-4    1e-3
        rule rate (held-out)  25%    100%    100%    100%
        drift (NLL change)    -5%     -4%    +16%    +31%

    2e-4 is the lowest rate that learns the rule fully, and the only one that does so without
    moving the model elsewhere. (Higher rates learn it sooner: 5e-4 in one epoch, 96%.)
    """

    # LoRA
    rank: int = 16
    """LoRA rank r: the adapter adds r x (in + out) parameters to each target layer."""
    alpha: float = 32.0
    """LoRA scaling numerator; the update is scaled by alpha / rank (2 by default)."""
    dropout: float = 0.0
    """Dropout on the adapter's input. 0: replay and few epochs regularise, and dropout costs a copy
    of every layer's input on CPU."""
    target_modules: tuple[str, ...] | None = None
    """Names of the layers to adapt; None = every linear layer except the output head (for Llama:
    q/k/v/o_proj, gate/up/down_proj), named as in the base model, as vLLM's LoRA serving expects."""

    # optimisation
    learning_rate: float = 2e-4
    """Peak AdamW learning rate (swept, see the class docstring)."""
    epochs: int = 3
    """Passes over the training examples (each with a fresh replay sample)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (the schedule is sized for it); None = all epochs."""
    batch_size: int = 8
    """Examples per micro-batch per process. Batches are grouped by length to waste little padding."""
    grad_accum: int = 1
    """Batches per optimizer step (per process)."""
    micro_batch_tokens: int = 2048
    """Most padded tokens in one forward pass; a batch with more is cut into several passes (same
    step, bounded memory). Activations take 2-3 MB per token on SmolLM2-135M (bf16 / float32)."""
    warmup_ratio: float = 0.1
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    scheduler: str = "cosine"
    """Learning-rate decay after warm-up: cosine, linear or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay on the adapter weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 turns it off."""
    max_length: int = 1024
    """Longest example in tokens (prompt + completion); longer ones are dropped and counted."""

    # against forgetting
    replay_fraction: float = 0.25
    """Fraction of each epoch's examples drawn from the replay set (when there is one)."""
    kl_weight: float = 0.0
    """Weight of KL(adapter || base) at completion positions; 0 = off. Costs one more forward pass."""

    # machinery
    seed: int = 0
    """Seeds the adapter's initialisation, the data order and the replay samples."""
    precision: str = "auto"
    """auto, float32 or bfloat16 (mixed precision: adapter and optimizer state stay float32). auto =
    bfloat16 where it runs natively (a GPU; a CPU with AVX512-BF16 or AMX), float32 elsewhere."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third slower. Off: a 135M
    model does not need it, and on CPU it only costs time."""
    save_every: int = 50
    """Write a resumable checkpoint every this many steps (and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep while training; all are removed at the end."""

    def __post_init__(self) -> None:
        positive = ("rank", "epochs", "batch_size", "grad_accum", "micro_batch_tokens", "max_length", "save_every",
                    "keep_checkpoints")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"training option {name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"training option max_steps: expected a positive integer or null, got {self.max_steps!r}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"training option learning_rate: expected a value in (0, 1), got {self.learning_rate!r}")
        if self.alpha <= 0:
            raise ConfigError(f"training option alpha: expected a positive number, got {self.alpha!r}")
        for name, low, high in (("dropout", 0, 1), ("warmup_ratio", 0, 1), ("replay_fraction", 0, 0.95)):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"training option {name}: expected a value in [{low}, {high}], "
                                  f"got {getattr(self, name)!r}")
        if self.kl_weight < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("training options kl_weight, weight_decay and max_grad_norm must be >= 0, got "
                              f"{self.kl_weight!r}, {self.weight_decay!r}, {self.max_grad_norm!r}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"training option scheduler: expected cosine, linear or constant, got {self.scheduler!r}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"training option precision: expected auto, float32 or bfloat16, got {self.precision!r}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a JSON object; an unknown key is a ConfigError naming it and `source`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training option(s) {', '.join(map(repr, unknown))}; "
                              f"known options: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_key(self) -> dict[str, Any]:
        """The options that change what is trained (not how often it is saved): must match to resume."""
        return {k: v for k, v in self.to_dict().items()
                if k not in ("save_every", "keep_checkpoints", "micro_batch_tokens", "gradient_checkpointing")}


# ---------------------------------------------------------------- data order

def replay_count(n_train: int, n_replay: int, fraction: float) -> int:
    """Replay examples per epoch so that they make up `fraction` of it (capped by the replay set)."""
    if not n_replay or fraction <= 0:
        return 0
    return min(n_replay, round(n_train * fraction / (1 - fraction)))


def epoch_batches(train: Sequence[Encoded], replay: Sequence[Encoded], config: TrainConfig,
                  epoch: int) -> list[list[Encoded]]:
    """The batches of one epoch: a pure function of (data, config, epoch), so a resumed run replays it.

    The epoch is the training examples plus a fresh replay sample, shuffled, then cut into
    windows of 16 batches whose examples are sorted by length (little padding), in shuffled order.
    """
    rng = random.Random(f"{config.seed}:{epoch}")
    items = list(train) + rng.sample(list(replay), replay_count(len(train), len(replay), config.replay_fraction))
    rng.shuffle(items)
    size = config.batch_size
    window = size * 16
    batches: list[list[Encoded]] = []
    for start in range(0, len(items), window):
        chunk = sorted(items[start:start + window], key=len, reverse=True)
        batches.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
    rng.shuffle(batches)
    return batches


def rank_batches(batches: list[list[Encoded]], rank: int, world: int) -> list[list[Encoded]]:
    """This process's share of an epoch; the list is wrapped around so every process gets as many."""
    per_rank = math.ceil(len(batches) / world)
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]
    return padded[rank::world]


# ---------------------------------------------------------------- the model and its loss

def linear_layer_names(model: Any) -> tuple[str, ...]:
    """Leaf names of every linear layer except the output head, as named in the base model."""
    import torch

    head = model.get_output_embeddings()
    return tuple(sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) and module is not head}))


def add_lora(model: Any, config: TrainConfig, targets: Sequence[str]) -> Any:
    """Wrap the base model with a fresh LoRA adapter (seeded), every other weight frozen."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(targets),
                      bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # PEFT: a target module that the model does not have
        raise ConfigError(f"training option target_modules {list(targets)}: {exc}") from None


def completion_loss_module(peft_model: Any, kl_weight: float) -> Any:
    """An nn.Module whose forward returns the completion-only loss of a batch (what DDP wraps);
    logits only at completion positions (`head_logits`)."""
    import torch
    import torch.nn.functional as F

    class _CompletionLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = peft_model

        def _logits(self, input_ids: Any, attention_mask: Any, picked: Any) -> Any:
            return head_logits(self.model, input_ids, attention_mask, picked).float()

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> dict[str, Any]:
            targets = labels[:, 1:]
            picked = targets != IGNORE
            logits = self._logits(input_ids, attention_mask, picked)
            nll = F.cross_entropy(logits, targets[picked], reduction="sum")
            out = {"nll": nll, "tokens": picked.sum(), "loss": nll}
            if kl_weight > 0:
                with torch.no_grad(), self.model.disable_adapter():
                    base_logits = self._logits(input_ids, attention_mask, picked)
                kl = summed_kl(logits, base_logits)  # KL(trained || base)
                out["kl"] = kl
                out["loss"] = nll + kl_weight * kl
            return out

    return _CompletionLoss()


def adapter_state_sha256(peft_model: Any) -> str:
    """A hash of the adapter's weights as this process holds them (ranks must agree)."""
    from peft import get_peft_model_state_dict

    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(peft_model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- checkpoints

def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state file exists)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(output_dir: Path, step: int, peft_model: Any, optimizer: Any, scheduler: Any,
                    fingerprint: str, keep: int) -> Path:
    """Write adapter + optimizer + scheduler state for `step`, atomically; prune old checkpoints."""
    import torch

    root = output_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    torch.save({"step": step, "fingerprint": fingerprint, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, tmp / STATE_FILE)
    fsync_files(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, peft_model: Any, optimizer: Any, scheduler: Any) -> int:
    """Restore adapter, optimizer and scheduler from a checkpoint; returns its step."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_state(path)
    weights = load_file(path / "adapter_model.safetensors", device=str(next(peft_model.parameters()).device))
    set_peft_model_state_dict(peft_model, weights)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's state (step, fingerprint, optimizer, scheduler, RNG), read weights-only: the
    unpickler builds tensors and plain containers and refuses everything else, so a planted file
    cannot run code. ModelError naming the file if it does not load that way."""
    import torch

    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused by the weights-only unpickler, truncated, not a torch file
        raise ModelError(f"{path}: not a checkpoint state distill wrote ({type(exc).__name__}); it was not loaded. "
                         f"Delete {checkpoint}, or pass --restart (restart=True) to start over") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a checkpoint state (a dict), got {type(state).__name__}; delete "
                         f"{checkpoint}, or pass --restart (restart=True) to start over")
    return state


def resume_point(output_dir: Path, fingerprint: str) -> Path | None:
    """The newest checkpoint of this very run, None if none; ConfigError if it belongs to another run."""
    found = checkpoints(output_dir)
    if not found:
        return None
    state = read_state(found[-1])
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{found[-1]}: this checkpoint is from a run with other data, base model or options; "
                          "re-run with the same ones to resume, or pass --restart (restart=True) to start over")
    return found[-1]


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
    log = _LossLog(session.output_dir / LOSS_LOG, keep_through=start, enabled=accelerator.is_main_process)
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
        if accelerator.num_processes == 1 and completed > max(start, _last_checkpoint_step(session.output_dir)):
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


def split_by_tokens(batch: Sequence[Encoded], budget: int) -> list[list[Encoded]]:
    """Cut a batch into runs whose padded size (rows x longest row) stays within `budget` tokens."""
    pieces: list[list[Encoded]] = []
    current: list[Encoded] = []
    for example in sorted(batch, key=len, reverse=True):
        if current and (len(current) + 1) * len(current[0]) > budget:
            pieces.append(current)
            current = []
        current.append(example)
    return pieces + [current] if current else pieces


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


def _last_checkpoint_step(output_dir: Path) -> int:
    found = checkpoints(output_dir)
    return int(found[-1].name.split("-")[1]) if found else 0


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


class _LossLog:
    """loss.jsonl, appended one row per step; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, keep_through: int, enabled: bool):
        self.path, self.enabled, self.last = path, enabled, None
        self._fh = None
        if not enabled:
            return
        rows = _loss_rows(path) if path.is_file() else []
        rows = [r for r in rows if r.get("step", 0) <= keep_through]
        write_jsonl(path, rows)
        self.last = rows[-1] if rows else None
        self._fh = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _loss_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a loss log, each line parsed once; a row torn by a crash is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a row torn by a crash
    return rows


def read_loss_log(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of an adapter directory's loss.jsonl (a row torn by a crash is skipped)."""
    return _loss_rows(Path(output_dir) / LOSS_LOG)


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", disable=not enabled, dynamic_ncols=True)

"""`distill train RUN_OR_DATASET`: fit a LoRA adapter to the verified revisions, mixed with replay.

RUN_OR_DATASET is a run directory (`runs/NAME/`: reads `sft.jsonl`, writes `runs/NAME/adapter/`,
and takes `runs/NAME/replay.jsonl` as the replay set when there is one) or a JSONL file (writes
`FILE-adapter/` beside it unless --output). Every file is validated whole before any model
loads. Options come from the defaults of `distill.training.config.TrainConfig`, then --config
FILE.json, then the flags. Re-running the same command resumes from the last checkpoint; under
`accelerate launch --multi_gpu --num_processes N -m distill train ...` it trains on N processes
(N GPUs, or N CPU processes on gloo where there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, InputError

# flag, TrainConfig field, type, help (the default is appended from TrainConfig)
OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--epochs", "epochs", int, "passes over the training examples"),
    ("--max-steps", "max_steps", int, "stop after this many optimizer steps"),
    ("--lr", "learning_rate", float, "peak learning rate"),
    ("--batch-size", "batch_size", int, "examples per batch per process"),
    ("--grad-accum", "grad_accum", int, "batches per optimizer step"),
    ("--micro-batch-tokens", "micro_batch_tokens", int, "most padded tokens per forward pass (memory)"),
    ("--max-length", "max_length", int, "longest example in tokens; longer ones are dropped and counted"),
    ("--rank", "rank", int, "LoRA rank"),
    ("--alpha", "alpha", float, "LoRA alpha (scale = alpha / rank)"),
    ("--dropout", "dropout", float, "LoRA dropout"),
    ("--warmup-ratio", "warmup_ratio", float, "fraction of steps of linear warm-up"),
    ("--scheduler", "scheduler", str, "cosine, linear or constant"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--replay-fraction", "replay_fraction", float, "fraction of each epoch drawn from the replay set"),
    ("--kl-weight", "kl_weight", float, "weight of the KL-to-base penalty (0 = off)"),
    ("--seed", "seed", int, "seed of the adapter init, data order and replay samples"),
    ("--precision", "precision", str, "auto, float32 or bfloat16"),
    ("--save-every", "save_every", int, "steps between checkpoints"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a LoRA adapter on a run's sft.jsonl (or any chat JSONL)",
        description="Fit a LoRA adapter to prompt-completion chats (TRL's conversational format: {\"prompt\": "
                    "[...], \"completion\": [{\"role\": \"assistant\", ...}]} or {\"messages\": [...]}) with loss "
                    "on the completion only, mixing replay examples into every epoch. Writes the adapter "
                    "(adapter_config.json + adapter_model.safetensors, loadable by PEFT and vLLM), "
                    "training.json and loss.jsonl. Re-run the same command to resume an interrupted run.",
    )
    p.add_argument("source", type=Path, metavar="RUN_OR_DATASET",
                   help="a run directory (reads sft.jsonl) or a JSONL dataset file")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="adapter directory (default: RUN/adapter, or FILE-adapter beside a dataset file)")
    p.add_argument("--student", default=None,
                   help="base model directory or hub id (default: $DISTILL_STUDENT, else the embedded SmolLM2)")
    p.add_argument("--replay", type=Path, default=None,
                   help="replay set: chats with completions (used as they are) and/or prompts (the base student "
                        "answers them first); default RUN/replay.jsonl when it exists")
    p.add_argument("--no-replay", action="store_true", help="train without replay even if RUN/replay.jsonl exists")
    p.add_argument("--reviewed", action="store_true",
                   help="train on RUN/sft.reviewed.jsonl (the rows a person accepted or edited in `distill review`)")
    p.add_argument("--config", type=Path, default=None, help="JSON object of training options (TrainConfig fields)")
    p.add_argument("--restart", action="store_true", help="discard checkpoints or a finished adapter and start over")
    g = p.add_argument_group("training options (override --config)")
    for flag, name, kind, text in OPTIONS:
        g.add_argument(flag, dest=name, type=kind, default=None, help=_with_default(text, name))
    g.add_argument("--target-modules", dest="target_modules", default=None,
                   help="comma-separated layer names to adapt (default: every linear layer but the output head)")
    g.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass: less memory, slower (default off)")
    p.set_defaults(func=run)


def _with_default(text: str, name: str) -> Any:
    """The help of a training option: the text, then TrainConfig's default, read when the help is printed."""
    def help_text() -> str:
        from distill.training.config import TrainConfig

        return f"{text} (default {getattr(TrainConfig(), name)})"

    return help_text


def run(args: argparse.Namespace) -> int:
    from distill.training.examples import read_examples, read_replay
    from distill.training.sft import train

    data_path, output, replay_path = resolve_paths(args.source, args.output, args.replay, args.no_replay,
                                                   reviewed=args.reviewed)
    examples = read_examples(data_path)  # validate every file before any model loads
    replay, replay_prompts = read_replay(replay_path) if replay_path else ([], [])
    config = build_config(args)
    say(f"{len(examples)} training examples from {data_path}" +
        (f"; replay: {len(replay)} examples + {len(replay_prompts)} prompts to answer from {replay_path}"
         if replay_path else "; no replay set (pass --replay FILE to guard against forgetting)"))
    result = train(examples, output, config, student=args.student, replay=replay, replay_prompts=replay_prompts,
                   data_info={"path": str(data_path), "sha256": _file_sha256(data_path),
                              "replay_path": str(replay_path) if replay_path else None},
                   restart=args.restart, progress=True)
    s = result.summary
    say(f"adapter written to {output}: {s['data']['trained']} examples ({s['data']['dropped_over_length']} dropped as "
        f"longer than {config.max_length} tokens), {s['replay']['per_epoch']} replay examples per epoch, "
        f"{result.steps} steps, final loss {result.final_loss}, {result.tokens_per_s:.0f} tokens/s"
        + (f" (resumed at step {result.resumed_from})" if result.resumed_from else ""))
    return 0


def resolve_paths(source: Path, output: Path | None, replay: Path | None, no_replay: bool, *,
                  reviewed: bool = False) -> tuple[Path, Path, Path | None]:
    """(dataset file, adapter directory, replay file or None) for a run directory or a dataset file."""
    if reviewed and not source.is_dir():
        raise ConfigError(f"--reviewed needs a run directory, got {source}")
    if source.is_dir():
        data = source / ("sft.reviewed.jsonl" if reviewed else "sft.jsonl")
        if not data.is_file():
            hint = "run `distill review NAME --import FILE.csv` first" if reviewed else "run the pipeline first"
            raise InputError(f"{source}: a run directory without {data.name}; {hint}, or pass a dataset file")
        default_replay = source / "replay.jsonl"
        output = output or source / "adapter"
        replay = replay or (default_replay if default_replay.is_file() else None)
    elif source.exists() or source.suffix == ".jsonl":
        data = source
        output = output or source.with_name(source.stem + "-adapter")
    else:
        raise InputError(f"{source}: no such run directory or dataset file")
    return data, output, None if no_replay else replay


def build_config(args: argparse.Namespace) -> Any:
    """TrainConfig from its defaults, then --config, then the flags that were given."""
    from distill.training.config import TrainConfig

    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            values = json.loads(args.config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{args.config}: cannot read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{args.config}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config}: expected a JSON object of training options")
    names = [name for _, name, _, _ in OPTIONS] + ["target_modules", "gradient_checkpointing"]
    flags = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if "target_modules" in flags:
        flags["target_modules"] = tuple(m.strip() for m in flags["target_modules"].split(",") if m.strip())
    return TrainConfig.from_mapping({**values, **flags}, source=str(args.config or "flags"))


def say(message: str) -> None:
    """A status line on stderr, from the first process only when several train together."""
    if os.environ.get("RANK", "0") == "0":
        print(f"distill: {message}", file=sys.stderr)


def _file_sha256(path: Path) -> str:
    from distill.student.embedded import sha256_file

    return sha256_file(path)

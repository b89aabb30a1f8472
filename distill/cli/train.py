"""`distill train RUN_OR_DATASET`: fit a LoRA adapter to the verified revisions, mixed with replay.

RUN_OR_DATASET is a run directory (`runs/NAME/`: reads `sft.jsonl`, writes `runs/NAME/adapter/`, and
takes `runs/NAME/replay.jsonl` as the replay set when there is one) or a JSONL file (writes
`FILE-adapter/` beside it unless --output). Every file is validated whole before any model loads. Options
come from the defaults of `distill.training.config.TrainConfig` (whose fields the flags are
generated from), then `[train]` in distill.toml, then --config FILE.json, then the flags. Re-running
the same command resumes from the last checkpoint; under `accelerate launch --multi_gpu
--num_processes N -m distill train ...` it trains on N processes (N GPUs, or N CPU processes on gloo
where there is no GPU).

`--method dpo` / `--method kto` train on preferences instead (`distill.training.preference`): a
run directory's prefs.jsonl (KTO: also its reference-check failures and review decisions) or a
pairs file, into RUN/adapter-dpo or RUN/adapter-kto, starting from RUN/adapter when it exists
(`--init-adapter`), which is also the reference policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distill.cli.options import add_config_arg, add_options, table
from distill.config import resolve_fields, settings_of
from distill.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distill.training.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a LoRA adapter on a run's sft.jsonl (or any chat JSONL)",
        description="Fit a LoRA adapter to prompt-completion chats (TRL's conversational format: {\"prompt\": "
                    "[...], \"completion\": [{\"role\": \"assistant\", ...}]} or {\"messages\": [...]}) with loss "
                    "on the completion only, mixing replay examples into every epoch. Writes the adapter "
                    "(adapter_config.json + adapter_model.safetensors, loadable by PEFT and vLLM), "
                    "training.json and loss.jsonl. Re-run the same command to resume an interrupted run. "
                    "--method dpo trains on RUN/prefs.jsonl's pairs (chosen over rejected) into RUN/adapter-dpo; "
                    "--method kto on answers labelled desirable or undesirable (prefs.jsonl, revisions the "
                    "reference check rejected, `distill review` decisions) into RUN/adapter-kto; both start from "
                    "RUN/adapter when it exists (see --init-adapter), which is also their reference policy.",
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
    add_config_arg(p, help="distill.toml to read ([train] and the other tables; default: $DISTILL_CONFIG, else "
                           "./distill.toml), or a FILE.json object of training options (TrainConfig fields), read "
                           "over [train]")
    p.add_argument("--init-adapter", type=Path, default=None, metavar="DIR",
                   help="--method dpo/kto: the adapter to start from, which is also the reference policy (default: "
                        "RUN/adapter, the run's SFT adapter, when it exists; else a fresh LoRA on the base student)")
    p.add_argument("--restart", action="store_true", help="discard checkpoints or a finished adapter and start over")
    g = p.add_argument_group("on-policy teacher (--method on-policy)")
    g.add_argument("--teacher", default=None, metavar="BACKEND:MODEL",
                   help="the teacher that scores the student's samples (default: $DISTILL_TEACHER, [teacher] in "
                        "distill.toml); it must be able to score given tokens (see `distill config`) and share the "
                        "student's tokenizer, e.g. local:DIR or local:DIR?adapter=ADAPTER_DIR")
    g = p.add_argument_group("training options (over --config and [train] in distill.toml)")
    add_options(g, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`distill train`: `distill.api.train` with the options resolved from the flags and --config."""
    from distill import api

    config = build_config(args)
    if config.method == "on-policy":
        return run_on_policy(args, config)
    result = api.train(args.source, args.output, student=args.student, replay=args.replay,
                       use_replay=not args.no_replay, reviewed=args.reviewed, init_adapter=args.init_adapter,
                       restart=args.restart, progress=True, **config.to_dict())
    s, method = result.summary, config.method
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    if method == "sft":
        api.say(f"adapter written to {result.output_dir}: {s['data']['trained']} examples "
                f"({s['data']['dropped_over_length']} dropped as longer than {config.max_length} tokens), "
                f"{s['replay']['per_epoch']} replay examples per epoch, {result.steps} steps, final loss "
                f"{result.final_loss}, {result.tokens_per_s:.0f} tokens/s" + resumed)
        return 0
    if method == "kto":
        api.say(f"KTO weights: desirable {s['data']['desirable_weight']:.3g} x {s['data']['desirable']}, undesirable "
                f"{s['data']['undesirable_weight']:.3g} x {s['data']['undesirable']}")
    last = ", ".join(f"{k} {v}" for k, v in s["last_step"].items())
    api.say(f"adapter written to {result.output_dir}: {s['data']['trained']} rows ({s['data']['dropped_over_length']} "
            f"dropped as longer than {config.max_length} tokens), {result.steps} {method} steps; last step: {last}"
            + resumed)
    return 0


def run_on_policy(args: argparse.Namespace, config: Any) -> int:
    """`--method on-policy`: `distill.api.train` with the teacher that scores the student's samples
    (--teacher, else DISTILL_TEACHER or [teacher])."""
    from distill import api

    result = api.train(args.source, args.output, student=args.student, replay=args.replay,
                       use_replay=not args.no_replay, reviewed=args.reviewed, init_adapter=args.init_adapter,
                       restart=args.restart, progress=True, teacher=args.teacher, **config.to_dict())
    cost = result.summary["teacher_scoring"]
    api.say(f"adapter written to {result.output_dir}: {result.steps} on-policy steps, final loss {result.final_loss}; "
            f"the teacher scored {cost['scored_answer_tokens']} answer tokens ({cost['cache_hits']} cached rows)"
            + (f" (resumed at step {result.resumed_from})" if result.resumed_from else ""))
    return 0


def train_table(args: argparse.Namespace) -> dict[str, Any]:
    """The [train] table of distill.toml, its keys and types checked (the training options it sets)."""
    from distill.training.config import TrainConfig

    path, values = table(args, "train")
    return resolve_fields(TrainConfig, flags={}, table=values, path=path, table_name="train", env={})[0]


def build_config(args: argparse.Namespace) -> Any:
    """TrainConfig from its defaults, then [train] in distill.toml, then --config FILE.json, then the flags."""
    from distill.training.config import TrainConfig

    file_values = train_table(args)
    values: dict[str, Any] = {}
    if args.config is not None and args.config.suffix == ".json":
        try:
            values = json.loads(args.config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{args.config}: cannot read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{args.config}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config}: expected a JSON object of training options")
    flags = {s.name: getattr(args, s.name) for s in settings_of(TrainConfig) if getattr(args, s.name) is not None}
    return TrainConfig.from_mapping({**file_values, **values, **flags}, source=str(args.config or "flags"))

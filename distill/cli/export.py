"""`distill export [ADAPTER_OR_RUN] --format merged|gguf|gguf-lora|ollama -o DIR`: the student for other runtimes.

ADAPTER_OR_RUN is an adapter directory (written by `distill train`: adapter_config.json, and
training.json naming the base), or a run folder: a multi-round run exports the adapter rounds.json
records as promoted (`best_adapter`), a single round its `adapter/`. Like every run on the command
line, a bare NAME means RUNS_DIR/NAME and a path needs a slash. Without it, or with --base-only, the
base student is exported (with --base-only, the base the adapter was trained on). The formats and
their files are described in `distill.student.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli.options import add_config_arg, add_options, resolved
from distill.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distill.stages.config import RunConfig
    from distill.student.export import FORMATS
    from distill.student.gguf_file import GGUF_TYPES

    p = sub.add_parser(
        "export",
        help="export the student (base + adapter) as a merged model, GGUF, LoRA GGUF or an Ollama Modelfile",
        description="Write the student for other runtimes: merged (a transformers model directory for "
                    "transformers/vLLM), gguf (one GGUF file with tokenizer and chat template, for llama.cpp), "
                    "gguf-lora (the adapter alone, for `llama-server --lora`), ollama (GGUF + Modelfile for "
                    "`ollama create NAME -f DIR/Modelfile`). Written to a temporary folder and renamed into place.",
    )
    p.add_argument("source", nargs="?", default=None, metavar="ADAPTER_OR_RUN",
                   help="an adapter directory, or a run (its promoted adapter, else RUN/adapter); "
                        "a bare NAME means RUNS_DIR/NAME, a path needs a slash. Omit it to export the base student")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write (see above)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write")
    p.add_argument("--type", dest="gguf_type", default="f16", choices=GGUF_TYPES,
                   help="GGUF precision: f16 (default), q8_0 (8-bit blocks, half the size) or f32")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights for --format merged (default float32)")
    p.add_argument("--lora", action="store_true",
                   help="--format ollama: the base GGUF plus the adapter as a LoRA GGUF (Modelfile ADAPTER line) "
                        "instead of one merged GGUF")
    p.add_argument("--base-only", action="store_true",
                   help="export the base student without the adapter (the base ADAPTER_OR_RUN was trained on)")
    p.add_argument("--student", default=None,
                   help="base model (default: $DISTILL_STUDENT, else the base named in the adapter's training.json, "
                        "else the embedded SmolLM2)")
    p.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    add_options(p, RunConfig, only=("runs_dir",))
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.student.export import base_of, export

    adapter = find_adapter(args) if args.source is not None else None
    student = base_of(adapter, args.student)
    if args.base_only:
        adapter = None
    output = export(args.format, args.output, adapter=adapter, student=student, gguf_type=args.gguf_type,
                    dtype=args.dtype, lora=args.lora, force=args.force)
    what = "the base student" if adapter is None else f"base + {adapter}"
    print(f"distill: {what} exported as {args.format} to {output}", file=sys.stderr)
    return 0


def find_adapter(args: argparse.Namespace) -> Path:
    """The adapter ADAPTER_OR_RUN names: itself, a multi-round run's promoted adapter, or RUN/adapter."""
    from distill.evaluation.state import STATE, promoted_adapter
    from distill.records.rundir import RunDir
    from distill.stages.config import RunConfig

    runs_dir = resolved(args, RunConfig, "run", ("runs_dir",))["runs_dir"]
    folder = RunDir.named(args.source, runs_dir).require(args.source, "adapter or run").path
    if (folder / "adapter_config.json").is_file():
        return folder
    if (folder / STATE).is_file():
        best = promoted_adapter(folder)
        if best is None:
            raise InputError(f"{folder / STATE}: no round was promoted (best_adapter is null), so the run's student "
                             f"is the base: export it with --base-only, or a round's adapter by its path "
                             f"({folder}/round-K/adapter)")
        return Path(best)
    if (folder / "adapter" / "adapter_config.json").is_file():
        return folder / "adapter"
    raise InputError(f"{folder}: neither an adapter directory (no adapter_config.json) nor a run with one "
                     f"(no {STATE}, no adapter/adapter_config.json); train one with `distill train {folder}`, "
                     "or export the base student by leaving ADAPTER_OR_RUN out")

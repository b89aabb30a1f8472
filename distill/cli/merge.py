"""`distill merge ADAPTER -o DIR`: write base + LoRA adapter as one standalone model directory.

The same as `distill export ADAPTER --format merged -o DIR` (both call `distill.student.export`).
The result is an ordinary transformers model directory (weights + config + tokenizer): plain
`AutoModelForCausalLM.from_pretrained(DIR)` loads it without PEFT, any server that takes a model
directory serves it, and it can be the next round's student (`--student DIR`). It is written to a
temporary directory and renamed into place, so a crash never leaves half a model under DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model and save a standalone model directory",
        description="Apply ADAPTER (a directory written by `distill train`) to the base student, fold the LoRA "
                    "update into the weights and save the result to DIR, loadable by plain transformers. "
                    "The same as `distill export ADAPTER --format merged -o DIR`.",
    )
    p.add_argument("adapter", type=Path, metavar="ADAPTER", help="LoRA adapter directory")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write")
    p.add_argument("--student", default=None,
                   help="base model the adapter was trained on (default: the base named in ADAPTER/training.json, "
                        "else $DISTILL_STUDENT, else the embedded SmolLM2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (default float32)")
    p.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.student.export import merge

    output = merge(args.adapter, args.output, student=args.student, dtype=args.dtype, force=args.force)
    print(f"distill: merged model written to {output}", file=sys.stderr)
    return 0

"""`distill merge ADAPTER -o DIR`: write base + LoRA adapter as one standalone model directory.

The result is an ordinary transformers model directory (weights + config + tokenizer): plain
`AutoModelForCausalLM.from_pretrained(DIR)` loads it without PEFT, any server that takes a model
directory serves it, and it can be the next round's student (`--student DIR`). It is written to a
temporary directory and renamed into place, so a crash never leaves half a model under DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from distill.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model and save a standalone model directory",
        description="Apply ADAPTER (a directory written by `distill train`) to the base student, fold the LoRA "
                    "update into the weights and save the result to DIR, loadable by plain transformers.",
    )
    p.add_argument("adapter", type=Path, metavar="ADAPTER", help="LoRA adapter directory")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write")
    p.add_argument("--student", default=None,
                   help="base model the adapter was trained on (default: $DISTILL_STUDENT, else the embedded SmolLM2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (default float32)")
    p.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = merge(args.adapter, args.output, student=args.student, dtype=args.dtype, force=args.force)
    print(f"distill: merged model written to {output}", file=sys.stderr)
    return 0


def merge(adapter: Path, output: Path, *, student: str | None = None, dtype: str = "float32",
          force: bool = False) -> Path:
    """Merge `adapter` into the base model and save base + adapter to `output` as one model."""
    from distill.student.model import Student

    if output.exists() and any(output.iterdir()) and not force:
        raise ConfigError(f"{output}: already exists and is not empty; pass --force to replace it")
    loaded = Student.load(student, adapter=adapter, device="cpu", dtype=dtype, private=True)  # merging rewrites them
    model = _merged(loaded.model)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    (tmp / "distill-merge.json").write_text(json.dumps({"merged_from": loaded.identity.to_dict()}, indent=2) + "\n",
                                            encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, output)
    return output


def _merged(model: Any) -> Any:
    """The plain transformers model with the LoRA update folded into its weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

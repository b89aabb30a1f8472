"""`distill answer PROMPTS.jsonl -o ANSWERS.jsonl`: the student answers a prompts file.

The file is validated whole before any model loads. Answers stream to `ANSWERS.jsonl.partial`
after every batch; an interrupted run re-run with the same arguments skips what is done, and
the final file appears only when every prompt is answered.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "answer",
        help="answer a prompts file with the student",
        description="Answer every prompt in PROMPTS (JSONL rows {\"id\", \"prompt\"} or {\"id\", \"messages\"}, "
                    "optional \"reference\" and \"meta\") with the student model, in batches, and write one "
                    "row per answer to OUTPUT. Greedy decoding unless --temperature is above 0. "
                    "An interrupted run resumes when re-run with the same arguments.",
    )
    p.add_argument("prompts", type=Path, help="JSONL file of prompts")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL file to write the answers to")
    add_generation_args(p)
    p.set_defaults(func=run)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that makes the student generate."""
    g = p.add_argument_group("generation")
    g.add_argument("--student", default=None,
                   help="model directory or hub id (default: $DISTILL_STUDENT, else the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--adapter", default=None, help="a LoRA adapter directory (from `distill train`) to apply")
    g.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1.0)")
    g.add_argument("--samples", type=int, default=1, help="answers per prompt; needs --temperature > 0 (default 1)")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    g.add_argument("--batch-size", type=at_least_one("--batch-size"), default=32,
                   help="prompts generated together (default 32)")


def at_least_one(flag: str):  # type: ignore[no-untyped-def]
    """An argparse type: an int of at least 1, so a bad value is a usage error before any model loads."""
    def parse(text: str) -> int:
        value = int(text)  # a ValueError reads "invalid int value", as with type=int
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def generation_params(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from distill.student.model import GenerationParams

    return GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, samples=args.samples, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from distill.records.prompts import read_prompts
    from distill.stages.answer import answer_to_file

    prompts = read_prompts(args.prompts)  # validate the whole file before loading any model
    params = generation_params(args)
    print(f"distill: {len(prompts)} prompts from {args.prompts}", file=sys.stderr)
    started = time.monotonic()
    rows = answer_to_file(prompts, args.output, params, source=args.student, adapter=args.adapter,
                          batch_size=args.batch_size)
    elapsed = time.monotonic() - started
    print(f"distill: wrote {len(rows)} answers to {args.output} in {elapsed:.1f} s", file=sys.stderr)
    return 0

"""`distill dataset NAME --format hf|parquet -o DIR`: a run's training data as a Hugging Face dataset with a card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli.options import add_run_name, run_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distill.records.dataset import FORMATS

    p = sub.add_parser(
        "dataset", help="write a run's training rows as a Hugging Face dataset (save_to_disk or Parquet) with a card",
        description="Write runs/NAME's sft.jsonl and prefs.jsonl (every round's, for a multi-round run) to DIR: "
                    "`hf` as a datasets DatasetDict (save_to_disk; splits sft and prefs, ready for push_to_hub), "
                    "`parquet` as sft.parquet and prefs.parquet. The rows are in the conversational formats TRL's "
                    "SFTTrainer and DPOTrainer load; DIR/README.md is a dataset card naming the teacher, templates, "
                    "filters and counts.")
    add_run_name(p)
    p.add_argument("--format", choices=FORMATS, default="hf", help="hf (save_to_disk) or parquet (default: hf)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder to write")
    p.add_argument("--license", default="other", help="the licence field of the card (default: other)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.records.dataset import export

    counts = export(run_folder(args).path, args.output, fmt=args.format, license=args.license)
    print(f"wrote {args.output} ({args.format}): " + ", ".join(f"{k} {v} rows" for k, v in counts.items())
          + f"; card: {args.output / 'README.md'}", file=sys.stderr)
    return 0

"""`distill review NAME --export FILE.csv` / `--import FILE.csv`: a person reviews the training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli.options import add_run_name, run_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review", help="export a run's training rows for human review, or import the decisions",
        description="--export writes runs/NAME/sft.jsonl as a CSV with prompt, original answer, revision and empty "
                    "decision/edited columns; write accept, reject or edit (new text in 'edited') per row. "
                    "--import reads it back into runs/NAME/sft.reviewed.jsonl (the rejected rows into "
                    "sft.review-rejected.jsonl); `distill train runs/NAME --reviewed` then trains on reviewed rows "
                    "only, and `distill train runs/NAME --method kto` takes both as desirable and undesirable answers.")
    add_run_name(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", type=Path, metavar="FILE.csv", help="write the rows to review")
    mode.add_argument("--import", dest="import_", type=Path, metavar="FILE.csv", help="read the decisions back")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.evaluation import review

    root = run_folder(args).path
    if args.export:
        n = review.export(root, args.export)
        print(f"wrote {n} rows to {args.export}: fill 'decision' (accept / reject / edit) and 'edited'", file=sys.stderr)
        return 0
    counts = review.import_decisions(root, args.import_)
    kept = counts["accept"] + counts["edit"]
    print(f"{kept} reviewed rows in {root / review.REVIEWED} "
          f"(accepted {counts['accept']}, edited {counts['edit']}, rejected {counts['reject']}, "
          f"undecided {counts['undecided']} left out); rejected rows in {root / review.REVIEW_REJECTED}",
          file=sys.stderr)
    return 0

"""`distill review NAME --export FILE.csv` / `--import FILE.csv` / `--serve`: a person reviews the training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli.options import add_run_name, run_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review", help="review a run's training rows: in the browser (--serve), or as a CSV (--export / --import)",
        description="--serve starts a local review page (prints its URL with a random token; Ctrl-C stops it): "
                    "each row's prompt, original, critique, revision with a word diff, checks and judge verdicts; "
                    "accept, reject or edit (keys j/k, a/r/e), each decision saved at once into "
                    "runs/NAME/sft.reviewed.jsonl (a multi-round run: round-K/sft.reviewed.jsonl). "
                    "--export writes runs/NAME/sft.jsonl as a CSV with prompt, original answer, revision and empty "
                    "decision/edited columns; write accept, reject or edit (new text in 'edited') per row. "
                    "--import reads it back into runs/NAME/sft.reviewed.jsonl (the rejected rows into "
                    "sft.review-rejected.jsonl); `distill train runs/NAME --reviewed` then trains on reviewed rows "
                    "only, and `distill train runs/NAME --method kto` takes both as desirable and undesirable answers.")
    add_run_name(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", type=Path, metavar="FILE.csv", help="write the rows to review")
    mode.add_argument("--import", dest="import_", type=Path, metavar="FILE.csv", help="read the decisions back")
    mode.add_argument("--serve", action="store_true", help="review in the browser: start a local review page")
    p.add_argument("--host", default="127.0.0.1",
                   help="with --serve: the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="with --serve: the port (default 0: a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.evaluation import review

    root = run_folder(args).path
    if args.serve:
        return serve(root, args.host, args.port)
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


def serve(root: Path, host: str, port: int) -> int:
    """Run the review page until Ctrl-C, printing its URL (the token in it is required by every request)."""
    from distill.evaluation.review_server import ReviewServer

    with ReviewServer(root, host=host, port=port) as server:
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: bound to {host}: other machines can reach the page (the token is still required)",
                  file=sys.stderr)
        print(server.url, flush=True)
        print(f"reviewing {root}: decisions are saved as you make them; "
              f"{'/report.html links to each round; ' if (root / 'rounds.json').exists() else ''}Ctrl-C stops",
              file=sys.stderr, flush=True)
        server.wait()
    return 0

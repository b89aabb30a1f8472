"""`distill eval`: compare the base student (or one adapter) with an adapter on held-out prompts,
and `distill report NAME`: the summary of a multi-round run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.evaluation.gate import Policy


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="compare base (or an adapter) with an adapter on held-out prompts; apply the gate",
        description="Both models answer held-out PROMPTS (never used in training). Reports objective reference "
                    "checks, a position-swapped pairwise judge (the configured teacher; a warning when it also wrote "
                    "the training data), fidelity to held-out teacher revisions (NLL), and forgetting (replay NLL, "
                    "KL from the current model), each with a 95% bootstrap interval, and the gate's decision.")
    p.add_argument("prompts", type=Path, help="held-out prompts (JSONL, with references where possible)")
    p.add_argument("--adapter", required=True, help="the new adapter directory")
    p.add_argument("--against", default=None, help="the current adapter (default: the base student)")
    p.add_argument("--student", default=None, help="base model (default $DISTILL_STUDENT or the embedded student)")
    p.add_argument("--revisions", type=Path, default=None, help="held-out teacher revisions (sft.jsonl) for fidelity")
    p.add_argument("--replay", type=Path, default=None, help="replay/general chat set (sft format) for forgetting")
    p.add_argument("--no-judge", action="store_true", help="skip the pairwise judge (no teacher calls)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    add_policy_args(p)
    p.add_argument("-o", "--output", type=Path, default=None, help="write the metrics and decision as JSON")
    p.set_defaults(func=run_eval)

    r = sub.add_parser("report", help="print the summary of a multi-round run and rewrite its report.md",
                       description="Print the per-round summary table of runs/NAME (from `distill run --rounds`) "
                                   "and regenerate runs/NAME/report.md with its PNG plots.")
    r.add_argument("name", help="run name (or a path to the run directory)")
    r.add_argument("--runs-dir", type=Path, default=Path("runs"))
    r.set_defaults(func=run_report)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gate")
    g.add_argument("--primary", choices=["checks", "judge", "fidelity"], default="checks",
                   help="metric whose interval must clear the margin (default: checks, the objective one)")
    g.add_argument("--margin", type=float, default=0.0, help="the primary metric's lower bound must exceed this")
    g.add_argument("--max-nll-increase", type=float, default=0.05, help="allowed relative rise in replay NLL (0.05)")
    g.add_argument("--max-kl", type=float, default=None, help="allowed mean per-token KL from the current model")


def policy_of(args: argparse.Namespace) -> Policy:
    from distill.evaluation.gate import Policy

    return Policy(primary=args.primary, margin=args.margin, max_nll_increase=args.max_nll_increase, max_kl=args.max_kl)


def run_eval(args: argparse.Namespace) -> int:
    from distill.evaluation.evaluate import evaluate
    from distill.evaluation.gate import decide
    from distill.records.files import write_atomic
    from distill.records.prompts import read_prompts
    from distill.stages.round import open_round_teacher
    from distill.stages.templates import load_prompt_set
    from distill.student.model import Student
    from distill.training.examples import read_examples

    prompts = read_prompts(args.prompts)
    revisions = read_examples(args.revisions) if args.revisions else []
    replay = read_examples(args.replay, source="replay") if args.replay else []
    current = Student.load(args.student, adapter=args.against)
    new = Student.load(args.student, adapter=args.adapter)
    teacher = None
    if not args.no_judge:
        teacher, _ = open_round_teacher(None)
    result = evaluate(current, new, prompts, teacher=teacher, prompt_set=load_prompt_set() if teacher else None,
                      revisions=revisions, replay=replay, max_new_tokens=args.max_new_tokens)
    decision = decide(result.metrics, policy_of(args))
    data = {**result.to_dict(), "decision": decision.to_dict()}
    for name, metric in data["metrics"].items():
        shown = {k: (f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}] n={v['n']}" if isinstance(v, dict) else v)
                 for k, v in metric.items()}
        print(f"{name:10s} " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(("PROMOTE: " if decision.promote else "REFUSE: ") + "; ".join(decision.reasons))
    if args.output:
        write_atomic(args.output, json.dumps(data, indent=2) + "\n")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from distill.cli.rundir import run_directory
    from distill.evaluation.report import load, summary_table, write_report

    root = run_directory(args.name, args.runs_dir)
    path = write_report(root)
    print(summary_table(load(root)))
    print(f"\nreport: {path}", file=sys.stderr)
    return 0

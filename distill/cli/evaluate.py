"""`distill eval`: compare the base student (or one adapter) with an adapter on held-out prompts,
and `distill report NAME`: the summary of a multi-round run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from distill.cli.answer import PROMPTS_HELP, add_engine_args, add_source_args, server_option, source_columns
from distill.cli.options import add_config_arg, add_options, add_run_name, config_env, given, resolved, run_folder

if TYPE_CHECKING:
    from distill.evaluation.gate import Policy


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distill.evaluation.config import RoundsConfig

    p = sub.add_parser(
        "eval", help="compare base (or an adapter) with an adapter on held-out prompts; apply the gate",
        description="Both models answer held-out PROMPTS (never used in training). Reports objective reference "
                    "checks, a position-swapped pairwise judge (the configured teacher; a warning when it also wrote "
                    "the training data), fidelity to held-out teacher revisions (NLL), and forgetting (replay NLL, "
                    "KL from the current model), each with a 95% bootstrap interval, and the gate's decision.")
    p.add_argument("prompts", help=PROMPTS_HELP)
    add_source_args(p)
    p.add_argument("--adapter", required=True, help="the new adapter directory")
    p.add_argument("--against", default=None, help="the current adapter (default: the base student)")
    p.add_argument("--student", default=None, help="base model (default $DISTILL_STUDENT or the embedded student)")
    p.add_argument("--revisions", type=Path, default=None, help="held-out teacher revisions (sft.jsonl) for fidelity")
    p.add_argument("--replay", type=Path, default=None, help="replay/general chat set (sft format) for forgetting")
    add_engine_args(p)
    p.add_argument("--against-model", default=None, metavar="NAME",
                   help="with --engine server: the served model of the current student (--against, or the base); "
                        "--student-model names the new adapter's (default: the one with the weight hashes expected)")
    add_options(p, RoundsConfig, only=("judge", "eval_max_new_tokens", "general", "logprob_rows"),
                flags={"eval_max_new_tokens": "--max-new-tokens"})
    add_policy_args(p)
    add_config_arg(p)
    p.add_argument("-o", "--output", type=Path, default=None, help="write the metrics and decision as JSON")
    p.add_argument("--rows", type=Path, default=None, metavar="FILE",
                   help="write one JSONL row per held-out prompt: both answers, whether each passed its checks, "
                        "the judge's score")
    p.set_defaults(func=run_eval)

    r = sub.add_parser("report", help="print the summary of a multi-round run and rewrite its report.md",
                       description="Print the per-round summary table of runs/NAME (from `distill run --rounds`) "
                                   "and regenerate runs/NAME/report.md with its PNG plots.")
    add_run_name(r)
    r.set_defaults(func=run_report)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """The gate's flags, from `distill.evaluation.gate.Policy` (also the [gate] table of distill.toml)."""
    from distill.evaluation.gate import Policy

    add_options(p.add_argument_group("gate"), Policy)


def policy_of(args: argparse.Namespace) -> Policy:
    """The gate's policy: flags > [gate] in distill.toml > Policy's defaults."""
    from distill import api
    from distill.evaluation.gate import Policy

    with config_env(args):
        return api.policy_of(given(args, Policy))


def run_eval(args: argparse.Namespace) -> int:
    """`distill eval`: `distill.api.evaluate` with the flags the user gave; prints each metric and the verdict."""
    from distill import api
    from distill.evaluation.gate import Policy
    from distill.evaluation.report import kind_table
    from distill.records.files import write_atomic

    result = api.evaluate(args.prompts, args.adapter, against=args.against, student=args.student, judge=args.judge,
                          revisions=args.revisions, replay=args.replay, general=args.general,
                          policy=given(args, Policy),
                          max_new_tokens=args.eval_max_new_tokens, columns=source_columns(args),
                          served=served_pair(args), logprob_rows=args.logprob_rows)
    data = result.to_dict()
    for name, metric in data["metrics"].items():
        shown = {k: (f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}] n={v['n']}" if isinstance(v, dict) else v)
                 for k, v in metric.items() if k != "by_kind"}
        print(f"{name:10s} " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    by_kind = data["metrics"].get("checks", {}).get("by_kind")
    if by_kind:
        print("\n" + "\n".join(kind_table(by_kind, "Pass rate by kind (current: --against or the base; new: --adapter):")))
    for warning in result.evaluation.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(("PROMOTE: " if result.decision.promote else "REFUSE: ") + "; ".join(result.decision.reasons))
    if args.output:
        write_atomic(args.output, json.dumps(data, indent=2) + "\n")
    if args.rows:
        write_atomic(args.rows, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.evaluation.rows))
    return 0


def served_pair(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """With --engine server: (current, new) as the server serves them, each checked to be the student
    meant (`distill.teachers.served_student.connect_pair`); None for the local engine."""
    from distill.errors import ConfigError
    from distill.stages.config import RunConfig
    from distill.teachers.served_student import connect_pair

    server = server_option(args)
    if server is None:
        if args.against_model is not None:
            raise ConfigError("--against-model is read only with --engine server")
        return None
    return connect_pair(server, args.student, args.against, args.adapter, against_model=args.against_model,
                        concurrency=resolved(args, RunConfig, "run", ("batch_size",))["batch_size"])


def run_report(args: argparse.Namespace) -> int:
    from distill.evaluation.report import load, summary_table, write_report

    root = run_folder(args).path
    path = write_report(root)
    print(summary_table(load(root)))
    print(f"\nreport: {path}", file=sys.stderr)
    return 0

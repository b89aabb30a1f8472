"""`distill run PROMPTS.jsonl --name NAME` and `distill critique ANSWERS.jsonl --name NAME`.

`run` is a whole round: the student answers, the teacher critiques and revises through a chain
of principles, the filters keep only verified improvements, and the dataset files are written
under `runs/NAME/`. `critique` starts from an existing answers file. Both resume when re-run
with the same arguments, and print a summary table at the end.

With `--batch` the teacher requests go to the provider's batch API (see `distill.teachers.batch`); with
`--no-wait` as well, the command exits with status 75 once its batches are submitted, and the
same command run again later continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli.answer import PROMPTS_HELP, add_generation_args, add_source_args
from distill.cli.evaluate import add_policy_args
from distill.cli.options import add_config_arg, add_options, config_env, given

EPILOG = ("Artefacts in runs/NAME/: answers.jsonl, critiques.jsonl, revisions.jsonl, rejected.jsonl (with reasons), "
          "sft.jsonl (prompt/completion chat format), prefs.jsonl (prompt, chosen = revision, rejected = original) "
          "and manifest.json. The teacher comes from DISTILL_TEACHER (default local:default, the embedded model); "
          "set DISTILL_OFFLINE=1 or --offline to replay from the cache with zero teacher calls. Every option can "
          "also be set in the [run] table of distill.toml (flags win over it).")


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a distillation round: answer, critique and revise, filter, dataset",
                         description="Run one round on PROMPTS: the student answers, the teacher critiques and "
                                     "revises, the filters keep verified improvements. Re-run to resume.",
                         epilog=EPILOG)
    run.add_argument("prompts", help=PROMPTS_HELP)
    _common(run)
    add_source_args(run)
    add_generation_args(run)
    _rounds(run)
    run.set_defaults(func=run_command)

    critique = sub.add_parser("critique", help="critique and revise an existing answers file",
                              description="Critique, revise and filter ANSWERS (as written by `distill answer`).",
                              epilog=EPILOG)
    critique.add_argument("answers", type=Path, help="JSONL answers file from `distill answer`")
    _common(critique)
    critique.set_defaults(func=critique_command)


def _common(p: argparse.ArgumentParser) -> None:
    from distill.stages.config import RunConfig

    p.add_argument("--name", required=True, help="run name: artefacts go to RUNS_DIR/NAME/")
    add_options(p, RunConfig, only=("runs_dir",))
    add_config_arg(p)
    t = p.add_argument_group("teacher")
    add_options(t, RunConfig, only=("teacher", "offline", "chain", "stages", "prompts_dir", "teacher_max_tokens",
                                    "concurrency", "batch", "batch_wait", "pairs"))
    f = p.add_argument_group("filters")
    add_options(f, RunConfig, only=("filters", "keep_acceptable", "verified_positives", "max_length_ratio",
                                    "unchanged_threshold", "dedup_threshold", "skip_consistent"))
    s = p.add_argument_group("self-training (--teacher none, or --self-first with a teacher)")
    add_options(s, RunConfig, only=("self_first", "self_keep", "self_agreement", "self_stop"))


def _rounds(p: argparse.ArgumentParser) -> None:
    from distill.evaluation.config import RoundsConfig

    r = p.add_argument_group("rounds (answer, critique, train, evaluate, promote; repeat)")
    r.add_argument("--rounds", type=int, default=None,
                   help="run up to N rounds: each trains an adapter on the survivors and promotes it only if the "
                        "gate says it beats the current student on --heldout; stops at the first refusal")
    r.add_argument("--heldout", type=Path, default=None,
                   help="held-out prompts for the gate (never trained on); required with --rounds")
    add_options(r, RoundsConfig, only=("replay", "general"))
    r.add_argument("--train-option", action="append", default=[], metavar="FIELD=VALUE",
                   help="a training option (TrainConfig field), e.g. --train-option epochs=2; repeatable; "
                        "over [train] in distill.toml")
    r.add_argument("--preference-option", action="append", default=[], metavar="FIELD=VALUE",
                   help="a training option for the preference step of --methods sft,dpo (or sft,kto) only, over "
                        "--train-option, e.g. --preference-option learning_rate=5e-5 --preference-option "
                        "max_steps=null; repeatable")
    add_options(r, RoundsConfig, only=("methods", "preference_pairs", "preference_samples", "preference_temperature",
                                       "judge", "eval_max_new_tokens", "logprob_rows"))
    add_policy_args(p)


def _train_options(pairs: list[str], flag: str = "--train-option") -> dict:  # type: ignore[type-arg]
    import json

    from distill.errors import ConfigError

    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{flag} {pair!r}: expected FIELD=VALUE, e.g. epochs=2")
        try:
            options[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[name.strip()] = value
    return options


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The round's RunConfig: the flags given > [run] in distill.toml > environment > the defaults
    (`distill.api.run_config`)."""
    from distill import api
    from distill.stages.config import RunConfig
    from distill.student.model import GenerationParams

    with config_env(args):
        return api.run_config(args.name, **given(args, RunConfig, GenerationParams))[0]


def run_command(args: argparse.Namespace) -> int:
    """`distill run`: `distill.api.run` with the flags the user gave."""
    from distill import api
    from distill.evaluation.config import RoundsConfig
    from distill.evaluation.gate import Policy
    from distill.records.tables import Columns
    from distill.stages.config import RunConfig
    from distill.student.model import GenerationParams

    result = api.run(args.prompts, name=args.name, rounds=args.rounds, heldout=args.heldout,
                     train_options=_train_options(args.train_option),
                     preference_options=_train_options(args.preference_option, "--preference-option"),
                     policy=given(args, Policy),
                     **given(args, RunConfig, GenerationParams, RoundsConfig, Columns))
    print(result.table())
    where = (f"report: {result.run_dir / 'report.md'}" if args.rounds is not None else
             f"artefacts in {result.run_dir}/ (manifest.json has the full accounting)")
    print(f"\n{where}", file=sys.stderr)
    return 0


def critique_command(args: argparse.Namespace) -> int:
    from distill.records.prompts import read_answers
    from distill.stages.round import critique_answers

    answers = read_answers(args.answers)
    config = _config(args)
    summary = critique_answers(config, answers)
    _print(summary, config.run_dir)
    return 0


def _print(summary, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    print(summary.table())
    print(f"\nartefacts in {run_dir}/ (manifest.json has the full accounting)", file=sys.stderr)

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

from distill.cli.answer import add_generation_args, generation_params

EPILOG = ("Artefacts in runs/NAME/: answers.jsonl, critiques.jsonl, revisions.jsonl, rejected.jsonl (with reasons), "
          "sft.jsonl (prompt/completion chat format), prefs.jsonl (prompt, chosen = revision, rejected = original) "
          "and manifest.json. The teacher comes from DISTILL_TEACHER (default local:default, the embedded model); "
          "set DISTILL_OFFLINE=1 or --offline to replay from the cache with zero teacher calls.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a distillation round: answer, critique and revise, filter, dataset",
                         description="Run one round on PROMPTS: the student answers, the teacher critiques and "
                                     "revises, the filters keep verified improvements. Re-run to resume.",
                         epilog=EPILOG)
    run.add_argument("prompts", type=Path, help="JSONL prompts file")
    _common(run)
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
    p.add_argument("--name", required=True, help="run name: artefacts go to RUNS_DIR/NAME/")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default ./runs)")
    t = p.add_argument_group("teacher")
    t.add_argument("--teacher", default=None,
                   help="backend:model, overriding DISTILL_TEACHER (e.g. openai:gpt-4o-mini); 'none' self-trains: "
                        "no teacher calls, the student's own samples that pass their prompt's check are the data")
    t.add_argument("--offline", action="store_true", default=None,
                   help="never call the teacher: replay from the cache; a miss is an error (also DISTILL_OFFLINE=1)")
    t.add_argument("--chain", default="default", help="chain of principles from principles.toml (default 'default')")
    t.add_argument("--stages", default=None, help="comma-separated principles, overriding --chain")
    t.add_argument("--prompts-dir", default=None, help="templates and principles folder (default $DISTILL_PROMPTS or ./prompts)")
    t.add_argument("--teacher-max-tokens", type=int, default=1024, help="the teacher's reply limit (default 1024)")
    t.add_argument("--concurrency", type=int, default=None, help="rows in flight at once (default: teacher concurrency)")
    t.add_argument("--batch", action="store_true", default=None,
                   help="send teacher requests that are not cached as provider batches (OpenAI Batch, Anthropic "
                        "Message Batches): about half the price, answered within 24 h (also DISTILL_TEACHER_BATCH=1)")
    t.add_argument("--no-wait", action="store_true",
                   help="with --batch: exit with status 75 once the batches are submitted; run the same command "
                        "again later to continue (`distill batch status NAME` shows progress)")
    f = p.add_argument_group("filters")
    f.add_argument("--filters", default=None,
                   help=lambda: f"comma-separated filters in order (default {','.join(_default_filters())})")
    f.add_argument("--keep-acceptable", action="store_true",
                   help="also keep accepted answers that no check verifies as positive examples (default: dropped)")
    f.add_argument("--no-verified-positives", dest="verified_positives", action="store_false",
                   help="drop accepted answers even when they pass their prompt's check (default: kept as "
                        "positive examples)")
    f.add_argument("--max-length-ratio", type=float, default=3.0, help="drop revisions longer than this x original")
    f.add_argument("--unchanged-threshold", type=float, default=1.0,
                   help="drop revisions at least this similar to the original, by difflib ratio over the text with "
                        "whitespace normalised (default 1.0: only a revision equal up to whitespace; a change of "
                        "case, punctuation or line breaks counts)")
    f.add_argument("--dedup-threshold", type=float, default=0.9,
                   help="drop near-duplicate prompts at this 3-gram Jaccard (0 turns it off)")
    f.add_argument("--skip-consistent", type=float, default=None,
                   help="with --samples > 1: skip prompts whose samples agree at least this often (e.g. 0.8)")
    s = p.add_argument_group("self-training (--teacher none, or --self-first with a teacher)")
    s.add_argument("--self-first", action="store_true",
                   help="with a teacher and --samples K: samples that pass their prompt's check become training "
                        "rows directly; the teacher is asked only about prompts where no sample passes")
    s.add_argument("--self-keep", type=int, default=2,
                   help="distinct passing samples kept per prompt (default 2)")
    s.add_argument("--self-agreement", type=float, default=0.6,
                   help="prompts without a reference: keep the majority answer when at least this share of the "
                        "samples agrees with it (default 0.6)")


def _default_filters() -> tuple[str, ...]:
    from distill.stages.filters import DEFAULT_ORDER

    return DEFAULT_ORDER


def _rounds(p: argparse.ArgumentParser) -> None:
    from distill.cli.evaluate import add_policy_args

    r = p.add_argument_group("rounds (answer, critique, train, evaluate, promote; repeat)")
    r.add_argument("--rounds", type=int, default=None,
                   help="run up to N rounds: each trains an adapter on the survivors and promotes it only if the "
                        "gate says it beats the current student on --heldout; stops at the first refusal")
    r.add_argument("--heldout", type=Path, default=None,
                   help="held-out prompts for the gate (never trained on); required with --rounds")
    r.add_argument("--replay", type=Path, default=None,
                   help="general prompts (or chats) the base student answers: 3/4 are mixed into training against "
                        "forgetting, 1/4 measure forgetting (default: the base answers to --heldout measure it)")
    r.add_argument("--train-option", action="append", default=[], metavar="FIELD=VALUE",
                   help="a training option (TrainConfig field), e.g. --train-option epochs=2; repeatable")
    r.add_argument("--no-judge", action="store_true", help="evaluate without the pairwise judge (no teacher calls)")
    r.add_argument("--eval-max-new-tokens", type=int, default=128, help="answer length for the evaluation")
    add_policy_args(p)


def _train_options(pairs: list[str]) -> dict:  # type: ignore[type-arg]
    import json

    from distill.errors import ConfigError

    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--train-option {pair!r}: expected FIELD=VALUE, e.g. epochs=2")
        try:
            options[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[name.strip()] = value
    return options


def _config(args: argparse.Namespace, generation=None):  # type: ignore[no-untyped-def]
    from distill.stages.round import RunConfig

    return RunConfig(
        name=args.name, runs_dir=args.runs_dir, student=getattr(args, "student", None),
        adapter=getattr(args, "adapter", None),
        **({"generation": generation, "batch_size": args.batch_size} if generation else {}),
        skip_consistent=args.skip_consistent, chain=args.chain,
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else (),
        prompts_dir=args.prompts_dir,
        filters=(_default_filters() if args.filters is None
                 else tuple(s.strip() for s in args.filters.split(",") if s.strip())),
        keep_acceptable=args.keep_acceptable, verified_positives=args.verified_positives,
        max_length_ratio=args.max_length_ratio, unchanged_threshold=args.unchanged_threshold,
        self_first=args.self_first, self_keep=args.self_keep, self_agreement=args.self_agreement,
        dedup_threshold=args.dedup_threshold or None, teacher_max_tokens=args.teacher_max_tokens,
        concurrency=args.concurrency, offline=args.offline, teacher=args.teacher,
        batch=args.batch, batch_wait=not args.no_wait,
    )


def run_command(args: argparse.Namespace) -> int:
    from distill.records.prompts import read_prompts
    from distill.stages.round import run_round

    prompts = read_prompts(args.prompts)  # validate before any model loads
    config = _config(args, generation_params(args))
    if args.rounds is not None:
        return _run_rounds(args, config, prompts)
    summary = run_round(config, prompts)
    _print(summary, config.run_dir)
    return 0


def _run_rounds(args: argparse.Namespace, config, prompts) -> int:  # type: ignore[no-untyped-def]
    from distill.cli.evaluate import policy_of
    from distill.errors import ConfigError
    from distill.evaluation.report import load, summary_table
    from distill.evaluation.rounds import RoundsConfig, run_rounds
    from distill.records.prompts import read_prompts

    if args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    if args.heldout is None:
        raise ConfigError("--rounds needs --heldout FILE: held-out prompts the gate evaluates on (never trained on)")
    read_prompts(args.heldout)  # validate before any model loads
    rounds = RoundsConfig(run=config, rounds=args.rounds, heldout=args.heldout,
                          train_options=_train_options(args.train_option), policy=policy_of(args),
                          eval_max_new_tokens=args.eval_max_new_tokens, judge=not args.no_judge,
                          replay=args.replay)
    run_rounds(rounds, prompts)
    print(summary_table(load(config.run_dir)))
    print(f"\nreport: {config.run_dir / 'report.md'}", file=sys.stderr)
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

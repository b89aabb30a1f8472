"""`distill grow SEEDS.jsonl -o PROMPTS.jsonl --n N --method self-instruct|evol|red-team`: more prompts from a few.

The teacher writes new prompts from the seed prompts (see `distill.stages.grow` for the methods
and the filters). Writes PROMPTS.jsonl (a prompts file `distill run` takes as it is, each row with
its method, parent ids and template ids in `meta`), PROMPTS.rejected.jsonl (every dropped
candidate with its filter and reason), PROMPTS.summary.json and PROMPTS.novelty.png (the novelty
distribution), and prints the summary. Teacher calls are cached: the same command again costs
nothing and runs offline; with --batch the requests go to the provider's batch API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from distill.cli.answer import add_source_args, source_columns
from distill.cli.options import add_config_arg, add_options, resolve


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distill.stages.config import RunConfig
    from distill.stages.grow import GrowConfig

    p = sub.add_parser(
        "grow",
        help="grow a prompt set with the teacher (Self-Instruct, Evol-Instruct, red-team), keeping only new prompts",
        description="Ask the teacher for new prompts from SEEDS (a prompts file): `self-instruct` shows it a few "
                    "prompts and asks for different ones, `evol` rewrites one prompt into a harder one, `red-team` "
                    "asks for adversarial prompts per harm category (and harmless look-alikes). Candidates are "
                    "dropped, with the reason in OUTPUT's .rejected.jsonl, when malformed, unanswerable from text, "
                    "blocklisted, too short or long, duplicates, or not novel (ROUGE-L against a seed or kept prompt "
                    "at or above --novelty).",
        epilog="Writes OUTPUT, OUTPUT.rejected.jsonl, OUTPUT.summary.json and OUTPUT.novelty.png (stem of OUTPUT). "
               "Re-running the same command is free: every teacher call is cached (DISTILL_OFFLINE=1 replays with "
               "zero calls). Every option can also be set in the [grow] table of distill.toml.",
    )
    p.add_argument("seeds", type=Path, help="the seed prompts: a JSONL, Parquet or CSV file, a saved dataset folder, "
                                            "or hub:OWNER/NAME")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL prompts file to write")
    add_options(p.add_argument_group("growth"), GrowConfig)
    add_source_args(p)
    t = p.add_argument_group("teacher")
    add_options(t, RunConfig, only=("teacher", "offline", "prompts_dir", "concurrency", "batch", "batch_wait"))
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.errors import InputError
    from distill.records.files import write_atomic, write_jsonl
    from distill.records.prompts import read_prompts
    from distill.stages.config import RunConfig
    from distill.stages.grow import GrowConfig, histogram, outputs, summary, table
    from distill.stages.round import open_round_teacher
    from distill.stages.templates import load_prompt_set

    seeds = read_prompts(args.seeds, source_columns(args))
    config = GrowConfig(**resolve(args, GrowConfig, "grow")[0])
    run_cfg = RunConfig(name="grow", **resolve(args, RunConfig, "run", only=(
        "teacher", "offline", "prompts_dir", "concurrency", "batch", "batch_wait"))[0])
    files = outputs(args.output)
    if files["prompts"].resolve() == args.seeds.resolve():
        raise InputError(f"{args.output}: the output would overwrite the seeds; give another -o")
    files["prompts"].parent.mkdir(parents=True, exist_ok=True)
    work_dir = files["prompts"].with_name(files["prompts"].name + ".batches")
    handle, settings = open_round_teacher(run_cfg.offline, run_cfg.teacher, batch=run_cfg.batch, run_dir=work_dir,
                                          wait=run_cfg.batch_wait)
    if handle is None:
        raise InputError("distill grow needs a teacher (the teacher is `none`); set --teacher or DISTILL_TEACHER")
    print(f"distill: growing {len(seeds)} seed prompts from {args.seeds} by {config.method} to {config.n} new prompts "
          f"with {settings.name}", file=sys.stderr)
    out, ledger = asyncio.run(_grow(seeds, config, handle, load_prompt_set(run_cfg.prompts_dir),
                                    run_cfg.concurrency or settings.concurrency))
    write_jsonl(files["prompts"], (p.to_row() for p in out.kept))
    write_jsonl(files["rejected"], (r.to_row() for r in out.rejected))
    info = summary(out, config, ledger, len(seeds))
    write_atomic(files["summary"], json.dumps(info, indent=2) + "\n")
    drawn = histogram(out, config.novelty, files["histogram"])
    print(table(info, ledger))
    if len(out.kept) < config.n:
        print(f"distill: warning: kept {len(out.kept)} of {config.n} after {out.requests} requests (the limit); "
              "raise --max-requests, lower --novelty, or add seeds", file=sys.stderr)
    print(f"\nwrote {files['prompts']} ({len(out.kept)} prompts), {files['rejected']}, {files['summary']}"
          + (f", {drawn}" if drawn else ""), file=sys.stderr)
    return 0


async def _grow(seeds, config, handle, prompt_set, concurrency):  # type: ignore[no-untyped-def]
    from distill.stages.accounting import Ledger
    from distill.stages.grow import grow

    ledger = Ledger("grow")
    async with handle:
        out = await grow(seeds, config, handle, prompt_set, ledger=ledger, concurrency=concurrency)
    return out, ledger

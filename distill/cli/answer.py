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
from typing import Any

from distill.cli.options import add_config_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "answer",
        help="answer a prompts file with the student",
        description="Answer every prompt in PROMPTS (JSONL rows {\"id\", \"prompt\"} or {\"id\", \"messages\"}, "
                    "optional \"reference\" and \"meta\") with the student model, in batches, and write one "
                    "row per answer to OUTPUT. Greedy decoding unless --temperature is above 0. "
                    "An interrupted run resumes when re-run with the same arguments.",
    )
    p.add_argument("prompts", help=PROMPTS_HELP)
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL file to write the answers to")
    add_source_args(p)
    add_generation_args(p)
    add_config_arg(p)
    p.set_defaults(func=run)


PROMPTS_HELP = ("prompts: a JSONL, Parquet or CSV file, a folder written by datasets' save_to_disk, or a Hub "
                "dataset (hub:OWNER/NAME); columns prompt (or messages), id and reference unless mapped")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """--prompt-column, --id-column, --reference-column and --split: where a prompts source keeps each field."""
    from distill.cli.options import add_options
    from distill.records.tables import Columns

    add_options(p.add_argument_group("prompt source"), Columns)


def source_columns(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The column mapping of the prompts source(s) named on the command line."""
    from distill.cli.options import resolve
    from distill.records.tables import Columns

    return Columns(**resolve(args, Columns, "run")[0])


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that makes the student generate, from `RunConfig` (the student) and
    `GenerationParams` (decoding); `[run]` in distill.toml sets them too."""
    from distill.cli.options import add_options
    from distill.stages.config import RunConfig
    from distill.student.model import GenerationParams

    g = p.add_argument_group("generation")
    add_options(g, RunConfig, only=("student", "adapter"))
    add_options(g, GenerationParams)
    add_options(g, RunConfig, only=("batch_size",), types={"batch_size": at_least_one("--batch-size")})
    add_engine_args(p)


ENGINE_FIELDS = ("engine", "student_url", "student_model", "student_timeout")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--engine, --student-url, --student-model, --student-timeout: the student served by a server
    (`distill.teachers.served_student`), from `RunConfig`; `[run]` in distill.toml sets them too."""
    from distill.cli.options import add_options
    from distill.stages.config import RunConfig

    add_options(p.add_argument_group("engine (the student's answers from an OpenAI-compatible server)"), RunConfig,
                only=ENGINE_FIELDS)


def server_option(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The student's server (flags > [run] in distill.toml > defaults), or None for the local engine."""
    from distill.cli.options import resolved
    from distill.stages.config import RunConfig
    from distill.teachers.served_student import server_of

    values = resolved(args, RunConfig, "run", ENGINE_FIELDS)
    return server_of(values["engine"], values["student_url"], values["student_model"], values["student_timeout"])


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
    """The decoding parameters: flags > [run] in distill.toml > defaults."""
    from distill.cli.options import resolve
    from distill.student.model import GenerationParams

    return GenerationParams(**resolve(args, GenerationParams, "run")[0])


def student_options(args: argparse.Namespace) -> dict[str, Any]:
    """student, adapter and batch_size: flags > [run] in distill.toml > `RunConfig`'s defaults."""
    from distill.cli.options import resolved
    from distill.stages.config import RunConfig

    return resolved(args, RunConfig, "run", ("student", "adapter", "batch_size"))


def run(args: argparse.Namespace) -> int:
    from distill.records.prompts import read_prompts
    from distill.stages.answer import answer_to_file

    prompts = read_prompts(args.prompts, source_columns(args))  # validate the whole file before loading any model
    params = generation_params(args)
    student = student_options(args)
    print(f"distill: {len(prompts)} prompts from {args.prompts}", file=sys.stderr)
    started = time.monotonic()
    rows = answer_to_file(prompts, args.output, params, source=student["student"], adapter=student["adapter"],
                          batch_size=student["batch_size"], server=server_option(args))
    elapsed = time.monotonic() - started
    print(f"distill: wrote {len(rows)} answers to {args.output} in {elapsed:.1f} s", file=sys.stderr)
    return 0

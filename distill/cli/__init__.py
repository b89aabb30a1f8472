"""The `distill` command line: one sub-command per verb, each in its own module.

Each module defines `add_parser(subparsers)` and a typed function that does the work; this file
only wires them up and turns `DistillError`s into a one-line message and an exit code (no
traceback for errors a user can fix; `DISTILL_DEBUG=1` shows it).

Building the parser must stay cheap (`distill --help` builds every command's parser), so the
modules import what their command needs inside the command function. Where a description or an
argument's help names a constant of a heavier module (a default, a file name), it is given as a
function that returns the text; `Parser` calls it only when that help is printed.

Owns: parsing the command line and turning errors into messages and exit codes; nothing else.
May import: every package of distill, each command inside its command function (start-up).
Must not import: torch, transformers or a teacher SDK at module level; and nothing in distill
imports the CLI (only `distill.__main__` and the `distill` script).
"""

from __future__ import annotations

import argparse
import os
import sys

from distill import __version__
from distill.cli.options import config_env
from distill.cli import (answer, batch, cache, config, convert, dataset, evaluate, export, grow, merge, review, run,
                         serve, teachers, train)
from distill.errors import BatchesPending, DistillError

COMMANDS = (answer, run, grow, batch, train, merge, export, review, serve, dataset, evaluate, convert, cache, config, teachers)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose description and argument help may be functions returning the text,
    called when the help is first formatted (sub-command parsers are of the same class)."""

    def format_help(self) -> str:
        if callable(self.description):
            self.description = self.description()
        for action in self._actions:
            if callable(action.help):
                action.help = action.help()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="distill",
        description="Teacher-student distillation: a small local student answers prompts, a teacher "
                    "critiques and rewrites the answers, LoRA distills the verified corrections, and an "
                    "evaluation gate decides whether the new adapter is promoted.",
        epilog="Environment: DISTILL_STUDENT (student model directory; default the embedded SmolLM2-135M), "
               "DISTILL_TEACHER (backend:model; default local:default), DISTILL_TEACHER_API_KEY / OPENAI_API_KEY / "
               "ANTHROPIC_API_KEY, DISTILL_TEACHER_BASE_URL, DISTILL_OFFLINE=1 (replay from the cache only), "
               "DISTILL_CACHE_DIR (default ./cache), DISTILL_PROMPTS (templates folder), DISTILL_CONFIG (the config "
               "file, default ./distill.toml: [run], [teacher], [train] and [gate] tables; flags win over it). "
               "`distill config` shows every resolved value and where it came from. Run `distill COMMAND --help` "
               "for each command.",
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (argparse printed it) is returned like every other error;
        if not exc.code:       # --help and --version still exit
            raise
        return int(exc.code)
    try:
        with config_env(args):
            return int(args.func(args) or 0)
    except BatchesPending as pending:  # --no-wait: submitted, not finished; not an error
        print(f"distill: {pending}", file=sys.stderr)
        return pending.exit_code
    except DistillError as exc:
        if os.environ.get("DISTILL_DEBUG"):
            raise
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("distill: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `distill ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

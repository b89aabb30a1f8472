"""The command line as a whole: every command explains itself in `--help`."""

from __future__ import annotations

import argparse

import pytest

from distill.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_listed_with_a_summary(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in subcommands():
        assert name in out


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_each_command_help_renders_cleanly(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: distill {name}")
    assert "%%" not in out and "%(" not in out, "a literal % escape leaked into the help text"
    parser = subcommands()[name]
    assert parser.description or parser._subparsers, f"`distill {name}` has no description"

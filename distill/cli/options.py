"""Command-line flags generated from config dataclasses, and the values a command resolves from them.

Every setting is declared once, as a field of its config dataclass (`distill.config.option`):
`add_options` turns fields into flags (name, type, choices, help, and the default shown in `--help`,
all from the field), as litgpt and torchtune do. Every generated flag defaults to None, so a
command can tell a flag that was given from one that was not; `resolve` then takes each value
from the flag, else `distill.toml`, else the environment, else the field's default, and records
where it came from (`distill config` shows the sources).

`--config FILE` names the config file for the whole command (as DISTILL_CONFIG does): the teacher
settings, which are resolved deeper down, read the same file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from distill.api import config_tables
from distill.config import ENV_CONFIG, Setting, config_file, default_of, from_text, resolve_fields, settings_of


def add_options(group: Any, cls: type, *, only: Iterable[str] | None = None, skip: Iterable[str] = (),
                flags: Mapping[str, str] | None = None,
                types: Mapping[str, Callable[[str], Any]] | None = None) -> None:
    """Add a flag to `group` (a parser or an argument group) for each declared field of `cls` (or those in
    `only`, in that order), but those in `skip`. `flags` renames a field's flag for this command;
    `types` gives a field a stricter argparse type (a usage error before any work)."""
    settings = {s.name: s for s in settings_of(cls) if s.cli}
    names = list(only) if only is not None else list(settings)
    for name in names:
        if name in skip:
            continue
        setting = settings[name]
        flag = (flags or {}).get(name, setting.flag)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text(setting, flag)}
        if setting.kind is bool:
            kwargs.update(action="store_const", const=not flag.startswith("--no-"))
        else:
            kwargs.update(type=(types or {}).get(name) or _argparse_type(setting, flag), metavar=setting.metavar,
                          choices=setting.choices)
        group.add_argument(flag, **kwargs)


def help_text(setting: Setting, flag: str) -> str:
    """The field's help with its default, as `--help` shows it (a `--no-x` flag says what it turns off)."""
    text = setting.help
    if setting.kind is bool and flag.startswith("--no-"):
        return text.replace("%", "%%")
    if setting.kind is bool:
        shown = setting.default_text or ("on" if setting.default else "off")
    else:
        shown = setting.default_shown()
    if setting.env:
        shown += f"; also ${setting.env}"
    return f"{text} (default: {shown})".replace("%", "%%")


def _argparse_type(setting: Setting, flag: str) -> Callable[[str], Any]:
    if setting.kind in (int, float, str, Path):
        return setting.kind  # type: ignore[no-any-return]

    def parse(text: str) -> Any:  # a comma-separated list
        return from_text(setting, text, flag)

    parse.__name__ = "list"
    return parse


# ---------------------------------------------------------------- the file and resolution

def add_config_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--config FILE`: the distill.toml to read (default: $DISTILL_CONFIG, else ./distill.toml)."""
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=help or f"config file with [run], [teacher], [train], [gate] and [grow] tables "
                                f"(default: ${ENV_CONFIG}, else ./distill.toml when it exists)")


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file this command reads: --config, else $DISTILL_CONFIG, else ./distill.toml."""
    explicit = getattr(args, "config", None)
    if explicit is not None and Path(explicit).suffix == ".json":  # `distill train --config FILE.json`
        explicit = None
    return config_file(explicit)


def tables(args: argparse.Namespace) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """(the config file, its tables), read once per command."""
    cached = getattr(args, "_config_tables", None)
    if cached is None:
        cached = config_tables(config_path(args))
        setattr(args, "_config_tables", cached)
    return cached  # type: ignore[no-any-return]


def table(args: argparse.Namespace, name: str) -> tuple[Path | None, dict[str, Any]]:
    """(the config file, its table `name`), checked against the table's dataclasses."""
    path, found = tables(args)
    return path, found.get(name, {})


def resolve(args: argparse.Namespace, cls: type, table_name: str, *,
            only: Iterable[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The set values of `cls`'s fields (flag > file > environment) and every field's source."""
    path, values = table(args, table_name)
    flags = {name: value for name, value in vars(args).items() if not name.startswith("_")}
    return resolve_fields(cls, flags=flags, table=values, path=path, table_name=table_name, only=only)


def resolved(args: argparse.Namespace, cls: type, table_name: str, only: Iterable[str]) -> dict[str, Any]:
    """The values of the fields `only`, defaults included (for a command that uses a few fields of `cls`)."""
    names = tuple(only)
    values = resolve(args, cls, table_name, only=names)[0]
    return {name: values[name] if name in values else default_of(cls, name) for name in names}


def given(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The flags of `classes`' fields that the user gave (the keywords a `distill.api` function takes)."""
    names = {s.name for cls in classes for s in settings_of(cls) if s.cli}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


RUN_NAME_HELP = "the run: a bare NAME means RUNS_DIR/NAME; a path needs a slash (./NAME, runs/NAME, /data/NAME)"


def add_run_name(p: argparse.ArgumentParser) -> None:
    """The run a command reads (NAME, or a path with a slash), --runs-dir and --config."""
    from distill.stages.config import RunConfig

    p.add_argument("name", help=RUN_NAME_HELP)
    add_options(p, RunConfig, only=("runs_dir",))
    add_config_arg(p)


def run_folder(args: argparse.Namespace, *, must_exist: bool = True) -> Any:
    """The `RunDir` named on the command line: `RUNS_DIR/NAME` for a bare name (RUNS_DIR: --runs-dir >
    [run] runs_dir > ./runs), the path itself when it holds a slash; InputError when it does not exist."""
    from distill.records.rundir import RunDir
    from distill.stages.config import RunConfig

    folder = RunDir.named(args.name, resolved(args, RunConfig, "run", ("runs_dir",))["runs_dir"])
    return folder.require(args.name) if must_exist else folder


@contextlib.contextmanager
def config_env(args: argparse.Namespace) -> Iterator[None]:
    """While the command runs, `--config FILE` is $DISTILL_CONFIG, so every reader of the file (the
    teacher's settings included) reads the same one; the environment is restored afterwards."""
    explicit = getattr(args, "config", None)
    if explicit is None or Path(explicit).suffix == ".json":
        yield
        return
    before = os.environ.get(ENV_CONFIG)
    os.environ[ENV_CONFIG] = str(explicit)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_CONFIG, None)
        else:
            os.environ[ENV_CONFIG] = before

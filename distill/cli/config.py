"""`distill config`: every resolved setting, where each value came from, secrets masked.

Settings come from flags, the config file (`distill.toml`, `--config` or `DISTILL_CONFIG`),
environment variables and the config dataclasses' defaults, in that order of precedence (see
`distill.config`). This command shows the outcome for the four tables: the teacher (with the teacher
flags below applied), and `[run]`, `[train]` and `[gate]` as the file and the environment leave them
(a command's own flags then win). It says when nothing was configured and the offline default
`local:default` applies, and exits with status 2 when the chosen teacher cannot start (a missing
key, naming the variable to set) or the file is wrong. `add_teacher_args` and `settings_from_args`
give every command that calls a teacher the same flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from distill.config import config_file
from distill.errors import ConfigError

if TYPE_CHECKING:
    from distill.teachers.registry import Backend
    from distill.teachers.settings import TeacherSettings



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show every resolved setting (teacher, run, train, gate) and where each value came from",
        description="Resolve the configuration (flags > config file > environment > defaults) and print each "
                    "value of [teacher], [run], [train] and [gate] with its source; API keys are masked. Exits 2 "
                    "when the teacher cannot start, e.g. a hosted teacher without a key.",
    )
    add_teacher_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--identity", action="store_true",
                   help="also print the backend's model identity (for local models: path and weights hash)")
    p.set_defaults(func=run)


def add_teacher_args(p: argparse.ArgumentParser) -> None:
    """The teacher flags shared by every command that calls a teacher: --teacher, --config, and one
    per knob of `distill.teachers.settings.KNOBS` that is a flag (there is no key flag: command lines
    are visible to other users of the machine)."""
    from distill.teachers.settings import KNOBS

    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", default=None, metavar="BACKEND:MODEL", help=_teacher_help())
    g.add_argument("--config", default=None, metavar="FILE",
                   help="config file with [run], [teacher], [train] and [gate] tables (default: $DISTILL_CONFIG, "
                        "else ./distill.toml)")
    for name, knob in KNOBS.items():
        if knob.flag:
            g.add_argument("--" + name.replace("_", "-"), default=None, help=f"{knob.help} (env {knob.env})")


def _flags() -> tuple[str, ...]:
    from distill.teachers.settings import KNOBS

    return ("teacher", *(name for name, knob in KNOBS.items() if knob.flag))


def _teacher_help() -> str:
    from distill.teachers.settings import DEFAULT_TEACHER, ENV_TEACHER

    return (f"e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, local:default "
            f"(default: ${ENV_TEACHER}, else {DEFAULT_TEACHER})")


def default_note() -> str:
    from distill.teachers.settings import DEFAULT_TEACHER, ENV_TEACHER

    return (f"note: no teacher configured, so {DEFAULT_TEACHER} is used: the embedded student critiques "
            f"itself, offline. Set {ENV_TEACHER} (e.g. openai:gpt-4o-mini) for a hosted teacher.")


def settings_from_args(args: argparse.Namespace) -> TeacherSettings:
    from distill.teachers.resolve import resolve_settings

    overrides = {name: getattr(args, name, None) for name in _flags()}
    return resolve_settings(config_file=getattr(args, "config", None), overrides=overrides)


def run(args: argparse.Namespace) -> int:
    from distill.teachers.registry import backend_identity, load_backend

    settings = settings_from_args(args)
    backend = load_backend(settings.backend)
    problem = _problem(settings, backend)
    others = other_tables(args)
    identity = backend_identity(settings) if args.identity else None
    if args.json:
        print(json.dumps({**_as_json(settings, problem, identity), "tables": others}, indent=2, default=str))
    else:
        print(_table(settings, backend.needs_key(settings), identity, others))
        if settings.uses_default:
            print(default_note())
    if problem:
        print(f"distill: error: {problem}", file=sys.stderr)
        return ConfigError.exit_code
    return 0


def _problem(settings: TeacherSettings, backend: Backend) -> str | None:
    from distill.teachers.registry import require_key

    try:
        require_key(settings, backend)
    except ConfigError as exc:
        return str(exc)
    return None


def _rows(settings: TeacherSettings, needs_key: bool) -> list[tuple[str, str, str]]:
    values = settings.display()
    rows = [("teacher", settings.name, settings.sources.get("backend", "default"))]
    for name, value in values.items():
        if name in ("backend", "model"):
            continue
        shown = "-" if value is None else str(value)
        if name == "api_key" and value is None:
            shown = f"MISSING: {settings.key_hint()}" if needs_key else "(not needed)"
        if name == "base_url" and value is None:
            shown = "(the provider's own)"
        rows.append((name, shown, settings.sources.get(name, "default")))
    rows.append(("scoring", _scoring(settings), "backend"))
    return rows


def _scoring(settings: TeacherSettings) -> str:
    """Whether the teacher can score given tokens (on-policy distillation), as `distill.teachers.scoring` says."""
    from distill.teachers.scoring import capability

    return capability(settings).text()


def other_tables(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    """[run], [train], [gate] and [grow] resolved from the config file, the environment and the defaults:
    {table: {"values": {...}, "sources": {...}}} (the teacher flags of this command do not apply to them)."""
    from distill.api import DATACLASS_TABLES, table_classes
    from distill.cli.options import table
    from distill.config import resolve_fields, settings_of
    from distill.teachers.settings import mask_url

    path = config_file(getattr(args, "config", None))
    holder = argparse.Namespace(config=path)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in DATACLASS_TABLES:
        file, values = table(holder, name)
        shown: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for cls in table_classes(name):
            found, where = resolve_fields(cls, flags={}, table=values, path=file, table_name=name)
            for setting in settings_of(cls):
                if setting.toml:
                    value = found.get(setting.name, setting.default)
                    shown[setting.name] = mask_url(value) if isinstance(value, str) else value  # --student-url
                    sources[setting.name] = where[setting.name]
        out[name] = {"values": shown, "sources": sources, "defaults": _defaults_text(name)}
    return out


def _defaults_text(name: str) -> dict[str, str]:
    from distill.api import table_classes
    from distill.config import settings_of

    return {s.name: s.default_shown() for cls in table_classes(name) for s in settings_of(cls) if s.toml}


def _table(settings: TeacherSettings, needs_key: bool, identity: dict[str, Any] | None,
           others: dict[str, dict[str, dict[str, Any]]] | None = None) -> str:
    from distill.config import format_value

    sections: list[tuple[str, list[tuple[str, str, str]]]] = [("teacher", _rows(settings, needs_key))]
    for name, data in (others or {}).items():
        rows = []
        for key, value in data["values"].items():
            source = data["sources"][key]
            shown = data["defaults"][key] if source == "default" else format_value(value)
            rows.append((key, shown, source))
        sections.append((name, rows))
    every = [row for _, rows in sections for row in rows]
    width = min(48, max(len(value) for _, value, _ in every))
    names = max(12, *(len(name) for name, _, _ in every))
    lines = []
    for title, rows in sections:
        lines += [""] if lines else []
        lines.append(f"[{title}]")
        lines += [f"{name:<{names}} {value:<{width}}  {source}" for name, value, source in rows]
        if title == "teacher" and identity is not None:
            lines.append(f"{'identity':<{names}} " + json.dumps(identity, sort_keys=True))
    return "\n".join(lines)


def _as_json(settings: TeacherSettings, problem: str | None, identity: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"teacher": settings.name, "default": settings.uses_default,
                           "values": settings.display(), "sources": dict(settings.sources), "problem": problem,
                           "scoring": _scoring(settings)}
    if identity is not None:
        out["identity"] = identity
    return out

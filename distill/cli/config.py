"""`distill config`: the resolved teacher configuration, where each value came from, keys masked.

The teacher comes from flags, a config file (`distill.toml` or `--config`), environment variables
and defaults, in that order of precedence (see `distill.teachers.settings`). This command shows
the outcome, says when nothing was configured and the offline default `local:default` applies,
and exits with status 2 when the chosen teacher cannot start (a missing key, naming the variable
to set). `add_teacher_args` and `settings_from_args` give every command that calls a teacher the
same flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from distill.errors import ConfigError

if TYPE_CHECKING:
    from distill.teachers.registry import Backend
    from distill.teachers.settings import TeacherSettings

FLAGS = ("teacher", "base_url", "concurrency", "rpm", "tpm", "timeout", "max_retries", "batch_size", "prices_file")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show the resolved teacher configuration and where each value came from",
        description="Resolve the teacher configuration (flags > config file > environment > defaults) and print "
                    "each value with its source; API keys are masked. Exits 2 when the teacher cannot start, "
                    "e.g. a hosted teacher without a key.",
    )
    add_teacher_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--identity", action="store_true",
                   help="also print the backend's model identity (for local models: path and weights hash)")
    p.set_defaults(func=run)


def add_teacher_args(p: argparse.ArgumentParser) -> None:
    """The teacher flags shared by every command that calls a teacher (there is no key flag:
    command lines are visible to other users of the machine)."""
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", default=None, metavar="BACKEND:MODEL", help=_teacher_help)
    g.add_argument("--config", default=None, metavar="FILE",
                   help="TOML config file with a [teacher] table (default: $DISTILL_CONFIG, else ./distill.toml)")
    g.add_argument("--base-url", default=None, help="API base URL, e.g. http://localhost:8000/v1 for vLLM")
    g.add_argument("--concurrency", default=None, help="requests in flight at once")
    g.add_argument("--rpm", default=None, help="requests per minute to pace to")
    g.add_argument("--tpm", default=None, help="tokens per minute to pace to")
    g.add_argument("--timeout", default=None, help="seconds per attempt")
    g.add_argument("--max-retries", default=None, help="retries after the first attempt")
    g.add_argument("--batch-size", default=None, help="local backend: requests generated together")
    g.add_argument("--prices-file", default=None, help="TOML/JSON file of extra model prices")


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

    overrides = {name: getattr(args, name, None) for name in FLAGS}
    return resolve_settings(config_file=getattr(args, "config", None), overrides=overrides)


def run(args: argparse.Namespace) -> int:
    from distill.teachers.registry import backend_identity, load_backend

    settings = settings_from_args(args)
    backend = load_backend(settings.backend)
    problem = _problem(settings, backend)
    identity = backend_identity(settings) if args.identity else None
    if args.json:
        print(json.dumps(_as_json(settings, problem, identity), indent=2))
    else:
        print(_table(settings, backend.needs_key(settings), identity))
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
    return rows


def _table(settings: TeacherSettings, needs_key: bool, identity: dict[str, Any] | None) -> str:
    rows = _rows(settings, needs_key)
    width = max(len(value) for _, value, _ in rows)
    names = max(12, *(len(name) for name, _, _ in rows))
    lines = [f"{name:<{names}} {value:<{width}}  {source}" for name, value, source in rows]
    if identity is not None:
        lines.append(f"{'identity':<{names}} " + json.dumps(identity, sort_keys=True))
    return "\n".join(lines)


def _as_json(settings: TeacherSettings, problem: str | None, identity: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"teacher": settings.name, "default": settings.uses_default,
                           "values": settings.display(), "sources": dict(settings.sources), "problem": problem}
    if identity is not None:
        out["identity"] = identity
    return out

"""Where distill keeps things, and the one config model: defaults in dataclasses, `distill.toml`, sources.

`DISTILL_CACHE_DIR` relocates the cache (converted models, teacher-call cache); the default is
`./cache` under the current directory, which is the repository's own `cache/` folder when run
from a checkout. `DISTILL_STUDENT` picks the student model (see `distill.student.model`).

Every setting is a field of a config dataclass (`RunConfig`, `GenerationParams`, `TrainConfig`,
`Policy`, `TeacherSettings`), declared with `option(default, help=...)`: the field's default is the
one default, its help is the one description. The command line's flags are generated from these
fields (`distill.cli.options`), `distill.toml` sets them per project, and `resolve_fields` says
for each value where it came from. Precedence, highest first:

    flag  >  distill.toml (or the file named by --config / DISTILL_CONFIG)  >  environment  >  default

The file and the flags are explicit, per-project or per-run choices; the environment is ambient
(see `distill.teachers.settings`, whose `[teacher]` table follows the same order). `distill.toml`
has four tables, `[run]`, `[teacher]`, `[train]` and `[gate]`; an unknown table or key, or a
value of the wrong type, is a ConfigError naming the file, the table, the key and what is allowed.

Owns: paths from the environment; `option`, the config file's location and tables, and resolving
a dataclass's fields from flags, the file, the environment and defaults.
May import: `distill.errors` only (every layer declares its settings with `option`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

from distill.errors import ConfigError

CONFIG_FILE = "distill.toml"
ENV_CONFIG = "DISTILL_CONFIG"
TABLES = ("run", "teacher", "train", "gate", "grow")
DEFAULT = "default"


def cache_dir() -> Path:
    """The cache root: `$DISTILL_CACHE_DIR`, else `./cache`."""
    value = os.environ.get("DISTILL_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.cwd() / "cache"


def student_source() -> str | None:
    """The student named by `$DISTILL_STUDENT`, or None for the embedded default."""
    value = os.environ.get("DISTILL_STUDENT", "").strip()
    return value or None


# ---------------------------------------------------------------- declaring settings

def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           flag: str | None = None, env: str | None = None, choices: Iterable[str] | None = None,
           default_text: str | None = None, metavar: str | None = None, cli: bool = True,
           toml: bool = True) -> Any:
    """A config dataclass field with what the command line and `distill.toml` need to know about it.

    `help` describes it (the flag's help; `--help` appends the default); `flag` is the flag when it
    is not `--field-name` (a `--no-x` flag turns a default-on bool off); `env` the variable that sets
    it; `choices` the allowed values; `default_text` how to show a default that is None (e.g. "the
    teacher's concurrency"); `cli=False` / `toml=False` keep it off the command line / out of the file.
    """
    metadata = {"help": help, "flag": flag, "env": env, "choices": tuple(choices) if choices else None,
                "default_text": default_text, "metavar": metavar, "cli": cli, "toml": toml}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared field of a config dataclass, with its resolved type and default."""

    name: str
    kind: Any            # the type hint, Optional unwrapped: int, float, bool, str, Path or tuple[str, ...]
    optional: bool       # None is a valid value (the field's type is `X | None`)
    default: Any
    help: str
    flag: str
    env: str | None
    choices: tuple[str, ...] | None
    default_text: str | None
    metavar: str | None
    cli: bool
    toml: bool

    def default_shown(self) -> str:
        """The default as `--help` and `distill config` show it."""
        if self.default is None or self.default_text:
            return self.default_text or "none"
        return format_value(self.default)


def settings_of(cls: type) -> list[Setting]:
    """The fields of `cls` declared with `option`, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        kind, optional = _unwrap(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out.append(Setting(f.name, kind, optional, default, meta["help"],
                           meta["flag"] or "--" + f.name.replace("_", "-"), meta["env"], meta["choices"],
                           meta["default_text"], meta["metavar"], meta["cli"], meta["toml"]))
    return out


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (so that another place can share it, not repeat it)."""
    f = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _unwrap(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def format_value(value: Any) -> str:
    """A value as a person reads it: tuples comma-separated, booleans lower-case, None as `none`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


# ---------------------------------------------------------------- the file

def config_file(explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: `explicit` (--config), else $DISTILL_CONFIG, else ./distill.toml if present."""
    env = os.environ if env is None else env
    if explicit is not None:
        return Path(explicit).expanduser()
    if env.get(ENV_CONFIG, "").strip():
        return Path(env[ENV_CONFIG].strip()).expanduser()
    default = Path.cwd() / CONFIG_FILE
    return default if default.is_file() else None


def read_tables(path: Path | None) -> dict[str, dict[str, Any]]:
    """The tables of a config file ({} for no file); ConfigError naming the file and the problem."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (named by --config or {ENV_CONFIG})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for key, value in document.items():
        if key not in TABLES:
            what = f"table [{key}]" if isinstance(value, dict) else f"key {key!r}"
            raise ConfigError(f"{path}: unknown {what}; allowed tables: {', '.join(f'[{t}]' for t in TABLES)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table ([{key}] followed by key = value lines)")
    return document


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], path: Path | str, name: str) -> None:
    """ConfigError naming the file, the table and the key when `table` holds a key not in `allowed`."""
    known = sorted(set(allowed))
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}: [{name}] unknown key {key!r}; allowed: {', '.join(known)}")


def from_file(setting: Setting, value: Any, where: str) -> Any:
    """A TOML value checked against the setting's type; ConfigError naming `where` and what is allowed."""
    kind = setting.kind
    ok = (kind is bool and isinstance(value, bool)
          or kind is int and isinstance(value, int) and not isinstance(value, bool)
          or kind is float and isinstance(value, (int, float)) and not isinstance(value, bool)
          or kind in (str, Path) and isinstance(value, str)
          or _is_str_tuple(kind) and isinstance(value, list) and all(isinstance(v, str) for v in value))
    if ok and setting.choices and value not in setting.choices:
        ok = False
    if not ok:
        raise ConfigError(f"{where} = {value!r}: expected {expected(setting)}")
    if kind is float:
        return float(value)
    if kind is Path:
        return Path(value).expanduser()
    if _is_str_tuple(kind):
        return tuple(value)
    return value


def _is_str_tuple(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple


def expected(setting: Setting) -> str:
    """What a valid value of `setting` looks like, for error messages."""
    if setting.choices:
        return "one of " + ", ".join(map(repr, setting.choices))
    kind = setting.kind
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path (a string)"}.get(kind, "a list of strings" if _is_str_tuple(kind) else str(kind))


BOOL_TEXT = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
             "off": False, "": False}


def from_text(setting: Setting, text: str, where: str) -> Any:
    """A value typed as text (an environment variable) parsed by the setting's type."""
    kind = setting.kind
    try:
        if kind is bool:
            return BOOL_TEXT[text.strip().lower()]
        if _is_str_tuple(kind):
            return tuple(s.strip() for s in text.split(",") if s.strip())
        value = kind(text.strip())
    except (KeyError, ValueError):
        wanted = "1 or 0 (true/false, yes/no, on/off)" if kind is bool else expected(setting)
        raise ConfigError(f"{where}={text!r}: expected {wanted}") from None
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{where}={text!r}: expected {expected(setting)}")
    return value


# ---------------------------------------------------------------- resolving

def resolve_fields(cls: type, *, flags: Mapping[str, Any], table: Mapping[str, Any], path: Path | str | None,
                   table_name: str, env: Mapping[str, str] | None = None,
                   only: Iterable[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of `cls`'s declared fields that were set, and the source of every field.

    `flags` holds parsed command-line values by field name (None = not given); `table` the file's
    table for `cls`. A field no one set is left out of the values (the dataclass default applies)
    and its source is `default`. Sources read `flag --x`, the file's path, `env VAR` or `default`.
    """
    env = os.environ if env is None else env
    wanted = None if only is None else set(only)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in settings_of(cls):
        name = setting.name
        if wanted is not None and name not in wanted:
            continue
        if setting.cli and flags.get(name) is not None:
            values[name], sources[name] = flags[name], f"flag {setting.flag}"
        elif setting.toml and name in table:
            values[name] = from_file(setting, table[name], f"{path}: [{table_name}] {name}")
            sources[name] = str(path)
        elif setting.env and env.get(setting.env, "").strip():
            values[name] = from_text(setting, env[setting.env], setting.env)
            sources[name] = f"env {setting.env}"
        else:
            sources[name] = DEFAULT
    return values, sources


def file_keys(*classes: type) -> set[str]:
    """The keys a config-file table for these dataclasses may hold."""
    return {s.name for cls in classes for s in settings_of(cls) if s.toml}


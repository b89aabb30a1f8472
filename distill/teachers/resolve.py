"""Teacher settings resolution: where each value comes from, highest first: flags > config file >
environment > defaults.

The config file and the flags are explicit, per-project or per-run choices that a person wrote
down or typed; the environment is ambient (a shell profile exporting OPENAI_BASE_URL for another
tool should not silently redirect a project that pinned its teacher in `distill.toml`). Within the
environment, distill's own variables beat the SDKs' variables; which SDK variables a backend reads
(`key_env`, `base_url_env`) its registry entry says, so resolution loads the backend's entry point
(`distill.teachers.registry`), never the backend's SDK.

The variables and the config file's `[teacher]` table are described in `distill.teachers.settings`.
Each resolved value records its source (flag, config file, environment variable or default) for
`distill config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from distill.config import config_file as config_file_of
from distill.config import read_tables
from distill.errors import ConfigError
from distill.teachers.registry import load_backend
from distill.teachers.settings import (DEFAULT_TEACHER, ENV_API_KEY, ENV_TEACHER,
                                       KNOBS, Knob, Secret, TeacherSettings, parse_knob, parse_teacher)


def _teacher_table(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    table = read_tables(path).get("teacher", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [teacher] must be a table")
    if "api_key" in table:
        raise ConfigError(f"{path}: [teacher] api_key: keys must not be stored in files; set {ENV_API_KEY} "
                          "or name the variable that holds the key with api_key_env = \"VARIABLE\"")
    allowed = set(KNOBS) | {"teacher", "api_key_env"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{path}: [teacher] unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(allowed))}")
    return table


def resolve_settings(env: Mapping[str, str] | None = None,
                     config_file: str | os.PathLike[str] | None = None,
                     overrides: Mapping[str, Any] | None = None) -> TeacherSettings:
    """Resolve the teacher settings from flags (`overrides`), config file, environment and defaults.

    `overrides` uses the field names (`teacher` for backend:model, `base_url`, `rpm`, ...); None
    values are ignored, so argparse namespaces can be passed through as they are. The backend must
    be installed (entry-point group `distill.teachers`); a missing key is not an error here
    (`distill config` shows it) but `distill.teachers.stack` refuses to build the backend.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = config_file_of(config_file, env)
    table = _teacher_table(path)
    file_label = str(path) if path is not None else ""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    backend, model, source = _resolve_teacher(env, flags, table, file_label)
    values.update(backend=backend, model=model)
    sources.update(backend=source, model=source)

    spec = load_backend(backend, where=source)
    for name, knob in KNOBS.items():
        if name == "base_url":
            continue
        value, source = _resolve_knob(name, knob, env, flags, table, file_label)
        if source != "default":
            values[name], sources[name] = value, source
        else:
            sources[name] = "default"
    values["base_url"], sources["base_url"] = _resolve_base_url(env, flags, table, file_label,
                                                                spec.base_url_env)
    key_env = (ENV_API_KEY, *spec.key_env)
    values["api_key"], sources["api_key"] = _resolve_key(env, flags, table, file_label, key_env)
    return TeacherSettings(**values, key_env=key_env, sources=sources)


def _resolve_teacher(env: Mapping[str, str], flags: Mapping[str, Any], table: Mapping[str, Any],
                     file_label: str) -> tuple[str, str, str]:
    if "teacher" in flags:
        return (*parse_teacher(str(flags["teacher"]), "--teacher"), "flag --teacher")
    if "teacher" in table:
        return (*parse_teacher(str(table["teacher"]), f"{file_label} [teacher] teacher"), file_label)
    if env.get(ENV_TEACHER, "").strip():
        return (*parse_teacher(env[ENV_TEACHER]), f"env {ENV_TEACHER}")
    return (*parse_teacher(DEFAULT_TEACHER), "default")


def _resolve_knob(name: str, knob: Knob, env: Mapping[str, str], flags: Mapping[str, Any],
                  table: Mapping[str, Any], file_label: str) -> tuple[Any, str]:
    flag = "--" + name.replace("_", "-")
    if name in flags:
        return parse_knob(knob, flags[name], flag), f"flag {flag}"
    if name in table:
        return parse_knob(knob, table[name], f"{file_label} [teacher] {name}"), file_label
    if env.get(knob.env, "").strip():
        return parse_knob(knob, env[knob.env], knob.env), f"env {knob.env}"
    return None, "default"


def _resolve_base_url(env: Mapping[str, str], flags: Mapping[str, Any], table: Mapping[str, Any],
                      file_label: str, sdk_vars: tuple[str, ...]) -> tuple[str | None, str]:
    knob = KNOBS["base_url"]
    value, source = _resolve_knob("base_url", knob, env, flags, table, file_label)
    if source != "default":
        return value, source
    for var in sdk_vars:
        if env.get(var, "").strip():
            return parse_knob(knob, env[var], var), f"env {var}"
    return None, "default"


def _resolve_key(env: Mapping[str, str], flags: Mapping[str, Any], table: Mapping[str, Any],
                 file_label: str, key_env: tuple[str, ...]) -> tuple[Secret | None, str]:
    if "api_key" in flags:
        raw = flags["api_key"]
        return (raw if isinstance(raw, Secret) else Secret(str(raw))), "argument"
    if "api_key_env" in table:
        var = str(table["api_key_env"])
        if not env.get(var, "").strip():
            raise ConfigError(f"{file_label}: [teacher] api_key_env names {var}, which is not set; "
                              f"export {var} or remove api_key_env")
        return Secret(env[var].strip()), f"env {var} (named by {file_label})"
    for var in key_env:
        if env.get(var, "").strip():
            return Secret(env[var].strip()), f"env {var}"
    return None, "unset"

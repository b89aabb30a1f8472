"""The teacher's prompt templates and principles, loaded from a prompts folder.

A prompts folder holds `templates/*.md` (system, critique, judge, repair) and `principles.toml`
(principles, each a critique request plus a revision request, and chains: ordered lists of
principles, one per stage). The default folder is the project's own `prompts/`; a user points
`DISTILL_PROMPTS` (or `--prompts-dir`) at their own folder with the same layout.

Each template's id is a hash of its content (`critique@1a2b3c4d5e6f`), recorded in every record
and cache entry, so editing a template can never be confused with the old one. Templates use
`${name}` placeholders; a missing or unknown placeholder is an error naming the template.
"""

from __future__ import annotations

import hashlib
import os
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from distill.errors import ConfigError

TEMPLATE_NAMES = ("system", "critique", "judge", "repair")
DEFAULT_CHAIN = "default"


PROJECT_PROMPTS = Path(__file__).resolve().parents[2] / "prompts"  # the project's own prompts folder


def default_prompts_dir() -> Path:
    """`$DISTILL_PROMPTS`, else the project's `prompts/` beside the package."""
    value = os.environ.get("DISTILL_PROMPTS", "").strip()
    return Path(value).expanduser() if value else PROJECT_PROMPTS


def content_id(name: str, text: str) -> str:
    return f"{name}@{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


@dataclass(frozen=True)
class Template:
    """A named text with `${placeholders}`; `id` changes whenever the text does."""

    name: str
    text: str
    path: Path

    @property
    def id(self) -> str:
        return content_id(self.name, self.text)

    def render(self, **values: str) -> str:
        try:
            return string.Template(self.text).substitute(values)
        except KeyError as exc:
            raise ConfigError(f"{self.path}: placeholder ${{{exc.args[0]}}} has no value; "
                              f"this template may use: {', '.join(sorted(values))}") from None
        except ValueError as exc:
            raise ConfigError(f"{self.path}: bad placeholder ({exc}); write a literal $ as $$") from None


@dataclass(frozen=True)
class Principle:
    """One stage of review: what to look for, and how to revise."""

    name: str
    critique: str
    revision: str

    @property
    def id(self) -> str:
        return content_id(f"principle:{self.name}", self.critique + "\n---\n" + self.revision)


@dataclass(frozen=True)
class PromptSet:
    """Everything loaded from one prompts folder."""

    root: Path
    templates: Mapping[str, Template]
    principles: Mapping[str, Principle]
    chains: Mapping[str, tuple[str, ...]]

    def chain(self, name: str = DEFAULT_CHAIN) -> tuple[Principle, ...]:
        if name not in self.chains:
            raise ConfigError(f"{self.root / 'principles.toml'}: no chain {name!r}; "
                              f"defined chains: {', '.join(sorted(self.chains))}")
        return tuple(self.principles[p] for p in self.chains[name])

    def stages(self, names: list[str]) -> tuple[Principle, ...]:
        """An ad-hoc chain from principle names (e.g. `--stages facts,instructions`)."""
        unknown = [n for n in names if n not in self.principles]
        if unknown:
            raise ConfigError(f"unknown principle {unknown[0]!r}; defined in {self.root / 'principles.toml'}: "
                              f"{', '.join(sorted(self.principles))}")
        return tuple(self.principles[n] for n in names)

    def ids(self) -> dict[str, str]:
        """Template and principle ids, for the run manifest."""
        return {**{t.name: t.id for t in self.templates.values()},
                **{f"principle:{p.name}": p.id for p in self.principles.values()}}


def load_prompt_set(root: str | os.PathLike[str] | None = None) -> PromptSet:
    """Load and validate a prompts folder; ConfigError names the missing file or bad field."""
    root = Path(root).expanduser() if root else default_prompts_dir()
    if not root.is_dir():
        raise ConfigError(f"prompts folder {root} does not exist; set DISTILL_PROMPTS to a folder holding "
                          "templates/*.md and principles.toml (copy the project's prompts/ to start)")
    templates = {name: _read_template(root / "templates" / f"{name}.md", name) for name in TEMPLATE_NAMES}
    principles, chains = _read_principles(root / "principles.toml")
    return PromptSet(root=root, templates=templates, principles=principles, chains=chains)


def load_template(root: str | os.PathLike[str], name: str) -> Template:
    """A template beyond the four every prompts folder has (`distill grow`'s, say): `templates/NAME.md`
    in the folder `root`; ConfigError naming the missing file and where to copy it from."""
    path = Path(root) / "templates" / f"{name}.md"
    if not path.is_file():
        raise ConfigError(f"{path}: template {name!r} is missing; copy it from distill's own prompts folder "
                          f"({PROJECT_PROMPTS / 'templates' / path.name})")
    return _read_template(path, name)


def _read_template(path: Path, name: str) -> Template:
    try:
        return Template(name=name, text=path.read_text(encoding="utf-8"), path=path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: template {name!r} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read template ({exc})") from None


def _read_principles(path: Path) -> tuple[dict[str, Principle], dict[str, tuple[str, ...]]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: principles file is missing") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    principles: dict[str, Principle] = {}
    for name, body in (data.get("principles") or {}).items():
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body[k].strip()
                                                 for k in ("critique", "revision")):
            raise ConfigError(f"{path}: principles.{name} needs non-empty 'critique' and 'revision' strings")
        principles[name] = Principle(name=name, critique=body["critique"].strip(), revision=body["revision"].strip())
    if not principles:
        raise ConfigError(f"{path}: no [principles.NAME] tables defined")
    chains: dict[str, tuple[str, ...]] = {}
    for name, steps in (data.get("chains") or {}).items():
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise ConfigError(f"{path}: chains.{name} must be a non-empty list of principle names")
        unknown = [s for s in steps if s not in principles]
        if unknown:
            raise ConfigError(f"{path}: chains.{name} names unknown principle {unknown[0]!r}")
        chains[name] = tuple(steps)
    chains.setdefault(DEFAULT_CHAIN, tuple(principles))
    return principles, chains

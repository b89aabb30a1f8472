"""A run's folder, `RunDir`, and the one rule for naming a run on the command line.

A run lives in a folder, `runs/NAME/` by default: a single round writes its artefacts there; a
multi-round run keeps `rounds.json`, the report and one sub-folder per round (`round-K/`), plus
`heldout/` and `replay/`. `RunDir` is that folder as an object, so code asks it for a round's
folder instead of building a name with a slash in it.

The rule for a run named on the command line (`distill review q`, `distill report q`, `distill
batch status q`): a bare name means `RUNS_DIR/NAME`; a path needs a slash (`./q`, `runs/q`,
`/data/runs/q`). Nothing guesses from what happens to exist in the working directory, so the
same command means the same run wherever it is typed.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.errors import InputError

_SEPARATORS = tuple(s for s in (os.sep, os.altsep, "/") if s)


def is_path(text: str) -> bool:
    """True when `text` names a folder by path (it holds a slash), False for a bare run name."""
    return any(sep in text for sep in _SEPARATORS)


def as_argument(path: str | os.PathLike[str]) -> str:
    """How to name the run folder `path` in a command to type: a path with a slash, so the rule
    above never reads it as a name under RUNS_DIR (`q` -> `./q`; `runs/q/round-1` as it is)."""
    text = os.fspath(path)
    return text if is_path(text) else f".{os.sep}{text}"


class RunDir(os.PathLike[str]):
    """A run's folder. `run / "sft.jsonl"` is a file in it; `round(k)` the folder of round k."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @classmethod
    def named(cls, name: str, runs_dir: str | os.PathLike[str]) -> "RunDir":
        """The run `name` as typed on a command line: `RUNS_DIR/NAME` for a bare name, the path
        itself when it holds a slash. InputError for a name that is no folder name (`.`, `..`, empty)."""
        if is_path(name):
            return cls(Path(name).expanduser())
        if name in ("", ".", ".."):
            raise InputError(f"{name!r} is not a run name; give a name (a folder under {runs_dir}) or a path "
                             "with a slash, e.g. ./myrun")
        return cls(Path(runs_dir) / name)

    @property
    def name(self) -> str:
        return self.path.name

    def round(self, number: int) -> "RunDir":
        """The folder of round `number` of a multi-round run."""
        return RunDir(self.path / f"round-{number}")

    @property
    def heldout(self) -> "RunDir":
        """The held-out reference round of a multi-round run."""
        return RunDir(self.path / "heldout")

    @property
    def replay(self) -> "RunDir":
        """Where the base student's answers to the replay prompts go."""
        return RunDir(self.path / "replay")

    def require(self, typed: str, what: str = "run") -> "RunDir":
        """This folder when it exists, else InputError saying where it looked; when `typed` was a bare
        name and a folder of that name lies in the working directory, the error says how to name it."""
        if self.path.is_dir():
            return self
        hint = ""
        if not is_path(typed) and Path(typed).is_dir():
            hint = f"; a bare name means a folder under the runs directory: for ./{typed} write ./{typed}"
        raise InputError(f"{self.path}: no such {what} folder{hint}")

    def __truediv__(self, part: str | os.PathLike[str]) -> Path:
        return self.path / part

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(("RunDir", self.path))

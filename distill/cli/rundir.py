"""How a command names a run: `run_directory(NAME, RUNS_DIR)`, shared by the commands that read a run.

Its own module so that command modules need not import the `distill.cli` package that imports them.
"""

from __future__ import annotations

from pathlib import Path


def run_directory(name: str, runs_dir: Path) -> Path:
    """A run named on the command line: NAME itself when it is a directory, else RUNS_DIR/NAME."""
    return Path(name) if Path(name).is_dir() else runs_dir / name

"""The state of a multi-round run: runs/NAME/rounds.json.

Per round: counts, the training summary, metrics and the gate's decision, and whether the round
finished; a re-run continues from the first round not recorded as finished. Written atomically
(`distill.records.files.write_atomic`); read by the rounds runner and by the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import InputError
from distill.records.files import write_atomic
from distill.records.jsonl import read_text

STATE = "rounds.json"


def load_state(root: Path) -> dict[str, Any]:
    """The run's rounds.json (no rounds yet when there is none); InputError naming FILE:LINE if it is not JSON."""
    path = root / STATE
    if not path.exists():
        return {"rounds": []}
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def save_state(root: Path, state: dict[str, Any]) -> None:
    """Replace the run's rounds.json with `state`, atomically."""
    write_atomic(root / STATE, json.dumps(state, indent=2, default=str) + "\n")


def promoted_adapter(root: Path) -> str | None:
    """The adapter the last finished rounds promoted (rounds.json `best_adapter`), None when none was."""
    return load_state(root).get("best_adapter") or None

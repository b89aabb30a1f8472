"""The loss log: `loss.jsonl` in an adapter directory, one row per optimizer step.

Written as training goes (flushed per step); on resume, rows after the checkpoint are dropped so
the log matches the run. The report (`distill.evaluation.report`) plots it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.records.files import write_jsonl

LOSS_LOG = "loss.jsonl"


class LossLog:
    """loss.jsonl, appended one row per step; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, keep_through: int, enabled: bool):
        self.path, self.enabled, self.last = path, enabled, None
        self._fh = None
        if not enabled:
            return
        rows = _loss_rows(path) if path.is_file() else []
        rows = [r for r in rows if r.get("step", 0) <= keep_through]
        write_jsonl(path, rows)
        self.last = rows[-1] if rows else None
        self._fh = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _loss_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a loss log, each line parsed once; a row torn by a crash is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a row torn by a crash
    return rows


def read_loss_log(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of an adapter directory's loss.jsonl (a row torn by a crash is skipped)."""
    return _loss_rows(Path(output_dir) / LOSS_LOG)

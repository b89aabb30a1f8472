"""Where distill keeps things, resolved from the environment.

`DISTILL_CACHE_DIR` relocates the cache (converted models, teacher-call cache); the default is
`./cache` under the current directory, which is the repository's own `cache/` folder when run
from a checkout. `DISTILL_STUDENT` picks the student model (see `distill.student.model`).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$DISTILL_CACHE_DIR`, else `./cache`."""
    value = os.environ.get("DISTILL_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.cwd() / "cache"


def student_source() -> str | None:
    """The student named by `$DISTILL_STUDENT`, or None for the embedded default."""
    value = os.environ.get("DISTILL_STUDENT", "").strip()
    return value or None

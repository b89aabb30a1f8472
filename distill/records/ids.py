"""Stable ids: canonical JSON and the short content hash that record ids, cache keys and
fingerprints are made of.

Why: a row without an `id` gets one from its content, and it must be the same on every machine
and every run; the teacher-call cache hashes requests the same way. One definition of
"canonical" (sorted keys, compact separators, UTF-8 text) serves all of them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, compact separators, UTF-8 text (no ASCII escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(value: Any, length: int = 16) -> str:
    """A short, stable hex digest of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]

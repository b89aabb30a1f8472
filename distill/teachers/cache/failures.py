"""What can go wrong with the cache file, said plainly: every SQLite failure as a `CacheError`
that names the file and says how to recover.

The file is checked before SQLite opens it (its directory writable, the file readable and
writable, not cut short: `prepare_directory`, `check_not_truncated`), and each SQLite error is
translated by its result code (`sqlite_error`): corrupt, disk full, read-only, locked too long,
I/O error. A corrupt file is never deleted or rebuilt behind the user's back (`corrupt` says how
to recover it). `is_busy` tells a lock that a retry may get past from every other failure.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from distill.errors import CacheError

# SQLite primary result codes (the low byte of sqlite_errorcode).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26


def prepare_directory(path: Path) -> None:
    """The cache file's directory exists and is writable, and the file (if any) is a readable, writable file."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the cache directory {directory} ({exc.strerror}); "
                         "make it writable or point DISTILL_CACHE_DIR at a writable directory") from None
    if path.is_dir():
        raise CacheError(f"cache file {path} is a directory; move it aside or set DISTILL_CACHE_DIR")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CacheError(f"the cache directory {directory} is read-only; SQLite needs to create "
                         f"{path.name}-wal and -shm beside the cache. Make it writable, or point "
                         "DISTILL_CACHE_DIR at a writable directory (copy the cache there)")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise CacheError(f"the cache file {path} is not readable and writable by this user; "
                         "fix its permissions or point DISTILL_CACHE_DIR elsewhere")

def check_not_truncated(path: Path) -> None:
    """Cheap early check: a file shorter than its own header says was cut off (copy, crash, full disk)."""
    try:
        size = path.stat().st_size
        if size == 0 or Path(str(path) + "-wal").exists():
            return  # empty (new), or in use / WAL not yet checkpointed: the header may lag
        with path.open("rb") as fh:
            header = fh.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CacheError(f"cannot read the cache file {path} ({exc.strerror})") from None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise corrupt(path, "it does not start with an SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]
    if header_valid and pages and size < pages * page_size:
        raise corrupt(path, f"it is {size:,} bytes but its header says {pages * page_size:,}: truncated")


def corrupt(path: Path, detail: str) -> CacheError:
    """The error for a damaged cache file: nothing was deleted, and how to recover."""
    return CacheError(
        f"the teacher-call cache {path} is corrupt or truncated ({detail}). Nothing was deleted. "
        f"To recover, move it aside with its -wal and -shm files (mv {path} {path}.broken) and the "
        f"next run starts a fresh cache; refill it with `distill cache import EXPORT.jsonl` if you have an "
        f"export, or salvage the readable entries with `sqlite3 {path}.broken .recover | sqlite3 "
        f"{path}`. `distill cache verify` reports the damage")


def sqlite_error(exc: sqlite3.Error, action: str, path: Path, *, max_size_bytes: int | None,
                 locked_for_s: float) -> CacheError:
    """The CacheError for an SQLite failure while trying to `action`: what happened to the file at `path`
    and what to do about it."""
    code = sqlite_code(exc)
    text = str(exc)
    if code in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return corrupt(path, text)
    if code == _FULL or "disk is full" in text:
        limit = f" (capped at {max_size_bytes:,} bytes)" if max_size_bytes else ""
        return CacheError(f"cannot {action}: the disk holding the cache {path} is full{limit}. Free "
                          "space, prune the cache (`distill cache prune`), or point DISTILL_CACHE_DIR at "
                          "another disk; the cache and the run's other files are left as they were")
    if code in (_READONLY, _PERM, _CANTOPEN) or "readonly" in text or "unable to open" in text:
        return CacheError(f"cannot {action}: the cache {path} (or its directory) is read-only or cannot "
                          f"be opened ({text}); make it writable or point DISTILL_CACHE_DIR at a writable "
                          "directory")
    if code in (_BUSY, _LOCKED) or "locked" in text:
        return CacheError(f"cannot {action}: the cache {path} stayed locked by another process for more "
                          f"than {locked_for_s:.0f} s; is a process stuck holding it?")
    if code == _IOERR or "I/O" in text:
        return CacheError(f"cannot {action}: disk I/O error on the cache {path} ({text}); check the disk")
    return CacheError(f"cannot {action} in the cache {path}: {text}")


def sqlite_code(exc: sqlite3.Error) -> int:
    """The SQLite primary result code of `exc` (0 when it carries none)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock, so a retry may succeed."""
    text = str(exc)
    return sqlite_code(exc) in (_BUSY, _LOCKED) or "locked" in text or "busy" in text

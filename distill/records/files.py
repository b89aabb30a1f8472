"""Safe writing: files replaced atomically and durably, and the run directory's lock.

Why: every stage writes JSONL and state files (manifest.json, eval.json, rounds.json,
training.json, batches.json). A crash or a power loss must leave the old file or the new one,
never a mix, a truncated file or none (`atomic_file`), and a second process must not work in a run
directory that one is already working in (`run_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from distill.errors import RunInUse


RUN_LOCK = ".run.lock"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows atomically and durably (see `atomic_file`)."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace PATH with `text` atomically and durably (see `atomic_file`): every state file
    (manifest.json, eval.json, rounds.json, training.json) is written this way."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A text file to write that replaces PATH only once the block ends without error: written to a
    temporary file beside PATH, fsynced, renamed over PATH, and the directory fsynced (the rename
    itself survives a power loss). A crash, an error or a power cut at any point leaves the old
    PATH or the new one, never a mix, a truncated file or none; an error removes the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(directory: str | os.PathLike[str]) -> None:
    """Flush every file directly in `directory`, then the directory itself (for files that a
    library wrote, such as an adapter's, before a rename or a marker file depends on them)."""
    for path in Path(directory).iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the run directory's lock (an exclusive `flock` on RUN_DIR/.run.lock, the mechanism
    batches.json uses) while the block runs. A second process on the same run fails at once with
    RunInUse naming the holder, instead of corrupting its `.partial` files and paying twice. The
    lock dies with its process, so a killed run leaves nothing stale behind."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_LOCK
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunInUse(f"{run_dir}: in use by {holder} (lock {path}); two processes on one run would "
                           "corrupt each other's files and pay the teacher twice. Wait for it to finish, stop "
                           "it, or choose another run name") from None
        fh.seek(0)
        fh.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        fh.write(f"process {os.getpid()} on {socket.gethostname()} since {started}\n")
        fh.flush()
        yield path

"""Prompt records and JSON Lines files: reading with full validation, stable ids, safe writing.

Every stage of distill reads and writes JSONL. Input files are validated whole before any model
loads, and every bad line is reported as `FILE:LINE: reason` in one error, so a user fixes them
all in one pass. Rows without an `id` get a stable one: a hash of their content, the same on
every machine and every run. Outputs are written so that a crash, or a power loss, never leaves a
half-written file under the final name (see `JsonlSink` and `atomic_file`), and `run_lock` keeps a second process off a run
directory that one is already working in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from distill.checks import Check, parse_reference
from distill.errors import InputError, RunInUse

ROLES = ("system", "user", "assistant")
MAX_REPORTED_ERRORS = 50
RUN_LOCK = ".run.lock"


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, compact separators, UTF-8 text (no ASCII escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(value: Any, length: int = 16) -> str:
    """A short, stable hex digest of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class Prompt:
    """One prompt to answer: a chat ending in a user turn, with optional reference checks."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    reference: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()

    @property
    def text(self) -> str:
        """The last user message: what a person would call "the prompt"."""
        return self.messages[-1]["content"]

    @classmethod
    def from_text(cls, text: str, id: str | None = None) -> "Prompt":
        messages = ({"role": "user", "content": text},)
        return cls(id=id or stable_prompt_id(messages, None), messages=messages)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "messages": [dict(m) for m in self.messages]}
        if self.reference is not None:
            row["reference"] = self.reference
        if self.meta:
            row["meta"] = dict(self.meta)
        return row


def stable_prompt_id(messages: tuple[Mapping[str, str], ...], reference: Any) -> str:
    """The id of a row that has none: a hash of its content, the same everywhere."""
    return "p-" + content_hash({"messages": [dict(m) for m in messages], "reference": reference})


def _parse_messages(value: Any) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("field 'messages': expected a non-empty list of {role, content} objects")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise ValueError(f"field 'messages[{i}]': expected an object, got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ValueError(f"field 'messages[{i}].role': expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"field 'messages[{i}].content': expected a string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ValueError("field 'messages': the last message must have role 'user' (it is what the student answers)")
    if not out[-1]["content"].strip():
        raise ValueError("field 'messages': the last user message is empty")
    return tuple(out)


def parse_prompt(obj: Any) -> Prompt:
    """Validate one decoded JSON row and build a Prompt; raises ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a chat list)")
    if has_prompt:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise ValueError("field 'prompt': expected a non-empty string")
        messages: tuple[Mapping[str, str], ...] = ({"role": "user", "content": obj["prompt"]},)
    else:
        messages = _parse_messages(obj["messages"])
    reference = obj.get("reference")
    checks = parse_reference(reference) if reference is not None else ()
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError("field 'meta': expected an object")
    raw_id = obj.get("id")
    if raw_id is None:
        pid = stable_prompt_id(messages, reference)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        pid = str(raw_id)
    else:
        raise ValueError(f"field 'id': expected a non-empty string or integer, got {raw_id!r}")
    return Prompt(id=pid, messages=messages, reference=reference, meta=meta, checks=checks)


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded object) for each non-blank line; raise InputError on bad I/O or JSON."""
    errors: list[str] = []
    for number, obj in _iter_lenient(Path(path), errors):
        if errors:
            break
        yield number, obj
    if errors:
        raise InputError(errors[0])


T = TypeVar("T")


def read_rows(path: str | os.PathLike[str], parse: Callable[[Any], T], *, example: str = "") -> list[T]:
    """Read and validate a whole JSONL file with `parse` (which raises ValueError naming the field).

    Every bad line is reported in one InputError as `FILE:LINE: reason`; rows with an `id`
    attribute or key must have unique ids; an empty file is an error too.
    """
    path = Path(path)
    errors: list[str] = []
    rows: list[T] = []
    first_line: dict[str, int] = {}
    for number, obj in _iter_lenient(path, errors):
        try:
            row = parse(obj)
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
            continue
        row_id = getattr(row, "id", None) if not isinstance(row, dict) else row.get("id")
        if row_id is not None:
            if str(row_id) in first_line:
                errors.append(f"{path}:{number}: duplicate id {str(row_id)!r} (first on line {first_line[str(row_id)]})")
                continue
            first_line[str(row_id)] = number
        rows.append(row)
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"\n... and {more} more" if more else ""
        raise InputError(f"{len(errors)} bad line(s) in {path}:\n" + "\n".join(shown) + tail)
    if not rows:
        raise InputError(f"{path}: the file is empty; expected one JSON object per line{example}")
    return rows


def read_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read and validate a whole prompts file; every bad line is reported in one InputError."""
    return read_rows(path, parse_prompt,
                     example=', e.g. {"id": "q1", "prompt": "What is the capital of France?"}')


def parse_answer(obj: Any) -> dict[str, Any]:
    """Validate one row of an answers file (as written by `distill answer`)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for name in ("id", "prompt_id"):
        if not isinstance(obj.get(name), (str, int)) or isinstance(obj.get(name), bool):
            raise ValueError(f"field {name!r}: expected a string id")
    if not isinstance(obj.get("answer"), str):
        raise ValueError("field 'answer': expected a string")
    _parse_messages(obj.get("messages"))
    if obj.get("reference") is not None:
        parse_reference(obj["reference"])
    return {**obj, "id": str(obj["id"]), "prompt_id": str(obj["prompt_id"]), "sample": int(obj.get("sample", 0))}


def read_answers(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return read_rows(path, parse_answer,
                     example=" with id, prompt_id, messages and answer (as `distill answer` writes)")


def _iter_lenient(path: Path, errors: list[str]) -> Iterator[tuple[int, Any]]:
    """Like iter_jsonl, but a bad JSON line is recorded in `errors` and reading goes on."""
    text = _read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            errors.append(f"{path}:{number}: invalid JSON (nested too deeply)")
            continue
        surrogate = lone_surrogate(obj)
        if surrogate is not None:
            errors.append(f"{path}:{number}: {surrogate}")
            continue
        yield number, obj


def lone_surrogate(value: Any) -> str | None:
    """Where a decoded JSON value holds a lone surrogate (`"\\ud800"`: valid JSON, invalid Unicode,
    which no UTF-8 file or hash can take), as a sentence naming the field; None if nowhere."""
    stack: list[tuple[str, str, Any]] = [("", "the row", value)]  # (field path, what to call it, value)
    while stack:
        path, label, item = stack.pop()
        if isinstance(item, dict):
            for key, inner in reversed(item.items()):
                inner_path = f"{path}.{key}" if path else str(key)
                stack.append((inner_path, f"field {inner_path!r}", inner))
                stack.append((path, f"a key of field {path!r}" if path else "a field name", key))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", f"field '{path}[{i}]'", inner) for i, inner in reversed(list(enumerate(item))))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"{label}: a lone surrogate (\\u{ord(item[exc.start]):04x} at character {exc.start}) is not "
                        "valid Unicode; remove that escape or complete its pair")
    return None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "re-save the file as UTF-8") from None


class JsonlSink:
    """Append rows to `PATH.partial`, flushed per write; `commit()` renames it to PATH.

    A crash leaves only the `.partial` file, never a truncated final file. Re-opening the same
    sink resumes: `done` holds every valid row already written, so a caller skips their work and
    nothing is computed or written twice. A bad line (torn by a crash, or garbled) costs only its
    own row: it is reported on stderr as `FILE:LINE` (and listed in `skipped`), the rows after it
    are kept, and the partial file is rewritten with the valid rows before anything is appended.
    With `reuse_finished`, the rows of a finished PATH from an earlier run count as done too
    (read, not copied: PATH stays until `commit` replaces it, so a crash before then loses none
    of them, and `commit` keeps them); an unreadable finished file is ignored and its rows redone.
    """

    def __init__(self, path: str | os.PathLike[str], key: str = "id", *, reuse_finished: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.key = key
        self.skipped: list[str] = []  # FILE:LINE: why, for each line of the partial file not kept
        self.done: dict[str, dict[str, Any]] = self._recover()
        self._fh = None
        if reuse_finished:
            recovered = set(self.done)
            for row in self._finished():
                if (key := str(row[self.key])) not in recovered:
                    self.done[key] = dict(row)

    def _finished(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return []

    def _recover(self) -> dict[str, dict[str, Any]]:
        if not self.partial.exists():
            return {}
        rows: dict[str, dict[str, Any]] = {}
        lines = self.partial.read_bytes().split(b"\n")  # the last item is what follows the last newline
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                row = self._row(raw, torn=number == len(lines))
            except ValueError as exc:
                self.skipped.append(f"{self.partial}:{number}: {exc}")
                continue
            rows[str(row[self.key])] = row
        if self.skipped:
            for line in self.skipped:
                print(f"distill: {line}; skipped, its row is done again", file=sys.stderr)
            write_jsonl(self.partial, rows.values())
        return rows

    def _row(self, raw: bytes, *, torn: bool) -> dict[str, Any]:
        """One line of the partial file as a row; ValueError saying why it cannot be kept."""
        if torn:
            raise ValueError("torn write (the process stopped in the middle of this line)")
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nested too deeply
            raise ValueError(f"not a JSON row ({str(exc)[:100]})") from None
        if not isinstance(row, dict) or self.key not in row:
            raise ValueError(f"not a row with a {self.key!r} field")
        return row

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.partial.open("a", encoding="utf-8")
            fsync_dir(self.path.parent)  # the partial file's name survives a power loss too
        for row in rows:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.done[str(row[self.key])] = dict(row)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def commit(self, order: list[str] | None = None) -> Path:
        """Write the final file (rows in `order` of keys if given) and remove the partial."""
        self.close()
        rows = [self.done[k] for k in order] if order is not None else list(self.done.values())
        write_jsonl(self.path, rows)
        self.partial.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


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

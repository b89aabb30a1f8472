"""JSON Lines files: reading with full validation, and resumable appending.

Every stage of distill reads and writes JSONL. Input files are validated whole before any model
loads, and every bad line is reported as `FILE:LINE: reason` in one error (`read_rows`), so a user
fixes them all in one pass. Outputs are appended through `JsonlSink`: a crash, or a power loss,
never leaves a half-written file under the final name, and a re-run resumes from the rows already
written. Writing whole files atomically is `distill.records.files`'s job.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from distill.errors import InputError
from distill.records.files import fsync_dir, write_jsonl

MAX_REPORTED_ERRORS = 50


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded object) for each non-blank line; raise InputError on bad I/O or JSON."""
    errors: list[str] = []
    for number, obj in iter_jsonl_lenient(Path(path), errors):
        if errors:
            break
        yield number, obj
    if errors:
        raise InputError(errors[0])


def written_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file a run wrote itself (none when it is absent); InputError
    FILE:LINE on a line that is not JSON."""
    path = Path(path)
    if not path.exists():
        return []
    return [obj for _, obj in iter_jsonl(path) if isinstance(obj, dict)]


T = TypeVar("T")


def read_rows(path: str | os.PathLike[str], parse: Callable[[Any], T], *, example: str = "") -> list[T]:
    """Read and validate a whole JSONL file with `parse` (which raises ValueError naming the field).

    Every bad line is reported in one InputError as `FILE:LINE: reason`; rows with an `id`
    attribute or key must have unique ids; an empty file is an error too.
    """
    path = Path(path)
    errors: list[str] = []
    return validate_rows(str(path), iter_jsonl_lenient(path, errors), parse, errors=errors,
                         empty=f"{path}: the file is empty; expected one JSON object per line{example}")


def validate_rows(source: str, numbered: Iterable[tuple[int | str, Any]], parse: Callable[[Any], T], *,
                  errors: list[str] | None = None, empty: str = "", unit: str = "line") -> list[T]:
    """Parse every (number, raw row) of `source` (a file, a table, a dataset), collecting every bad one
    as `SOURCE:NUMBER: reason` into one InputError; ids must be unique; no rows at all is an error
    (`empty` says what was expected). `errors` may already hold problems found while reading."""
    errors = [] if errors is None else errors
    rows: list[T] = []
    first: dict[str, int | str] = {}
    for number, obj in numbered:
        try:
            row = parse(obj)
        except ValueError as exc:
            errors.append(f"{source}:{number}: {exc}")
            continue
        row_id = getattr(row, "id", None) if not isinstance(row, dict) else row.get("id")
        if row_id is not None:
            if str(row_id) in first:
                errors.append(f"{source}:{number}: duplicate id {str(row_id)!r} (first on {unit} {first[str(row_id)]})")
                continue
            first[str(row_id)] = number
        rows.append(row)
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"\n... and {more} more" if more else ""
        raise InputError(f"{len(errors)} bad {unit}(s) in {source}:\n" + "\n".join(shown) + tail)
    if not rows:
        raise InputError(empty or f"{source}: no rows")
    return rows


def iter_jsonl_lenient(path: Path, errors: list[str]) -> Iterator[tuple[int, Any]]:
    """Like iter_jsonl, but a bad JSON line is recorded in `errors` and reading goes on."""
    text = read_text(path)
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


def read_text(path: Path) -> str:
    """The text of a UTF-8 file; InputError naming the file (and the line of a byte that is not UTF-8)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a JSONL file (prompts may also be a .parquet or "
                         ".csv file, or a folder written by datasets' save_to_disk)") from None
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



"""The cache's portable format: `distill cache export` and `distill cache import`.

An export is a JSONL file (gzip when its name ends in `.gz`): a header line naming the format and
its version, then one entry per line with its request and raw response as JSON objects, so the
file is readable. An import trusts nothing it reads: each entry's key is recomputed from its
canonical request and its response from its checksum, its backend and model columns must be the
ones its request names, every field must have its type and range (a malformed one is a FILE:LINE
error), the whole file is checked before anything is written, and importing the same file twice
adds nothing the second time.

What that proves: each answer is filed under the request it claims to answer, and was not
altered or damaged after its checksum was computed. What it cannot prove: that the answer came
from the model it names. A checksum is not a signature; whoever can write the file can write any
answer with a matching checksum. Import only exports you would trust as your own cache.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import IO, Any, Iterator

from distill.errors import CacheError, InputError
from distill.records.ids import canonical_json
from distill.teachers.cache.entry import Entry
from distill.teachers.cache.store import CacheStore

EXPORT_FORMAT = "distill-teacher-cache"
EXPORT_VERSION = 1
IMPORT_BATCH = 500
MAX_REPORTED = 20


# ------------------------------------------------------------------------------------ export

def export_cache(store: CacheStore, path: Path, *, model: str | None = None, template: str | None = None) -> int:
    """Write the (filtered) entries as JSONL, header line first; atomic: a crash leaves no half file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _open_text(tmp, "w", gz=path.name.endswith(".gz")) as fh:
            fh.write(json.dumps({"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": time.time(),
                                 "source": str(store.path)}) + "\n")
            for entry in store.iter_entries():
                if _selected(entry, model, template):
                    fh.write(json.dumps(entry_to_export(entry), ensure_ascii=False) + "\n")
                    count += 1
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"cannot write the export {path} ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _selected(entry: Entry, model: str | None, template: str | None) -> bool:
    if model is not None and model not in (entry.model, f"{entry.backend}:{entry.model}"):
        return False
    return template is None or template in entry.template_ids


def entry_to_export(entry: Entry) -> dict[str, Any]:
    """One export row: the request and raw response as JSON objects, so the file is readable."""
    return {"key": entry.key, "backend": entry.backend, "model": entry.model,
            "request": json.loads(entry.request),
            "response": {"text": entry.text, "finish_reason": entry.finish_reason,
                         "usage": {"input_tokens": entry.input_tokens, "output_tokens": entry.output_tokens},
                         "model": entry.response_model, "raw": json.loads(entry.raw)},
            "template_ids": list(entry.template_ids), "created_at": entry.created_at, "checksum": entry.checksum}


def entry_from_export(row: Any) -> Entry:
    """Rebuild an Entry from an export row, re-canonicalising; raises ValueError naming the field."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    try:
        response = row["response"]
        usage = response["usage"]
        entry = Entry(key=_str(row, "key"), backend=_str(row, "backend"), model=_str(row, "model"),
                      request=canonical_json(row["request"]), text=_str(response, "text"),
                      finish_reason=_str(response, "finish_reason"), input_tokens=_count(usage, "input_tokens"),
                      output_tokens=_count(usage, "output_tokens"), raw=canonical_json(response["raw"]),
                      response_model=_str(response, "model"), template_ids=_template_ids(row),
                      created_at=_moment(row, "created_at"), checksum=_str(row, "checksum"))
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, AttributeError, ArithmeticError, RecursionError) as exc:
        raise ValueError(f"malformed entry ({type(exc).__name__}: {exc})") from None
    problems = entry.problems()
    if problems:
        raise ValueError(f"entry {entry.key[:19]}... rejected: " + "; ".join(problems))
    return entry


def _str(obj: Any, name: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"field {name!r}: expected a string, got {type(value).__name__}")
    return value


def _count(obj: Any, name: str) -> int:
    """A token count: a whole number from 0 to 2**53 (no float, bool or 1e400)."""
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2 ** 53:
        raise ValueError(f"field {name!r}: expected a token count (a whole number >= 0), got {value!r:.40}")
    return value


def _moment(obj: Any, name: str) -> float:
    """A unix time: a finite number."""
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"field {name!r}: expected a unix time (a finite number), got {value!r:.40}")
    return float(value)


def _template_ids(row: Any) -> tuple[str, ...]:
    """The template ids: a list of strings (none when absent)."""
    value = row.get("template_ids", [])
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"field 'template_ids': expected a list of template id strings, got {value!r:.60}")
    return tuple(value)


# ------------------------------------------------------------------------------------ import

def import_cache(store: CacheStore, path: Path, *, skip_invalid: bool = False) -> dict[str, int]:
    """Check the whole file, then add its entries in short transactions. Idempotent."""
    errors = [f"{path}:{number}: {problem}" for number, problem in _scan(path) if problem is not None]
    if errors and not skip_invalid:
        shown = errors[:MAX_REPORTED]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise InputError(f"{len(errors)} invalid entr{'y' if len(errors) == 1 else 'ies'} in {path}; nothing "
                         "was imported (re-export it, or pass --skip-invalid to import the rest):\n"
                         + "\n".join(shown) + more)
    report = {"added": 0, "present": 0, "differing": 0, "rejected": len(errors)}
    batch: list[Entry] = []
    for entry in _valid_entries(path):
        batch.append(entry)
        if len(batch) >= IMPORT_BATCH:
            _import_batch(store, batch, report)
            batch = []
    if batch:
        _import_batch(store, batch, report)
    return report


def _import_batch(store: CacheStore, batch: list[Entry], report: dict[str, int]) -> None:
    local = {e.key: e for e in (store.get(entry.key, verify=False) for entry in batch) if e is not None}
    report["present"] += sum(1 for e in batch if e.key in local)
    report["differing"] += sum(1 for e in batch if e.key in local and local[e.key].checksum != e.checksum)
    report["added"] += store.put_many([e for e in batch if e.key not in local])


def _scan(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line, problem or None) for every entry line; the header is checked first."""
    for number, row, problem in _rows(path):
        if problem is None:
            try:
                entry_from_export(row)
            except ValueError as exc:
                problem = str(exc)
        yield number, problem


def _valid_entries(path: Path) -> Iterator[Entry]:
    for _, row, problem in _rows(path):
        if problem is None:
            try:
                yield entry_from_export(row)
            except ValueError:
                continue


def _rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        with _open_text(path, "r") as fh:
            first = True
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:
                    why = (f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                           else "nested too deep")
                    if first:
                        raise InputError(f"{path}:{number}: not a distill cache export "
                                         f"(invalid JSON: {why})") from None
                    yield number, None, f"invalid JSON ({why})"
                    continue
                if first:
                    _check_header(path, row)
                    first = False
                    continue
                yield number, row, None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc}); is it a complete export?") from None


def _check_header(path: Path, row: Any) -> None:
    if not isinstance(row, dict) or row.get("format") != EXPORT_FORMAT:
        raise InputError(f"{path}:1: not a distill cache export (expected a header with format {EXPORT_FORMAT!r})")
    if row.get("version") != EXPORT_VERSION:
        raise InputError(f"{path}:1: export version {row.get('version')!r}; this distill reads {EXPORT_VERSION}")


def _open_text(path: Path, mode: str, gz: bool | None = None) -> IO[str]:
    """Open a text file, gzip-compressed if `gz` (default: by its name when writing, its bytes when reading)."""
    if gz is None:
        gz = _is_gzip(path) if mode == "r" else path.name.endswith(".gz")
    if gz:
        import gzip

        return gzip.open(path, "rt", encoding="utf-8") if mode == "r" else gzip.open(path, "wt", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"

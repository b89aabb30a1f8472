"""`distill cache stats|export|import|prune|verify`: look after the teacher-call cache.

The cache (see `distill.cache`) fills itself during runs; these commands show what is in it,
move it between machines as a portable JSONL file (gzip when the name ends in `.gz`), drop what
is no longer wanted, and check that every entry still re-hashes to its key. An import trusts
nothing it reads: each entry's key is recomputed from its canonical request and its response
from its checksum, its backend and model columns must be the ones its request names, every field
must have its type and range (a malformed one is a FILE:LINE error), the whole file is checked
before anything is written, and importing the same file twice adds nothing the second time.

What that proves: each answer is filed under the request it claims to answer, and was not
altered or damaged after its checksum was computed. What it cannot prove: that the answer came
from the model it names. A checksum is not a signature; whoever can write the file can write any
answer with a matching checksum. Import only exports you would trust as your own cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

from distill.errors import CacheError, InputError

if TYPE_CHECKING:
    from distill.cache import CacheStore, Entry

EXPORT_FORMAT = "distill-teacher-cache"
EXPORT_VERSION = 1
IMPORT_BATCH = 500
MAX_REPORTED = 20
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="inspect, move, prune and verify the teacher-call cache",
        description=_description,
    )
    verbs = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    s = verbs.add_parser("stats", help="entries, size, counts by model and template, hit rate of the last run")
    s.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    s.set_defaults(func=run_stats)

    e = verbs.add_parser("export", help="write every entry to a portable JSONL file (gzip if FILE ends in .gz)")
    e.add_argument("file", type=Path, help="output file, e.g. cache-export.jsonl.gz")
    e.add_argument("--model", help="only entries of this model (name, or backend:name)")
    e.add_argument("--template", help="only entries rendered by this template id")
    e.set_defaults(func=run_export)

    i = verbs.add_parser("import", help="add the entries of an export (idempotent; every hash is re-checked)")
    i.add_argument("file", type=Path, help="a file written by `distill cache export`")
    i.add_argument("--skip-invalid", action="store_true",
                   help="import the valid entries even if some fail verification (default: import nothing)")
    i.set_defaults(func=run_import)

    r = verbs.add_parser("prune", help="delete entries by age, model or template")
    r.add_argument("--older-than", type=parse_duration, metavar="AGE",
                   help="entries created more than AGE ago: a number and a unit s, m, h, d or w (e.g. 30d)")
    r.add_argument("--model", help="entries of this model (name, or backend:name)")
    r.add_argument("--template", help="entries rendered by this template id")
    r.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    r.set_defaults(func=run_prune)

    v = verbs.add_parser("verify", help="re-hash every entry and report mismatches and structural damage")
    v.add_argument("--delete-bad", action="store_true", help="delete the entries that fail (the file stays)")
    v.set_defaults(func=run_verify)

    for verb in (s, e, i, r, v):
        verb.add_argument("--cache-dir", type=Path, default=None,
                          help="the cache directory (default: $DISTILL_CACHE_DIR, else ./cache)")


def _description() -> str:
    from distill.cache import FILENAME

    return (f"The teacher-call cache is one SQLite file, $DISTILL_CACHE_DIR/{FILENAME} (default "
            f"./cache/{FILENAME}). Every teacher answer is stored under a hash of everything that can "
            "change it, so re-runs, resumes and DISTILL_OFFLINE=1 replays cost nothing.")


def parse_duration(text: str) -> float:
    """'30d' -> seconds. Units: s, m, h, d, w."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and a unit s, m, h, d or w, e.g. 30d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _open_existing(cache_dir: Path | None) -> CacheStore:
    from distill.cache import CacheStore, cache_path

    path = cache_path(cache_dir)
    if not path.exists():
        raise CacheError(f"no cache at {path} (nothing cached yet; set DISTILL_CACHE_DIR or --cache-dir "
                         "to use another one)")
    return CacheStore(path)


# ------------------------------------------------------------------------------------- stats

def run_stats(args: argparse.Namespace) -> int:
    from distill.cache import CacheStore, cache_path

    path = cache_path(args.cache_dir)
    if not path.exists():
        print(f"no cache at {path} yet")
        return 0
    store = CacheStore(path)
    try:
        summary = store.summary()
    finally:
        store.close()
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_stats(summary))
    return 0


def format_stats(summary: dict[str, Any]) -> str:
    """The human-readable `distill cache stats` report."""
    lines = [f"cache     {summary['path']}",
             f"entries   {summary['entries']:,} ({_size(summary['bytes'])} on disk)"]
    if summary["entries"]:
        lines.append(f"created   {_when(summary['oldest'])} .. {_when(summary['newest'])}")
    run = summary["last_run"]
    if run:
        rate = f"{run['hit_rate']:.1%}" if run["hit_rate"] is not None else "n/a"
        mode = ", offline" if run["offline"] else ""
        misses = f", {run['offline_misses']} offline misses" if run["offline_misses"] else ""
        lines.append(f"last run  {_when(run['finished_at'])} {run['backend']}:{run['model']}{mode}: "
                     f"{run['requests']} requests, hit rate {rate} ({run['hits']} hits, {run['coalesced']} "
                     f"coalesced, {run['misses']} sent, {run['stored']} stored, {run['failed']} failed{misses})")
    else:
        lines.append("last run  none recorded")
    if summary["by_model"]:
        width = max(len(f"{m['backend']}:{m['model']}") for m in summary["by_model"]) + 2
        lines += ["", f"{'model':<{width}}{'entries':>9}{'size':>11}"]
        lines += [f"{m['backend'] + ':' + m['model']:<{width}}{m['entries']:>9,}{_size(m['bytes'] or 0):>11}"
                  for m in summary["by_model"]]
    if summary["by_template"]:
        width = max(len(t["template"]) for t in summary["by_template"]) + 2
        lines += ["", f"{'template':<{width}}{'entries':>9}"]
        lines += [f"{t['template']:<{width}}{t['entries']:>9,}" for t in summary["by_template"]]
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


# ------------------------------------------------------------------------------------ export

def run_export(args: argparse.Namespace) -> int:
    store = _open_existing(args.cache_dir)
    try:
        count = export_cache(store, args.file, model=args.model, template=args.template)
    finally:
        store.close()
    print(f"exported {count:,} entries to {args.file}", file=sys.stderr)
    return 0


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
    from distill.cache import Entry
    from distill.records.ids import canonical_json

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

def run_import(args: argparse.Namespace) -> int:
    from distill.cache import CacheStore, cache_path

    store = CacheStore(cache_path(args.cache_dir))
    try:
        report = import_cache(store, args.file, skip_invalid=args.skip_invalid)
    finally:
        store.close()
    print(f"imported {report['added']:,} new entries from {args.file} into {store.path}; "
          f"{report['present']:,} were already there ({report['differing']:,} with another answer: kept the local "
          f"one); {report['rejected']:,} rejected", file=sys.stderr)
    return 1 if report["rejected"] else 0


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


# ------------------------------------------------------------------------------------- prune

def run_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.model is None and args.template is None:
        raise CacheError("distill cache prune: give at least one of --older-than, --model, --template")
    store = _open_existing(args.cache_dir)
    try:
        count = store.prune(older_than_s=args.older_than, model=args.model, template=args.template,
                            dry_run=args.dry_run)
        left = len(store)
    finally:
        store.close()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {count:,} entries; {left:,} in the cache", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ verify

def run_verify(args: argparse.Namespace) -> int:
    from distill.cache import cache_path

    path = cache_path(args.cache_dir)
    try:
        store = _open_existing(args.cache_dir)
    except CacheError as exc:
        print(f"FAIL {exc}")
        return 1
    try:
        structural = store.integrity_problems()
        checked, bad, error = 0, [], None

        def unreadable(key: str, why: str) -> None:
            nonlocal checked
            checked += 1
            bad.append((key, [why]))

        try:
            for entry in store.iter_entries(unreadable=unreadable):
                checked += 1
                problems = entry.problems()
                if problems:
                    bad.append((entry.key, problems))
        except CacheError as exc:
            error = exc
        if args.delete_bad and bad and error is None:
            store.delete_keys([key for key, _ in bad])
    finally:
        store.close()
    for problem in structural[:MAX_REPORTED]:
        print(f"FAIL structure: {problem}")
    for key, problems in bad[:MAX_REPORTED]:
        print(f"FAIL {key}: {'; '.join(problems)}")
    if len(bad) > MAX_REPORTED:
        print(f"... and {len(bad) - MAX_REPORTED} more bad entries")
    if error is not None:
        print(f"FAIL stopped after {checked:,} entries: {error}")
    deleted = " (deleted)" if args.delete_bad and bad and error is None else ""
    print(f"{path}: {checked:,} entries checked, {len(bad):,} bad{deleted}, "
          f"structure {'ok' if not structural else 'DAMAGED'}")
    return 1 if structural or bad or error is not None else 0

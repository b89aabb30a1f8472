"""`distill cache stats|export|import|prune|verify`: look after the teacher-call cache.

The cache (see `distill.teachers.cache`) fills itself during runs; these commands show what is in
it, move it between machines as a portable JSONL file (gzip when the name ends in `.gz`; the format
and what an import checks are `distill.teachers.cache.export`), drop what is no longer wanted, and
check that every entry still re-hashes to its key.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import CacheError

if TYPE_CHECKING:
    from distill.teachers.cache.store import CacheStore

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
    from distill.teachers.cache.store import FILENAME

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
    from distill.teachers.cache.store import CacheStore, cache_path

    path = cache_path(cache_dir)
    if not path.exists():
        raise CacheError(f"no cache at {path} (nothing cached yet; set DISTILL_CACHE_DIR or --cache-dir "
                         "to use another one)")
    return CacheStore(path)


# ------------------------------------------------------------------------------------- stats

def run_stats(args: argparse.Namespace) -> int:
    from distill.teachers.cache.store import CacheStore, cache_path

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
    from distill.teachers.cache.export import export_cache

    store = _open_existing(args.cache_dir)
    try:
        count = export_cache(store, args.file, model=args.model, template=args.template)
    finally:
        store.close()
    print(f"exported {count:,} entries to {args.file}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ import

def run_import(args: argparse.Namespace) -> int:
    from distill.teachers.cache.export import import_cache
    from distill.teachers.cache.store import CacheStore, cache_path

    store = CacheStore(cache_path(args.cache_dir))
    try:
        report = import_cache(store, args.file, skip_invalid=args.skip_invalid)
    finally:
        store.close()
    print(f"imported {report['added']:,} new entries from {args.file} into {store.path}; "
          f"{report['present']:,} were already there ({report['differing']:,} with another answer: kept the local "
          f"one); {report['rejected']:,} rejected", file=sys.stderr)
    return 1 if report["rejected"] else 0


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
    from distill.teachers.cache.export import MAX_REPORTED
    from distill.teachers.cache.store import cache_path

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

"""`distill batch status|collect|retry NAME`: look after the provider batches of a run.

A run started with `--batch --no-wait` exits once its batches are submitted (see `distill.batch`).
These commands work on what it left in runs/NAME/batches.json, without re-running the pipeline:
`status` shows each batch and asks the provider how far it got, `collect` reads the batches that
ended into the cache (`--wait`: until every one has), and `retry` submits again the requests
whose rows came back errored, expired or canceled. Re-running `distill run ... --batch` does all
of this by itself and then carries on with the round.

They talk to the teacher the batches were sent to (recorded per batch), with the API key from the
environment as usual; `--teacher` and `--base-url` override it. Exit status 75 means batches are
still running: try again later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from distill.errors import BatchesPending, InputError

RUNNING_EXIT = BatchesPending.exit_code


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="status, collection and retry of a run's provider batches (--batch)",
                       description="Look after the provider batches of a run started with --batch (and --no-wait): "
                                   "show them, read the ended ones into the cache, submit failed rows again. "
                                   "Exit status 75: batches are still running, try again later.")
    verbs = p.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    s = verbs.add_parser("status", help="each batch of the run, its state and counts (asks the provider)")
    _common(s)
    s.add_argument("--no-check", action="store_true", help="only show what batches.json records; no network")
    s.add_argument("--json", action="store_true", help="print the batch records as JSON")
    s.set_defaults(func=status_command)
    c = verbs.add_parser("collect", help="read the ended batches into the cache")
    _common(c)
    c.add_argument("--wait", action="store_true", help="wait (with backoff) until every batch has ended")
    c.set_defaults(func=collect_command)
    r = verbs.add_parser("retry", help="submit the requests whose rows came back errored, expired or canceled again")
    _common(r)
    r.add_argument("--no-wait", action="store_true", help="exit once submitted instead of waiting for the batches")
    r.set_defaults(func=retry_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the run name (its artefacts are in RUNS_DIR/NAME/)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default ./runs)")
    p.add_argument("--teacher", default=None, help="backend:model (default: the one the batches were sent to)")
    p.add_argument("--base-url", default=None, help="API base URL (default: the one the batches were sent to)")


def status_command(args: argparse.Namespace) -> int:
    import asyncio

    from distill.batch import OPEN_STATES, SUBMITTED, SUBMITTING, BatchBook

    run_dir = _run_dir(args)
    book = BatchBook(run_dir)
    if not args.no_check and any(p.state in (SUBMITTING, SUBMITTED) for p in book.parts()):
        asyncio.run(_with_queue(run_dir, args, lambda queue: queue.refresh(collect=False)))
    parts = book.parts()
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(p) for p in parts], indent=2))
    else:
        print(_table(parts))
    return RUNNING_EXIT if any(p.state in OPEN_STATES for p in parts) else 0


def collect_command(args: argparse.Namespace) -> int:
    async def collect(queue: Any) -> None:
        await queue.refresh()
        if args.wait:
            await queue.wait_all()

    return _report(args, collect)


def retry_command(args: argparse.Namespace) -> int:
    async def retry(queue: Any) -> None:
        queue.wait = not args.no_wait
        await queue.refresh()
        submitted = await queue.retry()
        print(f"distill: submitted {submitted} request(s) again", file=sys.stderr)
        if queue.wait:
            await queue.wait_all()

    return _report(args, retry)


def _report(args: argparse.Namespace, action: Any) -> int:
    import asyncio

    from distill.batch import OPEN_STATES, BatchBook

    run_dir = _run_dir(args)
    asyncio.run(_with_queue(run_dir, args, action))
    parts = BatchBook(run_dir).parts()
    print(_table(parts))
    running = sum(1 for p in parts if p.state in OPEN_STATES)
    if running:
        print(f"distill: {running} batch(es) still running; run `distill batch collect {args.name}` later "
              "(or re-run the round) to continue", file=sys.stderr)
        return RUNNING_EXIT
    print(f"distill: no batch of {args.name!r} is running; re-run the round to use the answers", file=sys.stderr)
    return 0


def _run_dir(args: argparse.Namespace) -> Path:
    run_dir = args.runs_dir / args.name
    if not (run_dir / "batches.json").exists():
        raise InputError(f"{run_dir / 'batches.json'}: no provider batches recorded for run {args.name!r} "
                         "(was it run with --batch?)")
    return run_dir


async def _with_queue(run_dir: Path, args: argparse.Namespace, action: Any) -> None:
    from distill.batch import BatchBook, queue_for
    from distill.teachers.settings import resolve_settings

    parts = BatchBook(run_dir).parts()
    last = parts[-1]
    settings = resolve_settings(overrides={"teacher": args.teacher or last.teacher,
                                           "base_url": args.base_url or last.endpoint})
    queue, store = queue_for(settings, run_dir)
    try:
        await action(queue)
    finally:
        try:
            await queue.aclose()
        finally:
            store.close()


def _table(parts: list[Any]) -> str:
    lines = [("| batch | provider id | teacher | state | provider status | requests | rows done | outcomes "
              "| submitted |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for p in parts:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(p.outcomes.items())) or "-"
        done = p.done
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.submitted_at))
        lines.append(f"| {p.part} | {p.batch_id or '-'} | {p.teacher} | {p.state} | {p.status or '-'} | {p.requests} "
                     f"| {done} | {outcomes} | {when} |")
    return "\n".join(lines)


"""`distill batch status|collect|retry NAME`: look after the provider batches of a run.

A run started with `--batch --no-wait` exits once its batches are submitted (see `distill.teachers.batch`).
These commands work on what it left in runs/NAME/batches.json, without re-running the pipeline:
`status` shows each batch and asks the provider how far it got, `collect` reads the batches that
ended into the cache (`--wait`: until every one has), and `retry` submits again the requests
whose rows came back errored, expired or canceled. Re-running `distill run ... --batch` does all
of this by itself and then carries on with the round.

They talk to the teacher the batches were sent to (recorded per batch), at the endpoint the user
configured (`--base-url`, the config file, DISTILL_TEACHER_BASE_URL / OPENAI_BASE_URL /
ANTHROPIC_BASE_URL, else the provider's own), with the API key from the environment as usual. The
endpoint recorded in batches.json is never taken on its own word: the file travels with a run and
can be edited, and the key must not follow it to another host. When no batch was sent to the
configured endpoint, the command refuses and names both. Exit status 75 means batches are still
running: try again later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from distill.cli.options import add_run_name, run_folder
from distill.errors import BatchesPending, ConfigError, InputError

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
    add_run_name(p)
    p.add_argument("--teacher", default=None, help="backend:model (default: the one the batches were sent to)")
    p.add_argument("--base-url", default=None, help="API base URL (default: the configured one); batches.json must "
                                                    "record it as the one the batches were sent to")


def status_command(args: argparse.Namespace) -> int:
    import asyncio

    from distill.teachers.batch.book import OPEN_STATES, SUBMITTED, SUBMITTING, BatchBook

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

    from distill.teachers.batch.book import OPEN_STATES, BatchBook

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
    run_dir = run_folder(args, must_exist=False).path
    if not (run_dir / "batches.json").exists():
        raise InputError(f"{run_dir / 'batches.json'}: no provider batches recorded for run {args.name!r} "
                         "(was it run with --batch?)")
    return run_dir


async def _with_queue(run_dir: Path, args: argparse.Namespace, action: Any) -> None:
    from distill.teachers.batch.book import BatchBook
    from distill.teachers.stack import queue_for

    settings = configured_teacher(BatchBook(run_dir), args.teacher, args.base_url)
    queue, store = queue_for(settings, run_dir)
    try:
        await action(queue)
    finally:
        try:
            await queue.aclose()
        finally:
            store.close()


def configured_teacher(book: Any, teacher: str | None, base_url: str | None) -> Any:
    """The teacher settings for a run's batches: the recorded teacher (unless `teacher`), at the
    endpoint the user configured (`base_url`, else the config file, the environment or the
    provider's default), never at one batches.json merely names. That file is plain text that
    travels with a run; if it could choose the host, it could have the API key sent anywhere.
    ConfigError, naming both, when no batch of that teacher was sent to the configured endpoint."""
    from distill.teachers.registry import backend_identity
    from distill.teachers.resolve import resolve_settings

    parts = book.parts()
    settings = resolve_settings(overrides={"teacher": teacher or parts[-1].teacher, "base_url": base_url})
    configured = str(backend_identity(settings).get("base_url") or "")
    recorded = sorted({p.endpoint for p in parts if p.teacher == settings.name})
    if configured not in recorded:
        source = settings.sources.get("base_url", "default")
        where = "the provider's default" if source == "default" else source
        raise ConfigError(
            f"{book.path}: the batches of {settings.name} were sent to {', '.join(recorded) or '(none)'}, but the "
            f"configured endpoint is {configured} ({where}); distill sends the API key only to the configured "
            f"endpoint. If {recorded[0] if recorded else 'that host'} is yours, say so with --base-url or "
            "DISTILL_TEACHER_BASE_URL")
    others = [e for e in recorded if e != configured]
    if others:
        print(f"distill: leaving alone the batches of {settings.name} sent to {', '.join(others)} (not the "
              f"configured endpoint {configured})", file=sys.stderr)
    return settings


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


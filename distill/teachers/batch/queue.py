"""Batch mode: every teacher request not yet in the cache goes out as a provider batch.

Why: a distillation run is not interactive. The providers' batch APIs cost about half as much
and draw on a rate-limit pool of their own, so `--batch` (or `DISTILL_TEACHER_BATCH=1`) should be
the only change a user makes. The stages stay as they are, and so does the cache: batch answers
are stored under the same keys, with the same fields, as live answers, so the two are
interchangeable and an offline re-run needs neither.

A run in batch mode goes in passes:

    pass    the stages run as usual and the cache answers what it has. Behind the cache sits a
            `BatchQueue` instead of a live backend: it records each request it is asked for and
            raises `Deferred`, and the stage leaves that row pending and writes nothing for it.
    flush   the recorded requests that are neither in the cache nor in a batch of this run are
            split under the provider's limits and submitted (`distill.teachers.batch.clients`). Each
            batch is written to runs/NAME/batches.json as soon as it exists, before any waiting.
            Its status is checked with backoff until it ends; its rows are matched back by
            custom_id and stored in the cache.
    again   the pass runs again. A row moves on by at least one request per pass: a chain of 3
            critiques takes 3 passes, the pairwise judge 1 or 2 more.

Resuming: with `--no-wait` the process exits once its batches are submitted (exit status 75, "try
again later"); so does a re-run while they are still running. `distill batch status NAME` shows
them, `distill batch collect NAME` reads the ended ones into the cache, and re-running the same
command continues. Nothing is submitted twice: a request already in the cache, or in a batch of
this run that has not been collected, is never sent again. A part is recorded ("submitting") just
before its batch is created, by a process that holds the part's lock file
(batches/PART.submitting.lock) until the batch id is written down; the lock goes with the process,
so a part whose lock is free has no submitter, whatever became of its PID (the system may have
given it to another process by then). If the process died before the batch id was written down,
the next run looks the batch up at the provider (`BatchClient.find`: OpenAI by the part's name in
its metadata, Anthropic by its size and creation time) and adopts it; only when none (or, for
Anthropic, more than one) fits is the part given up and its requests submitted again.

Failed rows: a row that comes back errored, expired or canceled fails its request with a
`TeacherError` (reason `batch_errored`, `batch_expired` or `batch_canceled`), so its stage
records it as failed, with the provider's reason, like any other failure. Each outcome is acted
on once per process: the next run tries it again (with `--batch` in a new batch, without it
live), and so does `distill batch retry NAME`.

Accounting: when the run uses an answer that one of its own batches delivered, the cache hit is
billed at the batch price (`Completion.batch`), so the manifest shows what the run cost beside
what it would have cost live.

The run's record of its batches (runs/NAME/batches.json and the files beside it) is
`distill.teachers.batch.book`; the provider clients are `distill.teachers.batch.clients`, each
declared by its backend. The queue is stacked behind the cache by `distill.teachers.stack`, whose
handle flushes it after a pass (`TeacherHandle.settle_batches`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from distill.errors import BatchesPending, CacheError, InputError, TeacherError
from distill.records.ids import content_hash
from distill.records.rundir import as_argument
from distill.teachers.base import Completion, Deferred, Request, Usage
from distill.teachers.batch.book import ABANDONED, COLLECTED, ENDED, OPEN_STATES, SUBMITTED, SUBMITTING, BatchBook, Part
from distill.teachers.batch.wire import BatchClient, BatchState, LostBatch, Outcome, split
from distill.teachers.cache.entry import Entry, entry_of, storable
from distill.teachers.cache.key import cache_key, canonical_request, key_of
from distill.teachers.cache.store import CacheStore
from distill.teachers.settings import TeacherSettings, mask_url

MAX_POLL_S = 600.0  # the longest wait between two status checks
BACKOFF = 1.5


def _log(message: str) -> None:
    print(f"distill: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Failure:
    """A request whose batch row did not succeed."""

    outcome: str  # errored, expired or canceled
    reason: str
    batch_id: str


@dataclass(frozen=True)
class BatchMode:
    """How a run uses provider batches: where its records live and whether it waits for them."""

    run_dir: Path
    wait: bool = True  # False (--no-wait): exit once submitted, with BatchesPending
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def queue(self, settings: TeacherSettings, store: CacheStore, identity: Mapping[str, Any],
              client: BatchClient) -> "BatchQueue":
        return BatchQueue(settings, store, identity, self.run_dir, client, wait=self.wait, sleep=self.sleep)


class BatchQueue:
    """The teacher behind the cache in batch mode. It answers nothing itself: every request it
    is asked for (a cache miss) is queued and deferred; `flush()` sends the queue as provider
    batches, waits for them and stores their answers in the cache."""

    def __init__(self, settings: TeacherSettings, store: CacheStore, identity: Mapping[str, Any], run_dir: Path,
                 client: BatchClient, *, wait: bool = True, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.settings = settings
        self.backend, self.model = settings.backend, settings.model
        self.store = store
        self.book = BatchBook(run_dir)
        self.wait = wait
        self.poll_s = settings.batch_poll
        self.max_poll_s = max(settings.batch_poll, min(settings.batch_poll * 10, MAX_POLL_S))
        self.endpoint = mask_url(str(identity.get("base_url") or ""))  # recorded: credentials masked
        self._identity = dict(identity)
        self._sleep = sleep
        self._client = client  # the backend's own (`distill.teachers.registry.batch_client`)
        self.queued: dict[str, Request] = {}
        self.failed: dict[str, Failure] = {}  # outcomes collected by this process: acted on once
        self.answered: set[str] = self.book.succeeded_keys()  # billed at the batch price when used

    # -- the Teacher side

    def identity(self) -> Mapping[str, Any]:
        return dict(self._identity)

    async def complete(self, request: Request) -> Completion:
        key = cache_key(self._identity, request)
        failure = self.failed.get(key)
        if failure is not None:
            who = f"prompt {request.prompt_id!r}" if request.prompt_id is not None else f"key {key[:19]}..."
            raise TeacherError(f"{self.settings.name} batch {failure.batch_id}: the request for {who} "
                               f"{failure.outcome} ({failure.reason}); run again to retry it: live without --batch, "
                               "in a new batch with --batch or `distill batch retry`", reason=f"batch_{failure.outcome}")
        self.queued.setdefault(key, request)
        raise Deferred(key)

    def bill(self, entry: Entry, completion: Completion) -> Completion:
        """A cache hit on an answer this run's batches delivered is billed: it leaves as a batch
        answer with its usage, which the pricing layer prices at the batch price."""
        if entry.key not in self.answered:
            return completion
        return replace(completion, cached=False, batch=True, usage=Usage(entry.input_tokens, entry.output_tokens))

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the batch side

    async def flush(self) -> None:
        """Collect this run's ended batches, submit what the last pass deferred, and wait until
        every batch of this run has ended and been read into the cache. Under --no-wait, raise
        `BatchesPending` instead of waiting."""
        await self.refresh()
        await self.submit()
        if self.wait:
            await self.wait_all()
        running = self.running()
        if running:
            raise BatchesPending(self.pending_message(running))

    def mine(self, part: Part) -> bool:
        """True for batches sent for this teacher to this endpoint (others cannot be read here)."""
        return part.teacher == self.settings.name and part.endpoint == self.endpoint

    def running(self) -> list[Part]:
        """This run's batches that are not collected yet: submitted or ended, or being submitted
        by another process right now (a dead one's are recovered or given up by `refresh` first)."""
        return [p for p in self.book.parts() if self.mine(p) and p.state in OPEN_STATES]

    def pending_message(self, running: Sequence[Part]) -> str:
        ids = ", ".join(p.batch_id or p.part for p in running[:5]) + (" ..." if len(running) > 5 else "")
        name = as_argument(self.book.run_dir)
        return (f"{len(running)} provider batch(es) of run {name} still running ({ids}; "
                f"{sum(p.requests for p in running)} requests). Re-run the same command later to continue, or check "
                f"with `distill batch status {name}`")

    async def refresh(self, *, collect: bool = True) -> None:
        """Check every batch of this run not yet collected, once; collect the ones that ended
        (unless `collect` is False: then only their status is updated)."""
        for part in self.book.parts():
            if not self.mine(part) or part.state not in OPEN_STATES:
                continue
            if part.state == SUBMITTING:
                await self._recover(part)
                continue
            assert part.batch_id is not None
            state = await self._client.retrieve(part.batch_id)
            part = self.book.update(part.part, status=state.status, counts=dict(state.counts), detail=state.detail,
                                    state=ENDED if state.ended else SUBMITTED,
                                    ended_at=part.ended_at or (time.time() if state.ended else None))
            if state.ended and collect:
                await self._collect(part, state)

    async def _recover(self, part: Part) -> None:
        """A part left `submitting` by a process that died: adopt its batch if the provider has
        it (OpenAI by metadata, Anthropic by size and creation time; never a batch another part
        of this book records), else give it up so its requests are submitted again."""
        if self.book.submitter_alive(part):
            return  # another process is submitting it right now
        known = frozenset(p.batch_id for p in self.book.parts() if p.batch_id and p.part != part.part)
        found = await self._client.find(LostBatch(part.part, part.requests, part.submitted_at, known))
        if found is not None:
            self.book.update(part.part, state=SUBMITTED, batch_id=found.id, status=found.status,
                             counts=dict(found.counts))
            _log(f"found batch {found.id} for {part.part}, submitted by a run that stopped before recording it")
        else:
            self.book.update(part.part, state=ABANDONED,
                             detail=part.detail or "the submitting process stopped before the provider confirmed it")

    async def submit(self) -> list[Part]:
        """Send the queued requests that are in no open batch of this run and not in the cache."""
        queued, self.queued = self.queued, {}
        open_keys = self.book.open_keys(self.running())
        fresh = [(k, r) for k, r in queued.items()
                 if k not in self.failed and k not in open_keys and k not in self.store]
        if not fresh:
            return []
        client = self._client
        lines = [client.line(client.custom_id(k), r) for k, r in fresh]
        groups, oversized = split(lines, client.limits)
        for i in oversized:
            self.failed[fresh[i][0]] = Failure("errored", f"the request is {len(lines[i]):,} bytes, over the "
                                               f"{client.limits.max_bytes:,}-byte limit of one batch", "-")
        submitted = []
        first = len(self.book.parts())
        for n, group in enumerate(groups, first + 1):
            keys = [fresh[i][0] for i in group]
            name = f"b{n:04d}-{content_hash(keys, 8)}"
            self.book.write_requests(name, [self._request_row(fresh[i][0], fresh[i][1]) for i in group])
            size = sum(len(lines[i]) for i in group)
            with self.book.submitting(name):
                self.book.add(Part(name, client.provider, self.settings.name, self.endpoint, len(group), size))
                known = frozenset(p.batch_id for p in self.book.parts() if p.batch_id)
                try:
                    state = await client.submit([lines[i] for i in group], name, known)
                except TeacherError as exc:
                    if exc.reason != "batch_submit_unknown":  # the provider refused: nothing was created
                        self.book.update(name, state=ABANDONED, detail=str(exc)[:500])
                    raise
                part = self.book.update(name, state=SUBMITTED, batch_id=state.id, status=state.status,
                                        counts=dict(state.counts))
            submitted.append(part)
            _log(f"submitted batch {state.id} ({name}): {len(group)} requests, {size:,} bytes, to {client.provider}")
        return submitted

    def _request_row(self, key: str, request: Request) -> dict[str, Any]:
        return {"key": key, "custom_id": self._client.custom_id(key), "prompt_id": request.prompt_id,
                "template_ids": list(request.template_ids), "request": canonical_request(self._identity, request)}

    async def wait_all(self) -> None:
        """Check this run's running batches with backoff until every one has ended and been collected."""
        delay = self.poll_s
        while True:
            running = self.running()
            if not running:
                return
            done = sum(p.done for p in running)
            total = sum(p.requests for p in running)
            _log(f"waiting on {len(running)} batch(es): {done}/{total} requests done; next check in {delay:.3g} s")
            await self._sleep(delay)
            delay = min(delay * BACKOFF, self.max_poll_s)
            await self.refresh()

    async def _collect(self, part: Part, state: BatchState) -> None:
        """Read an ended batch: store every succeeded row in the cache, record how each row ended."""
        rows = self.book.requests(part.part)
        by_custom_id = {row["custom_id"]: row for row in rows}
        entries: list[Entry] = []
        results: dict[str, dict[str, Any]] = {}
        unknown = 0
        for outcome in await self._client.results(state):
            row = by_custom_id.get(outcome.custom_id)
            if row is None or row["key"] in results:
                unknown += 1
                continue
            results[row["key"]] = self._result(row, outcome, entries)
        for row in rows:
            if row["key"] not in results:
                results[row["key"]] = self._result(row, self._client.unanswered(state), entries)
        if unknown:
            _log(f"batch {state.id}: ignored {unknown} result line(s) with an unknown or repeated custom_id")
        if entries:
            await asyncio.to_thread(self.store.put_many, entries)
        self.book.write_results(part.part, [results[row["key"]] for row in rows])
        outcomes = Counter(r["outcome"] for r in results.values())
        self.book.update(part.part, state=COLLECTED, collected_at=time.time(), outcomes=dict(outcomes))
        for key, result in results.items():
            if result["outcome"] == "succeeded":
                self.answered.add(key)
                self.failed.pop(key, None)
            elif key not in self.answered:
                self.failed[key] = Failure(result["outcome"], result["reason"], state.id)
        _log(f"collected batch {state.id}: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))

    def _result(self, row: Mapping[str, Any], outcome: Outcome, entries: list[Entry]) -> dict[str, Any]:
        result = {"key": row["key"], "custom_id": row["custom_id"], "prompt_id": row.get("prompt_id"),
                  "outcome": outcome.status, "reason": outcome.reason}
        if outcome.status != "succeeded" or outcome.body is None:
            return result
        request, canonical = request_of(row, self._identity)
        try:
            completion = self._client.completion(outcome.body, request)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return {**result, "outcome": "errored", "reason": f"unreadable response body ({type(exc).__name__}: {exc})"}
        if not storable(completion):
            return {**result, "outcome": "errored", "reason": f"incomplete answer (finish reason "
                                                              f"{completion.finish_reason!r})"}
        entries.append(entry_of(self._identity, canonical, request, completion))
        return {**result, "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens}

    # -- the commands

    async def retry(self) -> int:
        """Queue again every request of this run whose batch row failed and that is still not in
        the cache, then submit them; returns how many were submitted."""
        for part in self.book.parts():
            if not self.mine(part) or part.state != COLLECTED:
                continue
            rows = {row["key"]: row for row in self.book.requests(part.part)}
            for result in self.book.results(part.part):
                key = result["key"]
                if result["outcome"] != "succeeded" and key not in self.answered and key in rows:
                    self.queued[key], _ = request_of(rows[key], self._identity)
        self.failed.clear()
        return sum(p.requests for p in await self.submit())


def request_of(row: Mapping[str, Any], identity: Mapping[str, Any]) -> tuple[Request, str]:
    """The Request a batch's requests file describes (canonical request + bookkeeping) and its
    canonical text, re-derived and checked to give the same key, so an answer can never be
    stored under another request's key."""
    try:
        f = json.loads(row["request"])["request"]
        request = Request(messages=tuple(f["messages"]), temperature=f["temperature"], top_p=f["top_p"],
                          max_tokens=f["max_tokens"], stop=tuple(f["stop"]), seed=f["seed"],
                          response_schema=f["response_schema"], schema_name=f["schema_name"],
                          tools=tuple(f["tools"]), sample=f["sample"], template_ids=tuple(row.get("template_ids", ())),
                          prompt_id=row.get("prompt_id"))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"batch request {row.get('key')!r}: unreadable stored request ({exc})") from None
    canonical = canonical_request(identity, request)
    if key_of(canonical) != row["key"]:
        raise CacheError(f"batch request {row['key']!r}: its stored request re-derives another key under the "
                         f"teacher {identity.get('backend')}:{identity.get('model')}; was it sent by another teacher?")
    return request, canonical

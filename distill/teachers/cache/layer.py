"""The caching layer: a Teacher that answers from the cache and asks the teacher behind it only on a miss.

Why: a batch that ran once must be re-runnable, resumable and rebuildable on another machine
with zero teacher calls and zero cost. So the cache is a wrapper around the Teacher seam
(`CachedTeacher`), stacked over a backend in exactly one place (`distill.teachers.stack`); no
pipeline stage knows it exists.

Offline (`DISTILL_OFFLINE=1` or `offline=True`), a miss raises `OfflineMiss` and no network client
is ever built: the backend factory is only called on the first online miss.

In batch mode (`distill.teachers.batch`) the teacher behind the cache is a queue that defers each
miss to a provider batch; the batch's answers come back into the same store through `entry_of`,
exactly as a live answer would be stored.

    CacheError                      (distill.errors)
    └── OfflineMiss                 a request is not cached and the run is offline
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from distill.errors import CacheError, ConfigError
from distill.teachers.base import Completion, Deferred, Request, Teacher, Usage
from distill.teachers.cache.entry import Entry, entry_of, storable
from distill.teachers.cache.key import backend_name, canonical_request, key_of
from distill.teachers.cache.store import CacheStore, RunStats
from distill.teachers.settings import FLAG_VALUES, parse_flag

log = logging.getLogger(__name__)

OFFLINE_ENV = "DISTILL_OFFLINE"
SHOWN_MISSES = 5  # prompt ids listed in an offline-miss message


class MissTally:
    """The offline misses of one run, shared by every `OfflineMiss` it raises, so a batch that
    records each failed row can still report all its misses in one message at the end."""

    def __init__(self, path: Path, shown: int = SHOWN_MISSES):
        self.path = path
        self.shown = shown
        self.count = 0
        self.prompt_ids: list[str] = []  # distinct, in order of first miss
        self._seen: set[str] = set()

    def record(self, request: Request, key: str) -> "OfflineMiss":
        self.count += 1
        label = request.prompt_id if request.prompt_id is not None else key[:19]
        if label not in self._seen:
            self._seen.add(label)
            self.prompt_ids.append(label)
        return OfflineMiss(self._message(f"the request for prompt {label!r} (key {key[:19]}...) is not in the cache",
                                         f"; {self.count} miss(es) so far in this run"),
                           prompt_id=request.prompt_id, key=key, tally=self)

    def summary(self, total: int | None = None) -> str:
        """One message for every miss so far (of `total` requests, when given)."""
        of = f" of {total}" if total is not None else ""
        return self._message(f"{self.count}{of} teacher request(s) are not in the cache")

    def _message(self, head: str, tail: str = "") -> str:
        ids = self.prompt_ids[: self.shown]
        more = len(self.prompt_ids) - len(ids)
        listed = ", ".join(ids) + (f" and {more} more" if more else "")
        return (f"offline mode: {head} at {self.path}{tail} (prompts: {listed}). Run once without --offline / "
                f"{OFFLINE_ENV}=1 to fill the cache, or bring one from another machine with "
                "`distill cache import EXPORT.jsonl`")


class OfflineMiss(CacheError):
    """A request is not in the cache and the run is offline. `tally` holds every miss of the run."""

    def __init__(self, message: str, *, prompt_id: str | None, key: str, tally: MissTally):
        super().__init__(message)
        self.prompt_id = prompt_id
        self.key = key
        self.tally = tally

    def summary(self, total: int | None = None) -> str:
        return self.tally.summary(total)


@dataclass
class _Flight:
    """One request on its way to the teacher, shared by every identical request meanwhile."""

    task: asyncio.Task[Completion]
    waiters: int = 0
    billed: bool = False  # the first waiter to get the answer pays for it; the others get a hit


class CachedTeacher:
    """A Teacher that answers from the cache and asks `factory()`'s teacher only on a miss.

    The inner teacher is built on the first online miss, so an offline or fully cached run never
    builds a network client. Identical requests in flight at once are sent once; the others wait
    for that answer and get it flagged cached with zero usage, like any hit. Only complete,
    successful answers are stored.
    """

    def __init__(self, store: CacheStore, identity: Mapping[str, Any], factory: Callable[[], Teacher] | None, *,
                 offline: bool = False, owns_store: bool = True,
                 on_hit: Callable[[Entry, Completion], Completion] | None = None):
        if factory is None and not offline:
            raise ConfigError("CachedTeacher: an online cache needs a backend factory (or offline=True)")
        self.store = store
        self._identity = dict(identity)
        self.backend = backend_name(identity)
        self.model = str(identity.get("model") or "")
        self.offline = offline
        self._factory = factory
        self._owns_store = owns_store
        self._on_hit = on_hit  # batch mode: bills the run's own batch answers (see distill.teachers.batch)
        self._inner: Teacher | None = None
        self._inner_lock = asyncio.Lock()
        self._flights: dict[str, _Flight] = {}
        self.stats = RunStats(offline=offline)
        self.misses = MissTally(store.path)

    def identity(self) -> Mapping[str, Any]:
        return dict(self._identity)

    @property
    def inner(self) -> Teacher | None:
        """The wrapped backend, or None while it has not been needed."""
        return self._inner

    async def complete(self, request: Request) -> Completion:
        started = time.perf_counter()
        canonical = canonical_request(self._identity, request)
        key = key_of(canonical)
        self.stats.requests += 1
        entry = self.store.get(key)
        if entry is not None:
            self.stats.hits += 1
            completion = entry.to_completion(time.perf_counter() - started)
            return self._on_hit(entry, completion) if self._on_hit is not None else completion
        flight = self._flights.get(key)
        if flight is not None:
            self.stats.coalesced += 1
            return await self._wait(flight, started)
        if self.offline:
            self.stats.offline_misses += 1
            raise self.misses.record(request, key)
        flight = _Flight(asyncio.ensure_future(self._fetch(canonical, request)))
        self._flights[key] = flight
        flight.task.add_done_callback(lambda _: self._land(key, flight))
        return await self._wait(flight, started)

    def _land(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _wait(self, flight: _Flight, started: float) -> Completion:
        """Await a shared call; the call is cancelled only when its last waiter is. The first
        waiter to receive the answer is billed for it (normally the one that sent it, but not if
        it was cancelled meanwhile); every other waiter gets it as a zero-usage hit."""
        flight.waiters += 1
        try:
            completion = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if flight.waiters == 1 and not flight.task.done():
                flight.task.cancel()
            raise
        finally:
            flight.waiters -= 1
        if not flight.billed:
            flight.billed = True
            return completion
        return replace(completion, usage=Usage(), cost=0.0, cached=True, retries=0,
                       latency_s=time.perf_counter() - started)

    async def _fetch(self, canonical: str, request: Request) -> Completion:
        inner = await self._inner_teacher()
        self.stats.misses += 1
        try:
            completion = await inner.complete(request)
        except Deferred:
            self.stats.deferred += 1
            raise
        except BaseException:
            self.stats.failed += 1
            raise
        if storable(completion):
            entry = entry_of(self._identity, canonical, request, completion)
            if await asyncio.to_thread(self.store.put, entry):
                self.stats.stored += 1
        return completion

    async def _inner_teacher(self) -> Teacher:
        if self._inner is None:
            async with self._inner_lock:
                if self._inner is None:
                    assert self._factory is not None
                    self._inner = self._factory()
        return self._inner

    async def aclose(self) -> None:
        """Close the inner teacher (if one was built), record this run's statistics, close the store."""
        try:
            if self._inner is not None:
                await self._inner.aclose()
        finally:
            if self.stats.requests:
                try:
                    await asyncio.to_thread(self.store.record_run, self.stats, self.backend, self.model)
                except CacheError as exc:
                    log.warning("could not record the cache statistics of this run: %s", exc)
            if self._owns_store:
                self.store.close()

    async def __aenter__(self) -> "CachedTeacher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def offline_from_env() -> bool:
    """`$DISTILL_OFFLINE` as a bool: 1/true/yes/on or 0/false/no/off (unset: online)."""
    try:
        return parse_flag(os.environ.get(OFFLINE_ENV, ""))
    except ValueError:
        raise ConfigError(f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}: expected {FLAG_VALUES}") from None

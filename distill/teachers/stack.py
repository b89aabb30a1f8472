"""The teacher stack: THE place a teacher is built, httpx-transport style, and the handle that owns it.

`open_teacher(settings)` loads the configured backend once and stacks, bottom up:

    backend           its wire format only (`registry`: a `Wire` for a hosted API, else a `Teacher`)
    retry + pacing    `pacing.PacedTeacher`, over a `Wire` (the local model and plugins that speak
                      no hosted wire are used as they are)
    or batch queue    in batch mode (and online) `batch.queue.BatchQueue` stands where the live
                      backend would: each miss is deferred to a provider batch; the backend's own
                      batch client (its `BackendSpec.batch`) sends them
    cache             `cache.layer.CachedTeacher`: answers what it has; offline, a miss is an error
                      and no backend is ever built; online, the live backend is built on the first miss
    pricing           `pricing.PricedTeacher`: sets `Completion.cost`, the one price

and returns a `TeacherHandle`, which owns the lot: `complete(request)`, `settle_batches()` (after a
pass that left rows deferred: submit, wait, collect; nothing to do when live), `misses` (the
offline misses so far) and `aclose()` / `async with`. A teacher the caller built itself (a
`distill.testing.ScriptedTeacher`, say) becomes a handle with `borrow`, which never closes it: the
caller does. `live_teacher(settings)` is the same stack without the cache and the queue (one call
straight to the backend, priced), and `queue_for` a batch queue on its own for `distill batch ...`.
Nothing else in distill stacks these layers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

from distill.errors import DistillError
from distill.teachers import registry
from distill.teachers.base import Completion, Deferred, Request, Teacher, Wire
from distill.teachers.batch.queue import BatchMode, BatchQueue
from distill.teachers.cache.layer import CachedTeacher, MissTally, offline_from_env
from distill.teachers.cache.store import CacheStore, cache_path
from distill.teachers.pacing import PacedTeacher
from distill.teachers.pricing import PricedTeacher, Pricing
from distill.teachers.settings import TeacherSettings

T = TypeVar("T")


class TeacherHandle:
    """The teacher of a run and its lifecycle. A Teacher itself (`complete`, `identity`,
    `backend`, `model`), so anything that takes a Teacher takes it."""

    def __init__(self, top: Teacher, *, owned: bool, cache: CachedTeacher | None = None,
                 queue: BatchQueue | None = None, pricing: Pricing | None = None,
                 settings: TeacherSettings | None = None):
        self._top = top
        self._owned = owned
        self.cache = cache
        self.pricing = pricing
        self.settings = settings
        self.backend, self.model = top.backend, top.model
        self._queue = queue
        self._deferred = 0  # requests deferred to a provider batch since the last settle_batches()

    @classmethod
    def borrow(cls, teacher: Teacher) -> "TeacherHandle":
        """A handle over a teacher the caller built and will close itself (a handle too: then this
        one shares its cache, queue and prices, and closing it closes nothing)."""
        if isinstance(teacher, TeacherHandle):
            return cls(teacher, owned=False, cache=teacher.cache, queue=teacher._queue, pricing=teacher.pricing,
                       settings=teacher.settings)
        return cls(teacher, owned=False)

    def identity(self) -> Mapping[str, Any]:
        return self._top.identity()

    def layer(self, kind: type[T]) -> T | None:
        """The layer of type `kind` in this stack (top down: pricing, cache, retry and pacing,
        backend), or None; for inspection (tests, benchmarks), never needed to use the teacher.
        The backend behind the cache is found once it has been built (on the first miss)."""
        layer: Any = self._top
        while layer is not None:
            if isinstance(layer, kind):
                return layer
            layer = getattr(layer, "inner", None) or getattr(layer, "wire", None)
        return None

    async def complete(self, request: Request) -> Completion:
        try:
            return await self._top.complete(request)
        except Deferred:
            self._deferred += 1
            raise

    async def settle_batches(self) -> None:
        """After a pass that left rows deferred to provider batches: submit them, wait for the
        batches and collect their answers into the cache, so the next pass finds them. Nothing to
        do when no request was deferred (a live teacher). Raises BatchesPending under --no-wait."""
        deferred, self._deferred = self._deferred, 0
        if self._queue is not None:
            await self._queue.flush()
        elif deferred:
            raise DistillError(f"{deferred} request(s) were deferred to a provider batch, but the teacher "
                               f"{self.backend}:{self.model} has no batch queue")

    @property
    def misses(self) -> MissTally | None:
        """The requests an offline run did not find in the cache (None: no cache in this stack)."""
        return self.cache.misses if self.cache is not None else None

    async def aclose(self) -> None:
        """Close the stack this handle built (backend, cache statistics, store); a borrowed
        teacher is left to its owner."""
        if self._owned:
            await self._top.aclose()

    async def __aenter__(self) -> "TeacherHandle":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def open_teacher(settings: TeacherSettings, *, offline: bool | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, batch: BatchMode | None = None,
                 check_key: bool = False) -> TeacherHandle:
    """THE builder: the stack of the module docstring for `settings`, as a handle.

    `offline=None` reads `$DISTILL_OFFLINE`. Offline, the backend is never built (no client, no
    connection); online it is built on the first miss. With `batch` (and online) no live backend
    is built at all: a miss is queued for a provider batch and deferred, and hits on the run's own
    batch answers are billed at the batch price. `check_key` refuses now (ConfigError) when the
    backend needs a key and none is set, rather than on the first miss.
    """
    offline = offline_from_env() if offline is None else offline
    spec = registry.load_backend(settings.backend)  # the one time this stack resolves the backend
    if check_key and not offline:
        registry.require_key(settings, spec)
    identity = registry.backend_identity(settings, spec)
    pricing = Pricing.of(settings)
    store = CacheStore(cache_path(cache_dir))
    queue = None
    try:
        if batch is not None and not offline:
            queue = batch.queue(settings, store, identity, registry.batch_client(settings, spec))
            cache = CachedTeacher(store, identity, lambda: queue, on_hit=queue.bill)
        else:
            factory = None if offline else (lambda: _backend(spec, settings))
            cache = CachedTeacher(store, identity, factory, offline=offline)
    except BaseException:
        store.close()
        raise
    return TeacherHandle(PricedTeacher(cache, pricing), owned=True, cache=cache, queue=queue, pricing=pricing,
                         settings=settings)


def live_teacher(settings: TeacherSettings) -> TeacherHandle:
    """The stack without cache or batch queue: every request goes to the backend (built now,
    after the key check), retried, paced and priced. For benchmarks, the backends' tests, and the
    student served by an OpenAI-compatible server (`distill.teachers.served_student`), whose answers
    are kept in its answers file, never in the teacher-call cache."""
    spec = registry.load_backend(settings.backend)
    pricing = Pricing.of(settings)
    return TeacherHandle(PricedTeacher(_backend(spec, settings), pricing), owned=True, pricing=pricing,
                         settings=settings)


def _backend(spec: registry.Backend, settings: TeacherSettings) -> Teacher:
    """The backend `spec` builds for `settings`, with the retry-and-pacing layer over a hosted wire."""
    registry.require_key(settings, spec)
    backend = spec.create(settings)
    return PacedTeacher(backend, settings) if isinstance(backend, Wire) else backend


def queue_for(settings: TeacherSettings, run_dir: Path, *, wait: bool = True,
              cache_dir: str | os.PathLike[str] | None = None) -> tuple[BatchQueue, CacheStore]:
    """A queue on its own (for `distill batch ...`): the run's book, the cache, the batch client."""
    spec = registry.load_backend(settings.backend)
    store = CacheStore(cache_path(cache_dir))
    try:
        return BatchQueue(settings, store, registry.backend_identity(settings, spec), run_dir,
                          registry.batch_client(settings, spec), wait=wait), store
    except BaseException:
        store.close()
        raise

"""The teacher stack: THE place a backend, the cache and batch mode are put together.

Every stage gets its teacher from `open_teacher`: the backend named by the settings (built by
`registry.create_backend` on the first online miss, never offline), behind the caching layer
(`distill.teachers.cache.layer.CachedTeacher`); in batch mode a `BatchQueue` stands where the
backend would, deferring each miss to a provider batch. `settle` flushes that queue after a pass,
and `queue_for` builds a queue on its own for `distill batch ...`. Nothing else in distill stacks
these layers, so nothing else needs to know how they fit.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.errors import DistillError
from distill.teachers import registry
from distill.teachers.base import Teacher
from distill.teachers.batch.queue import BatchMode, BatchQueue
from distill.teachers.cache.layer import CachedTeacher, offline_from_env
from distill.teachers.cache.store import CacheStore, cache_path
from distill.teachers.settings import TeacherSettings


def open_teacher(settings: TeacherSettings, *, offline: bool | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, batch: BatchMode | None = None) -> Teacher:
    """THE place the cache is wrapped around a backend: every stage gets its teacher here.

    `offline=None` reads `$DISTILL_OFFLINE`. Offline, the backend is never built (no client, no
    connection); online it is built on the first miss by `registry.create_backend(settings)`.
    With `batch` (and online), no live backend is built at all: a miss is queued for a provider
    batch and deferred, and hits on the run's own batch answers are billed at the batch price.
    """
    offline = offline_from_env() if offline is None else offline
    identity = registry.backend_identity(settings)
    store = CacheStore(cache_path(cache_dir))
    if batch is not None and not offline:
        queue = batch.queue(settings, store, identity)
        return CachedTeacher(store, identity, lambda: queue, on_hit=queue.bill)
    factory = None if offline else (lambda: registry.create_backend(settings))
    return CachedTeacher(store, identity, factory, offline=offline)


async def settle(teacher: Teacher | None) -> None:
    """After a pass that left rows deferred: flush the batch queue behind the cache (submit,
    wait, collect), so the next pass finds their answers. Raises BatchesPending under --no-wait."""
    queue = teacher.inner if isinstance(teacher, CachedTeacher) else None
    if not isinstance(queue, BatchQueue):
        raise DistillError("rows were deferred to a provider batch, but the teacher has no batch queue")
    await queue.flush()


def queue_for(settings: TeacherSettings, run_dir: Path, *, wait: bool = True,
              cache_dir: str | os.PathLike[str] | None = None) -> tuple[BatchQueue, CacheStore]:
    """A queue on its own (for `distill batch ...`): the run's book, the cache, the batch client."""
    store = CacheStore(cache_path(cache_dir))
    try:
        return BatchQueue(settings, store, registry.backend_identity(settings), run_dir, wait=wait), store
    except BaseException:
        store.close()
        raise

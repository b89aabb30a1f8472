"""Requests that arrive together are generated together: one asyncio queue and its one worker.

The local teacher (`distill.teachers.local`) takes requests from many coroutines and generates
them in batches on one model. (`distill serve` keeps a batch decoding and lets requests join it,
`distill.serving.batching`; it shares `WINDOWS`, the wait for requests sent together.) A `Collector` holds a job queue on the running event loop and one worker task, which
waits for a first job, lets the jobs that arrive within `wait_s` join it (up to `max_batch`),
leaves out jobs whose caller has gone (a future already done, e.g. cancelled), and awaits
`dispatch(batch)`.

While a window brings new jobs, the batch waits one more window (up to `WINDOWS` windows in
all): clients that send together do not arrive together (each request is parsed, rendered and
tokenized in turn), and with batches generated whole, a request that misses a batch waits for all
of it, seconds on a CPU, against a few milliseconds per extra window.

The queue is made on first use and again after its worker has ended, since a queue belongs to the
event loop it was made on and callers such as `asyncio.run` make a new loop per call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, Protocol, Sequence, TypeVar


WINDOWS = 10  # most collection windows one batch waits for (a steady trickle of jobs cannot hold it back)


class HasFuture(Protocol):
    future: asyncio.Future | None


J = TypeVar("J", bound=HasFuture)


class Collector(Generic[J]):
    """`put(job)` from a coroutine; the worker calls `await dispatch(jobs)` with each batch."""

    def __init__(self, dispatch: Callable[[list[J]], Awaitable[None]], *, max_batch: int, wait_s: float = 0.0):
        self.dispatch = dispatch
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: asyncio.Queue[J] | None = None
        self._worker: asyncio.Task | None = None
        self._in_flight: list[J] = []

    def put(self, job: J) -> None:
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()  # a fresh one: the old worker's loop may be gone
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        self._queue.put_nowait(job)

    def pending(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    async def aclose(self, error: BaseException) -> None:
        """Stop the worker; every job not yet answered (still queued, or in the batch being
        generated) gets `error`, so no caller waits forever."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        left = list(self._in_flight)
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        self._in_flight = []
        settle(left, [error] * len(left))

    async def _work(self, queue: asyncio.Queue[J]) -> None:
        while True:
            jobs = [await queue.get()]
            await asyncio.sleep(self.wait_s)  # the collection window (0: callers already running enqueue too)
            await self._collect(queue, jobs)
            live = [j for j in jobs if j.future is not None and not j.future.done()]
            if live:
                self._in_flight = live
                await self.dispatch(live)
                self._in_flight = []

    async def _collect(self, queue: asyncio.Queue[J], jobs: list[J]) -> None:
        """After the first window: add the jobs that arrived in it to `jobs`; while a window brought
        some, wait another `wait_s` (at most `WINDOWS` windows, up to `max_batch` jobs)."""
        for window in range(1, WINDOWS + 1):
            arrived = 0
            while len(jobs) < self.max_batch and not queue.empty():
                jobs.append(queue.get_nowait())
                arrived += 1
            if not arrived or len(jobs) >= self.max_batch or self.wait_s <= 0 or window == WINDOWS:
                return
            await asyncio.sleep(self.wait_s)


def settle(jobs: Sequence[HasFuture], results: Sequence[Any]) -> None:
    """Give each job's future its result, or raise it there when it is an exception; a future
    already done (its caller gone) is left alone."""
    for job, result in zip(jobs, results):
        if job.future is None or job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

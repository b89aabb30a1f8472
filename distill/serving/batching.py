"""Continuous batching for the served student: a request joins the batch that is already decoding.

Every request becomes a `Job` on one queue. One engine thread decodes them with the continuous
batching loop (`distill.student.decode.stream`): the rows of the requests that arrived together
are prefilled together, and a request that arrives while others decode is prefilled at the next
step and decodes beside them, in a row that ended or in a new row, up to `max_batch` rows. A short
answer's request returns as soon as it ends, not when the longest answer of its batch does.

A batch decodes one served model (the base student or one adapter: one `Student` view each, over
one shared copy of the base weights). Requests are taken oldest first: while the oldest waiting
request is for another model, the running batch takes no new rows, ends, and the engine turns to
that model; so no model waits behind a steady stream for another.

Each row keeps its own decoding, stopping, schema and streaming (`distill.student.generation`'s
`JobRules`, which the local teacher shares). A request's `Job` carries its `future`, so a row whose
caller has gone (a cancelled request, a dropped stream) stops at its next token. Deltas and results
are handed to the event loop with `call_soon_threadsafe`, so the loop keeps accepting requests
while the engine decodes.

`batches` records (model, rows) for each group of requests prefilled together (the last
`BATCH_HISTORY`), and `joined` counts the requests that joined a batch already decoding.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, Hashable, Mapping, Sequence

from distill.errors import DistillError, ModelError
from distill.student.collector import WINDOWS, settle
from distill.student.generation import Job, JobRules, Result
from distill.student.grammar import Grammars

BATCH_HISTORY = 1000  # prefilled groups kept in `Batcher.batches`
log = logging.getLogger(__name__)


class Batcher:
    """The queue and its engine thread: `await batcher.submit(job)` returns the job's `Result`."""

    def __init__(self, students: Mapping[str, Any], *, max_batch: int = 32, wait_s: float = 0.005):
        if max_batch < 1:
            raise ModelError(f"max_batch must be at least 1, got {max_batch}")
        self.students = dict(students)
        self.grammars = {name: Grammars(student) for name, student in self.students.items()}
        self.max_batch, self.wait_s = max_batch, wait_s
        self.batches: list[tuple[str, int]] = []
        self.joined = 0
        self._queue: deque[Job] = deque()
        self._in_flight: dict[int, Job] = {}
        self._ready = threading.Condition()
        self._lock = threading.Lock()  # held while a batch decodes: the CPU (or GPU) is shared
        self._closed = False
        self._thread: threading.Thread | None = None

    async def submit(self, job: Job) -> Result:
        job.future = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._closed:
                raise ModelError("the server is shutting down; send the request again")
            self._queue.append(job)
            if self._thread is None or not self._thread.is_alive():  # first use, or the engine died
                self._thread = threading.Thread(target=self._run, name="distill-batcher", daemon=True)
                self._thread.start()
            self._ready.notify()
        return await job.future

    def pending(self) -> int:
        """Requests queued and not yet taken into a batch."""
        with self._ready:
            return len(self._queue)

    def running(self) -> int:
        """Requests taken into a batch and not yet answered."""
        with self._ready:
            return len(self._in_flight)

    @property
    def alive(self) -> bool:
        """Whether the engine thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 60.0) -> None:
        """Stop the engine; every request not yet answered gets an error, so no caller waits forever.
        Waits for the engine thread to end, so the process never exits while it is inside the model
        (a thread left in native code while the interpreter shuts down can abort the process)."""
        with self._ready:
            self._closed = True
            left = list(self._queue) + list(self._in_flight.values())
            self._queue.clear()
            self._ready.notify_all()
        error = ModelError("the server is shutting down; send the request again")
        for job in left:
            _deliver(job, error)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
            self._collect()
            with self._lock:
                model = self._oldest_model()
                if model is not None:
                    self._decode(model)

    def _collect(self) -> None:
        """Let requests sent together arrive together: wait `wait_s` while each window brings more
        (at most `WINDOWS` windows, up to `max_batch`)."""
        seen = self.pending()
        for _ in range(WINDOWS):
            if self.wait_s <= 0 or seen >= self.max_batch:
                return
            time.sleep(self.wait_s)
            now = self.pending()
            if now == seen:
                return
            seen = now

    def _oldest_model(self) -> str | None:
        with self._ready:
            return self._queue[0].model if self._queue else None

    def _decode(self, model: str) -> None:
        """Decode `model`'s requests until none is running and the oldest waiting one is another model's."""
        import torch

        from distill.student.decode import stream

        student = self.grammars[model].student
        rules = JobRules(self.grammars[model], _emit)
        feed = _Feed(self, model, rules)
        try:
            with torch.inference_mode():
                for owner, _ in stream(student.model, feed, slots=self.max_batch,
                                       max_new_tokens=student.context_window, eos_ids=student.eos_ids,
                                       pad_id=student.tokenizer.pad_token_id, rules=rules):
                    with self._ready:
                        job = self._in_flight.pop(owner)
                    _deliver(job, rules.result(owner))
        except Exception as exc:  # torch/transformers failures: fail this batch's requests, keep serving
            log.exception("generation failed for a batch of %d on %s", len(self._in_flight), model)
            error = exc if isinstance(exc, DistillError) else ModelError(
                f"generation failed ({type(exc).__name__}: {exc})")
            with self._ready:
                failed = list(self._in_flight.values())
            for job in failed:
                _deliver(job, error)
        finally:
            with self._ready:
                self._in_flight.clear()


class _Feed:
    """The queue as the decoding loop's `Feed` for one model: the requests at its head that are
    that model's (a request whose caller has gone is dropped)."""

    def __init__(self, batcher: Batcher, model: str, rules: JobRules):
        self.batcher, self.model, self.rules = batcher, model, rules
        self.owner = 0

    def waiting(self) -> int:
        with self.batcher._ready:
            queue = self.batcher._queue
            n = 0
            while n < len(queue) and queue[n].model == self.model:
                n += 1
            return n

    def take(self, n: int) -> list[tuple[Hashable, Sequence[int]]]:
        jobs: list[tuple[int, Job]] = []
        with self.batcher._ready:
            queue, running = self.batcher._queue, len(self.batcher._in_flight)
            while queue and queue[0].model == self.model and len(jobs) < n:
                job = queue.popleft()
                if job.future is not None and not job.future.done():
                    self.owner += 1
                    jobs.append((self.owner, job))
                    self.batcher._in_flight[self.owner] = job
        taken: list[tuple[Hashable, Sequence[int]]] = [(owner, self.rules.add(owner, job)) for owner, job in jobs]
        if taken:
            self.batcher.batches.append((self.model, len(taken)))
            del self.batcher.batches[:-BATCH_HISTORY]
            self.batcher.joined += len(taken) if running else 0
        return taken


def _emit(job: Job, text: str) -> None:
    """Hand a streamed piece of text to the job's event loop."""
    if job.future is not None and job.on_delta is not None:
        job.future.get_loop().call_soon_threadsafe(job.on_delta, text)


def _deliver(job: Job, outcome: Result | BaseException) -> None:
    """Settle the job's future on its event loop (`collector.settle`: unless its caller has gone)."""
    if job.future is None:
        return
    try:
        job.future.get_loop().call_soon_threadsafe(settle, [job], [outcome])
    except RuntimeError:  # its event loop has closed: nobody waits for it
        pass

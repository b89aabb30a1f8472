"""Dynamic batching for the served student: requests that arrive together are generated together.

Every request becomes a `Job` on one asyncio queue. A single worker task takes the first job,
waits a short collection window (`wait_s`, a few milliseconds) for others, drains up to
`max_batch` jobs, groups them by served model (the base student or one adapter: one `Student`
view each, over one shared copy of the base weights) and runs each group as one `model.generate`
call in a worker thread, so the event loop keeps accepting requests meanwhile. Throughput therefore
grows with the number of concurrent clients, up to `max_batch`.

Each row keeps its own decoding, stopping, schema and streaming within the batch; how is
`distill.student.generation`'s part, which the local teacher shares. A request's `Job` carries its
`future`, so a row whose caller has gone (a cancelled request, a dropped stream) stops at its next
token.

`batches` records the (model, size) of the last `BATCH_HISTORY` batches, for tests and debugging.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Mapping, Sequence

from distill.errors import DistillError, ModelError
from distill.student.collector import Collector, settle
from distill.student.generation import Job, Result, generate
from distill.student.grammar import Grammars

BATCH_HISTORY = 1000  # batches kept in `Batcher.batches`
log = logging.getLogger(__name__)


class Batcher:
    """The queue and its worker: `await batcher.submit(job)` returns the job's `Result`."""

    def __init__(self, students: Mapping[str, Any], *, max_batch: int = 32, wait_s: float = 0.005):
        if max_batch < 1:
            raise ModelError(f"max_batch must be at least 1, got {max_batch}")
        self.students = dict(students)
        self.grammars = {name: Grammars(student) for name, student in self.students.items()}
        self.batches: list[tuple[str, int]] = []
        self.collector: Collector[Job] = Collector(self._dispatch, max_batch=max_batch, wait_s=wait_s)
        self._lock = threading.Lock()  # one generation at a time: the CPU (or GPU) is shared

    async def submit(self, job: Job) -> Result:
        job.future = asyncio.get_running_loop().create_future()
        self.collector.put(job)
        return await job.future

    async def aclose(self) -> None:
        await self.collector.aclose(ModelError("the server is shutting down; send the request again"))

    async def _dispatch(self, jobs: list[Job]) -> None:
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.model, []).append(job)
        for model, group in groups.items():
            await self._run(model, group)

    async def _run(self, model: str, group: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        self.batches.append((model, len(group)))
        del self.batches[:-BATCH_HISTORY]
        try:
            results: Sequence[Result | BaseException] = await loop.run_in_executor(
                None, self._generate, model, group, loop)
        except Exception as exc:  # torch/transformers failures: fail this batch's requests, keep serving
            log.exception("generation failed for a batch of %d on %s", len(group), model)
            error = exc if isinstance(exc, DistillError) else ModelError(
                f"generation failed ({type(exc).__name__}: {exc})")
            results = [error] * len(group)
        settle(group, results)

    def _generate(self, model: str, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> list[Result]:
        with self._lock:
            return generate(self.grammars[model], jobs, lambda job, text: loop.call_soon_threadsafe(job.on_delta, text))

"""The batching queue the local teacher and `distill serve` share (distill.student.collector): jobs
arriving together form one batch, a gone caller's job is left out, and closing answers every
waiting caller with an error rather than leaving it waiting forever."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from distill.student.collector import Collector, settle


@dataclass
class Job:
    n: int
    future: asyncio.Future | None = field(default=None, repr=False)


def test_jobs_that_arrive_together_are_one_batch_up_to_max_batch() -> None:
    batches: list[list[int]] = []

    async def dispatch(jobs: list[Job]) -> None:
        batches.append([j.n for j in jobs])
        settle(jobs, [j.n * 10 for j in jobs])

    async def main() -> list[int]:
        collector: Collector[Job] = Collector(dispatch, max_batch=3)
        loop = asyncio.get_running_loop()
        jobs = [Job(i, loop.create_future()) for i in range(5)]
        for job in jobs:
            collector.put(job)
        return list(await asyncio.gather(*(j.future for j in jobs)))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert batches == [[0, 1, 2], [3, 4]]


def test_a_job_whose_caller_has_gone_is_left_out_of_its_batch() -> None:
    seen: list[list[int]] = []

    async def dispatch(jobs: list[Job]) -> None:
        seen.append([j.n for j in jobs])
        settle(jobs, [None] * len(jobs))

    async def main() -> None:
        collector: Collector[Job] = Collector(dispatch, max_batch=8)
        loop = asyncio.get_running_loop()
        gone, kept = Job(1, loop.create_future()), Job(2, loop.create_future())
        collector.put(gone)
        collector.put(kept)
        gone.future.cancel()
        await kept.future

    asyncio.run(main())
    assert seen == [[2]]


def test_closing_answers_the_batch_being_generated_and_the_queued_jobs_with_the_error() -> None:
    async def main() -> list[BaseException | None]:
        running = asyncio.Event()

        async def dispatch(jobs: list[Job]) -> None:
            running.set()
            await asyncio.sleep(3600)  # a generation that is still going when the server shuts down

        collector: Collector[Job] = Collector(dispatch, max_batch=1)
        loop = asyncio.get_running_loop()
        jobs = [Job(i, loop.create_future()) for i in range(3)]
        for job in jobs:
            collector.put(job)
        await running.wait()
        assert collector.pending() == 2
        await collector.aclose(RuntimeError("closed"))
        return [j.future.exception() for j in jobs]

    errors = asyncio.run(main())
    assert [str(e) for e in errors] == ["closed"] * 3


def test_settle_raises_exceptions_in_the_caller_and_skips_done_futures() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b, c = (Job(i, loop.create_future()) for i in range(3))
        c.future.cancel()
        settle([a, b, c], [1, ValueError("bad"), 3])
        assert await a.future == 1
        with pytest.raises(ValueError, match="bad"):
            await b.future

    asyncio.run(main())


def test_jobs_trickling_in_within_a_window_of_each_other_join_one_batch() -> None:
    """Six jobs, 0.1 s apart: 0.5 s from first to last, longer than the 0.3 s window, but each
    arrives within a window of the one before, so all six are one batch. Then a job after a quiet
    window starts a batch of its own."""
    batches: list[list[int]] = []

    async def dispatch(jobs: list[Job]) -> None:
        batches.append([j.n for j in jobs])
        settle(jobs, [None] * len(jobs))

    async def main() -> None:
        collector: Collector[Job] = Collector(dispatch, max_batch=32, wait_s=0.3)
        loop = asyncio.get_running_loop()
        jobs = [Job(i, loop.create_future()) for i in range(7)]
        for job in jobs[:6]:
            collector.put(job)
            await asyncio.sleep(0.1)
        await asyncio.gather(*(j.future for j in jobs[:6]))
        collector.put(jobs[6])
        await jobs[6].future

    asyncio.run(main())
    assert batches == [[0, 1, 2, 3, 4, 5], [6]]


def test_collection_stops_after_windows_windows_however_steady_the_trickle() -> None:
    from distill.student import collector as collector_module

    batches: list[list[int]] = []

    async def dispatch(jobs: list[Job]) -> None:
        batches.append([j.n for j in jobs])
        settle(jobs, [None] * len(jobs))

    async def main() -> None:
        collector: Collector[Job] = Collector(dispatch, max_batch=1000, wait_s=0.05)
        loop = asyncio.get_running_loop()
        jobs = [Job(i, loop.create_future()) for i in range(3 * collector_module.WINDOWS)]
        for job in jobs:
            collector.put(job)
            await asyncio.sleep(0.02)
        await asyncio.gather(*(j.future for j in jobs))

    asyncio.run(main())
    assert len(batches) > 1 and sum(len(b) for b in batches) == 3 * collector_module.WINDOWS

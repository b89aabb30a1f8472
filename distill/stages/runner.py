"""The stage runner: the one loop every stage that calls the teacher runs its rows through.

A stage supplies its per-row coroutine, `work(item, teacher) -> output`, and the runner does the
rest, the same way for every stage:

- concurrency: `concurrency` rows at a time (the teacher layer paces the calls themselves);
- billing: the `teacher` a row gets is a view (`RowTeacher`) that records the row's completions,
  and the runner bills them to the stage's `Ledger` when the row ends, however it ends (a reply
  that stayed unparseable, its repair included, is billed too);
- batch passes: a row whose request went into a provider batch raises `Deferred` from the teacher;
  the runner catches it (stage code never sees it), bills nothing for that row, and once the pass
  is over calls the handle's `settle_batches()` (submit, wait, collect) and runs the row again,
  now served by the cache;
- offline misses: after the stage, one error counting every miss (`raise_offline_misses`);
- output files and resume (`StageFiles`): each finished row's output is appended to the stage's
  files as it finishes (`output.rows()`: file name -> rows), a re-run reuses the rows already
  there, and the files are committed in input order once every row is in;
- progress: a bar per stage, with the ledger's running totals.

The outputs come back in input order. `after(output)` sees each finished row (the critique stage
stops on a systematic failure there).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, Mapping, Protocol, Sequence, TypeVar

from distill.errors import CacheError
from distill.records.jsonl import JsonlSink
from distill.stages.accounting import Ledger
from distill.teachers.base import Completion, Deferred, Request, Teacher
from distill.teachers.stack import TeacherHandle

I = TypeVar("I")
O = TypeVar("O")


class Writes(Protocol):
    """An output a stage writes: its rows per file name."""

    def rows(self) -> Mapping[str, Sequence[Mapping[str, Any]]]: ...


class RowTeacher:
    """The teacher as one row sees it: every completion the row receives is recorded in `spent`,
    for the runner to bill when the row ends."""

    def __init__(self, inner: Teacher, spent: list[Completion]):
        self.inner, self.spent = inner, spent
        self.backend, self.model = inner.backend, inner.model

    def identity(self) -> Mapping[str, Any]:
        return self.inner.identity()

    async def complete(self, request: Request) -> Completion:
        completion = await self.inner.complete(request)
        self.spent.append(completion)
        return completion

    async def aclose(self) -> None:  # the row does not own the teacher
        return None


@dataclass
class StageFiles(Generic[O]):
    """A stage's output files in `directory`: the first of `names` holds one row per input, under
    the input's key; the others hold rows that a first-file row lists (`links`: file name -> ids).
    `reuse` turns a stored first-file row into its output, or None when the row must run again."""

    directory: Path
    names: tuple[str, ...]
    reuse: Callable[[Mapping[str, Any]], O | None]
    links: Callable[[Mapping[str, Any]], Mapping[str, Sequence[str]]] = lambda row: {}
    sinks: dict[str, JsonlSink] = field(default_factory=dict, init=False)

    def open(self) -> None:
        self.sinks = {name: JsonlSink(self.directory / name, reuse_finished=True) for name in self.names}

    def stored(self, key: str) -> O | None:
        row = self.sinks[self.names[0]].done.get(key)
        return self.reuse(row) if row is not None else None

    def write(self, output: Writes) -> None:
        for name, rows in output.rows().items():
            self.sinks[name].write(rows)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()

    def commit(self, keys: Sequence[str]) -> None:
        main = self.sinks[self.names[0]]
        main.commit(list(keys))
        for name in self.names[1:]:
            sink = self.sinks[name]
            linked = [i for k in keys for i in self.links(main.done[k]).get(name, ())]
            sink.commit([i for i in linked if i in sink.done])


async def run_rows(stage: str, items: Sequence[I], work: Callable[[I, Teacher], Awaitable[O]], *,
                   teacher: TeacherHandle, ledger: Ledger, concurrency: int,
                   key: Callable[[I], str] | None = None, files: StageFiles[O] | None = None,
                   failure: Callable[[O], str | None] = lambda output: None,
                   after: Callable[[O], None] = lambda output: None, progress: bool = True) -> list[O]:
    """Run `work` on every item (module docstring); the outputs in input order.
    `key` names an item's row in `files` (needed with files); `failure` gives a failed output's
    reason for the ledger."""
    keys = [key(item) for item in items] if key is not None else [str(i) for i in range(len(items))]
    results: dict[int, O] = {}
    bar = _bar(stage, len(items), progress)
    if files is not None:
        files.open()
    try:
        if files is not None:
            for i, k in enumerate(keys):
                if (stored := files.stored(k)) is not None:
                    results[i] = stored
            bar.update(len(results))
        todo = [i for i in range(len(items)) if i not in results]
        while todo:  # more than one pass only in batch mode, while rows wait on provider batches
            todo = await _pass(todo, items, work, teacher, ledger, concurrency, results, files, failure, after, bar)
            if todo:
                await teacher.settle_batches()
    finally:
        if files is not None:
            files.close()
        bar.close()
        ledger.done()
    if files is not None:
        files.commit(keys)
    raise_offline_misses(teacher)
    return [results[i] for i in range(len(items))]


async def _pass(todo: list[int], items: Sequence[I], work: Callable[[I, Teacher], Awaitable[O]],
                teacher: TeacherHandle, ledger: Ledger, concurrency: int, results: dict[int, O],
                files: StageFiles[O] | None, failure: Callable[[O], str | None], after: Callable[[O], None],
                bar: Any) -> list[int]:
    """One pass over `todo`; returns the rows deferred to a provider batch, in order."""
    queue, deferred = deque(todo), []

    async def worker() -> None:
        while queue:
            i = queue.popleft()
            spent: list[Completion] = []
            try:
                output = await work(items[i], RowTeacher(teacher, spent))
            except Deferred:  # nothing is billed or written: it runs again once the batch has answered
                deferred.append(i)
                continue
            except BaseException:  # the calls it made are billed even when it stops the stage
                _bill(ledger, spent)
                raise
            _bill(ledger, spent)
            results[i] = output
            if files is not None:
                files.write(output)  # type: ignore[arg-type]
            ledger.rows += 1
            if (reason := failure(output)) is not None:
                ledger.fail(reason)
            bar.update(1)
            bar.set_postfix_str(ledger.line(), refresh=False)
            after(output)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(todo))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
    return sorted(deferred)


def _bill(ledger: Ledger, spent: list[Completion]) -> None:
    for completion in spent:
        ledger.add(completion)


def raise_offline_misses(teacher: TeacherHandle) -> None:
    """After a stage: one error counting every offline miss of the run, with the first prompt ids."""
    if teacher.misses is not None and teacher.misses.count:
        raise CacheError(teacher.misses.summary())


def _bar(stage: str, total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc=stage, dynamic_ncols=True, disable=not enabled)

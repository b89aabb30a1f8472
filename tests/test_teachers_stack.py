"""The teacher stack (`distill.teachers.stack`): one builder, a handle that owns its lifecycle, the
pricing layer's one price, and batch mode for any backend that declares a batch client.

The third-party backend here is a real installed plugin (a dist-info on sys.path registering an
entry point), not a patched registry.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any, Mapping

import pytest

from distill.errors import DistillError
from distill.stages.accounting import Ledger
from distill.teachers.base import Completion, Deferred, Request, Usage
from distill.teachers.batch.book import BatchBook
from distill.teachers.batch.queue import BatchMode
from distill.teachers.cache.layer import OfflineMiss
from distill.teachers.registry import GROUP
from distill.teachers.resolve import resolve_settings
from distill.teachers.stack import TeacherHandle, live_teacher, open_teacher
from distill.testing import ScriptedTeacher

PLUGIN = '''
import json

from distill.teachers.base import Completion, Usage
from distill.teachers.batch.wire import BatchState, Limits, Outcome
from distill.teachers.registry import BackendSpec

SUBMITTED = []  # requests per batch, for the test to read


class EchoTeacher:
    backend = "echo"

    def __init__(self, settings):
        self.model = settings.model

    def identity(self):
        return {"backend": "echo", "model": self.model}

    async def complete(self, request):
        # reports another model name than the one configured: the price must not follow it
        return Completion(text=request.messages[-1]["content"], finish_reason="stop", usage=Usage(1000, 2000),
                          model="echo-2031-01-01-internal")

    async def aclose(self):
        pass


class EchoBatches:
    """A provider batch API in memory: every batch ends at once, every row succeeds."""

    provider = "echo"
    limits = Limits(max_requests=100, max_bytes=1_000_000)

    def __init__(self, settings):
        self.batches = {}

    def custom_id(self, key):
        return key.split(":", 1)[-1]

    def line(self, custom_id, request):
        return (json.dumps({"custom_id": custom_id, "text": request.messages[-1]["content"]}) + "\\n").encode()

    async def submit(self, lines, label, known_ids=frozenset()):
        self.batches["echo-" + label] = [json.loads(line) for line in lines]
        SUBMITTED.append(len(lines))
        return BatchState("echo-" + label, "ended", True)

    async def find(self, lost):
        return None

    async def retrieve(self, batch_id):
        return BatchState(batch_id, "ended", True)

    async def results(self, state):
        return [Outcome(row["custom_id"], "succeeded", body={"text": row["text"]}) for row in self.batches[state.id]]

    def unanswered(self, state):
        return Outcome("", "errored", reason="no result")

    def completion(self, body, request):
        return Completion(text=body["text"], finish_reason="stop", usage=Usage(1000, 2000), model="echo", batch=True)

    async def aclose(self):
        pass


BACKEND = BackendSpec(name="echo", summary="repeats the prompt; has a batch API", make=EchoTeacher,
                      identify=lambda s: {"backend": "echo", "model": s.model}, batch=EchoBatches)
'''

PRICES = '''
[prices."echo:v1"]
input = 1.0
output = 2.0
batch_input = 0.5
batch_output = 1.0
'''
LIVE_PRICE = (1000 * 1.0 + 2000 * 2.0) / 1e6
BATCH_PRICE = LIVE_PRICE / 2


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The installed third-party package `echo-batch-teacher`, registering backend `echo`."""
    (tmp_path / "echo_batch_teacher.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "echo_batch_teacher-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-batch-teacher\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\necho = echo_batch_teacher:BACKEND\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("echo_batch_teacher")


def echo_settings(tmp_path: Path, **env: str) -> Any:
    (tmp_path / "prices.toml").write_text(PRICES)
    (tmp_path / "none.toml").write_text("")
    return resolve_settings(env={"DISTILL_TEACHER": "echo:v1", "DISTILL_PRICES": str(tmp_path / "prices.toml"),
                                 "DISTILL_CONFIG": str(tmp_path / "none.toml"), **env})


def ask(text: str) -> Request:
    return Request(messages=({"role": "user", "content": text},), prompt_id=text)


async def ask_all(teacher: Any, requests: list[Request]) -> list[Any]:
    return list(await asyncio.gather(*(teacher.complete(r) for r in requests), return_exceptions=True))


# ---------------------------------------------------------------- batch mode for plugins

def test_a_third_party_backend_that_declares_a_batch_client_gets_batch_mode(plugin: Any, tmp_path: Path) -> None:
    settings = echo_settings(tmp_path)
    requests = [ask(f"q{i}") for i in range(3)]

    async def go() -> tuple[list[Any], list[Any]]:
        async with open_teacher(settings, offline=False, cache_dir=tmp_path / "cache",
                                batch=BatchMode(tmp_path / "run")) as teacher:
            first = await ask_all(teacher, requests)
            await teacher.settle_batches()  # submit, wait, collect
            return first, await ask_all(teacher, requests)

    first, second = asyncio.run(go())
    assert all(isinstance(r, Deferred) for r in first)
    assert plugin.SUBMITTED == [3]  # one batch of the three requests, through the plugin's own client
    assert [c.text for c in second] == ["q0", "q1", "q2"] and all(c.batch and not c.cached for c in second)
    assert all(c.cost == pytest.approx(BATCH_PRICE) and c.alternative_cost == pytest.approx(LIVE_PRICE)
               for c in second)  # the run's own batch answers are billed at the batch price
    assert [p.provider for p in BatchBook(tmp_path / "run").parts()] == ["echo"]


# ---------------------------------------------------------------- the one price

def test_the_pricing_layer_prices_the_configured_model_whatever_the_provider_reports(plugin: Any,
                                                                                     tmp_path: Path) -> None:
    async def go() -> Completion:
        async with live_teacher(echo_settings(tmp_path)) as teacher:
            return await teacher.complete(ask("q"))

    done = asyncio.run(go())
    assert done.model == "echo-2031-01-01-internal"
    assert done.cost == pytest.approx(LIVE_PRICE) and done.alternative_cost == pytest.approx(BATCH_PRICE)


def test_a_cache_hit_costs_nothing_and_a_miss_its_live_price(plugin: Any, tmp_path: Path) -> None:
    async def go() -> list[Any]:
        async with open_teacher(echo_settings(tmp_path), offline=False, cache_dir=tmp_path / "cache") as teacher:
            miss = await teacher.complete(ask("q"))
            return [miss, await teacher.complete(ask("q"))]

    miss, hit = asyncio.run(go())
    assert (miss.cached, miss.cost) == (False, pytest.approx(LIVE_PRICE))
    assert (hit.cached, hit.cost) == (True, 0.0)


def test_the_ledger_bills_completion_cost_and_compares_the_other_mode() -> None:
    ledger = Ledger("critique")
    ledger.add(Completion("a", "stop", usage=Usage(10, 10), cost=0.4, alternative_cost=0.2))
    ledger.add(Completion("b", "stop", usage=Usage(10, 10), cost=0.1, alternative_cost=0.2, batch=True))
    ledger.add(Completion("c", "stop", usage=Usage(10, 10), cost=None, alternative_cost=None))
    ledger.add(Completion("d", "stop", cached=True, cost=0.0))
    usage = ledger.to_dict()
    assert usage["cost_usd"] == pytest.approx(0.5) and usage["calls_of_unknown_price"] == 1
    assert usage["cost_at_live_prices_usd"] == pytest.approx(0.6)
    assert usage["cost_at_batch_prices_usd"] == pytest.approx(0.3)
    assert (usage["batch_calls"], usage["cache_hits"]) == (1, 1)


# ---------------------------------------------------------------- the handle's lifecycle

class Closable(ScriptedTeacher):
    """A scripted teacher that records being closed."""

    def __init__(self) -> None:
        super().__init__(lambda request: "fine")
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_a_borrowed_teacher_is_left_open_for_its_owner() -> None:
    mine = Closable()

    async def go() -> None:
        async with TeacherHandle.borrow(mine) as handle:
            assert (await handle.complete(ask("q"))).text == "fine"
            await handle.settle_batches()  # nothing was deferred: nothing to do

    asyncio.run(go())
    assert not mine.closed and len(mine.requests) == 1


def test_a_handle_borrowed_from_an_open_handle_does_not_close_it(plugin: Any, tmp_path: Path) -> None:
    async def go() -> Completion:
        async with open_teacher(echo_settings(tmp_path), offline=False, cache_dir=tmp_path / "cache") as owner:
            async with TeacherHandle.borrow(owner) as view:
                await view.complete(ask("q"))
            return await owner.complete(ask("q"))  # still open: served from its cache

    assert asyncio.run(go()).cached


def test_deferred_rows_without_a_batch_queue_are_an_error_not_a_silent_loop() -> None:
    class Defers(ScriptedTeacher):
        async def complete(self, request: Request) -> Completion:
            raise Deferred("v1:abc")

    async def go() -> None:
        handle = TeacherHandle.borrow(Defers(lambda request: ""))
        with pytest.raises(Deferred):
            await handle.complete(ask("q"))
        await handle.settle_batches()

    with pytest.raises(DistillError, match="deferred to a provider batch, but the teacher scripted:scripted-1"):
        asyncio.run(go())


def test_the_handle_counts_offline_misses(plugin: Any, tmp_path: Path) -> None:
    async def go() -> Mapping[str, Any]:
        async with open_teacher(echo_settings(tmp_path), offline=True, cache_dir=tmp_path / "cache") as teacher:
            results = await ask_all(teacher, [ask("q1"), ask("q2")])
            assert all(isinstance(r, OfflineMiss) for r in results)
            assert teacher.misses is not None
            return {"count": teacher.misses.count, "summary": teacher.misses.summary()}

    misses = asyncio.run(go())
    assert misses["count"] == 2 and "q1, q2" in misses["summary"]

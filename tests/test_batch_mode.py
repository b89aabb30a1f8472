"""Batch mode behind the cache (`distill.teachers.batch`) against the loopback server: misses are deferred,
submitted, collected into the cache exactly as live answers are, failures fail their request once
and are retried by the next run, nothing is submitted twice, and a critique round in batch mode
produces the same artefacts as a live one."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from distill.errors import BatchesPending, TeacherError
from distill.stages.round import RunConfig, critique_answers
from distill.teachers.base import Completion, Deferred, Request
from distill.teachers.batch.book import BatchBook, Part
from distill.teachers.batch.queue import BatchMode
from distill.teachers.cache.key import cache_key, canonical_request
from distill.teachers.cache.store import CacheStore, cache_path
from distill.teachers.registry import backend_identity, batch_client
from distill.teachers.resolve import resolve_settings
from distill.teachers.settings import TeacherSettings
from distill.teachers.stack import TeacherHandle, open_teacher
from test_round_e2e import teacher_script

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
ENTRY_FIELDS = ("key", "backend", "model", "request", "text", "finish_reason", "input_tokens", "output_tokens",
                "response_model", "template_ids")


def settings_for(backend: str, loopback: Any, tmp_path: Path, **env: str) -> TeacherSettings:
    (tmp_path / "none.toml").write_text("")
    url = loopback.openai_url if backend == "openai" else loopback.anthropic_url
    return resolve_settings(env={"DISTILL_TEACHER": f"{backend}:{MODELS[backend]}", "DISTILL_TEACHER_BASE_URL": url,
                                 "DISTILL_TEACHER_API_KEY": "sk-batch-test-0123456789", "DISTILL_TEACHER_BATCH": "1",
                                 "DISTILL_TEACHER_BATCH_POLL": "0.001", "DISTILL_CONFIG": str(tmp_path / "none.toml"),
                                 **env})


def requests(n: int) -> list[Request]:
    return [Request(messages=({"role": "system", "content": "Critique."}, {"role": "user", "content": f"question {i}"}),
                    max_tokens=64, template_ids=("critique@1", f"principle@{i % 2}"), prompt_id=f"q{i}")
            for i in range(n)]


async def ask_all(teacher: Any, reqs: list[Request]) -> list[Completion | BaseException]:
    return list(await asyncio.gather(*(teacher.complete(r) for r in reqs), return_exceptions=True))


async def batch_pass(settings: TeacherSettings, cache_dir: Path, run_dir: Path, reqs: list[Request], *,
                     wait: bool = True) -> tuple[list[Any], list[Any]]:
    """One process's worth of batch mode: a pass, a flush, and a second pass."""
    teacher = open_teacher(settings, offline=False, cache_dir=cache_dir, batch=BatchMode(run_dir, wait=wait))
    assert isinstance(teacher, TeacherHandle)
    async with teacher:
        first = await ask_all(teacher, reqs)
        if any(isinstance(r, Deferred) for r in first):
            try:
                await teacher.settle_batches()
            except BatchesPending as pending:
                return first, [pending]
        return first, await ask_all(teacher, reqs)


def entries(cache_dir: Path) -> dict[str, dict[str, Any]]:
    store = CacheStore(cache_path(cache_dir))
    try:
        return {e.key: {f: getattr(e, f) for f in ENTRY_FIELDS} for e in store.iter_entries()}
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_batch_answers_are_stored_exactly_as_live_answers_are(backend, loopback, tmp_path) -> None:
    reqs = requests(6)
    settings = settings_for(backend, loopback, tmp_path)
    first, second = asyncio.run(batch_pass(settings, tmp_path / "batch-cache", tmp_path / "run", reqs))
    assert all(isinstance(r, Deferred) for r in first) and loopback.count(backend) == 0  # no live call, ever
    assert all(isinstance(c, Completion) and c.batch and not c.cached for c in second)
    assert [c.text for c in second] == [f"echo: question {i}" for i in range(6)]
    assert all(c.usage.input_tokens > 0 and c.cost is not None for c in second)

    async def live() -> None:
        teacher = open_teacher(settings, offline=False, cache_dir=tmp_path / "live-cache")
        try:
            await ask_all(teacher, reqs)
        finally:
            await teacher.aclose()

    asyncio.run(live())
    assert entries(tmp_path / "batch-cache") == entries(tmp_path / "live-cache")  # interchangeable


def test_failed_rows_fail_their_request_once_and_the_next_run_retries_only_them(loopback, tmp_path) -> None:
    scripted = {"question 1": "errored", "question 2": "expired", "question 3": "canceled"}
    loopback.batch_script(lambda view: scripted.get(view.prompt))
    settings, reqs = settings_for("openai", loopback, tmp_path), requests(5)
    _, second = asyncio.run(batch_pass(settings, tmp_path / "cache", tmp_path / "run", reqs))
    assert isinstance(second[0], Completion) and isinstance(second[4], Completion)
    reasons = {i: (r.reason, str(r)) for i, r in enumerate(second) if isinstance(r, TeacherError)}
    assert {i: r for i, (r, _) in reasons.items()} == {1: "batch_errored", 2: "batch_expired", 3: "batch_canceled"}
    assert "'q2'" in reasons[2][1] and "batch_expired" in reasons[2][1]  # names the prompt and the provider's code
    book = BatchBook(tmp_path / "run")
    results = {r["prompt_id"]: r["outcome"] for r in book.results(book.parts()[0].part)}
    assert results == {"q0": "succeeded", "q1": "errored", "q2": "expired", "q3": "canceled", "q4": "succeeded"}

    loopback.batch_script(lambda view: None)  # the provider is fine again: the next run retries the failures
    first, again = asyncio.run(batch_pass(settings, tmp_path / "cache", tmp_path / "run", reqs))
    assert [type(r).__name__ for r in first] == ["Completion", "Deferred", "Deferred", "Deferred", "Completion"]
    assert all(isinstance(c, Completion) for c in again)
    sent = Counter(row.custom_id for row in loopback.batch_rows)
    assert sorted(sent.values()) == [1, 1, 2, 2, 2]  # only the three failures went out a second time


def test_requests_over_the_per_batch_limit_are_split(loopback, tmp_path) -> None:
    settings = settings_for("anthropic", loopback, tmp_path, DISTILL_TEACHER_BATCH_MAX_REQUESTS="3")
    _, second = asyncio.run(batch_pass(settings, tmp_path / "cache", tmp_path / "run", requests(7)))
    assert all(isinstance(c, Completion) for c in second)
    assert [b["requests"] for b in loopback.batches()] == [3, 3, 1]
    assert [p.state for p in BatchBook(tmp_path / "run").parts()] == ["collected"] * 3


def test_no_wait_exits_after_submitting_and_a_resume_submits_nothing_twice(loopback, tmp_path) -> None:
    loopback.batch_polls = 3  # ends on the 3rd status check (the submitting run checks none)
    settings, reqs, run = settings_for("openai", loopback, tmp_path), requests(4), tmp_path / "run"
    _, [pending] = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs, wait=False))
    assert isinstance(pending, BatchesPending) and pending.exit_code == 75
    [part] = BatchBook(run).parts()
    assert part.state == "submitted" and part.batch_id == "batch_1"  # recorded before any waiting
    for _ in range(2):  # resumed while the batch still runs: nothing new is submitted
        _, [again] = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs, wait=False))
        assert isinstance(again, BatchesPending)
    _, done = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs, wait=False))  # 3rd check: it ended
    assert all(isinstance(c, Completion) and c.batch for c in done)
    creates = [s for s in loopback.requests if s.endpoint == "openai_batches" and "input_file_id" in s.body]
    assert len(creates) == 1 and len(loopback.batches()) == 1 and len(loopback.batch_rows) == 4


def write_lost_part(book: BatchBook, name: str, settings: TeacherSettings, reqs: list[Request]) -> list[str]:
    """Record a part as a process does just before creating its batch; its requests' keys."""
    identity, client = backend_identity(settings), batch_client(settings)
    keys = [cache_key(identity, r) for r in reqs]
    book.write_requests(name, [{"key": k, "custom_id": client.custom_id(k), "prompt_id": r.prompt_id,
                                "template_ids": list(r.template_ids), "request": canonical_request(identity, r)}
                               for k, r in zip(keys, reqs)])
    book.add(Part(name, client.provider, settings.name, str(identity["base_url"]), len(reqs), 0, host="another-host"))
    return keys


def create_batch(settings: TeacherSettings, keys: list[str], reqs: list[Request], name: str) -> str:
    """Create the batch of `keys` at the provider, as the process would have before dying; its id."""
    async def go() -> str:
        client = batch_client(settings)
        try:
            return (await client.submit([client.line(client.custom_id(k), r) for k, r in zip(keys, reqs)], name)).id
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_batch_whose_id_was_never_recorded_is_found_not_submitted_again(backend, loopback, tmp_path) -> None:
    """A run killed between creating a batch and writing its id down: the next run finds it (OpenAI:
    by its part name in the metadata; Anthropic: by its size and creation time) instead of
    sending every request again."""
    settings, reqs, run = settings_for(backend, loopback, tmp_path), requests(3), tmp_path / "run"
    keys = write_lost_part(BatchBook(run), "b0001-crashed", settings, reqs)
    made = create_batch(settings, keys, reqs, "b0001-crashed")  # ... and the process died here, before recording it
    _, second = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs))
    assert all(isinstance(c, Completion) for c in second)
    assert len(loopback.batches()) == 1 and [p.batch_id for p in BatchBook(run).parts()] == [made]


def test_an_anthropic_batch_another_part_records_is_not_adopted(loopback, tmp_path) -> None:
    """The only batch of the right size and time belongs to another part of the book: the lost
    part is given up and its requests are submitted again, each batch answering its own part."""
    settings, reqs, run = settings_for("anthropic", loopback, tmp_path), requests(6), tmp_path / "run"
    book = BatchBook(run)
    lost_keys = write_lost_part(book, "b0001-crashed", settings, reqs[:3])  # died before creating its batch
    other_keys = write_lost_part(book, "b0002-recorded", settings, reqs[3:])
    other = create_batch(settings, other_keys, reqs[3:], "b0002-recorded")
    book.update("b0002-recorded", state="submitted", batch_id=other)
    _, second = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs))
    assert all(isinstance(c, Completion) for c in second)
    parts = {p.part: p for p in BatchBook(run).parts()}
    assert parts["b0001-crashed"].state == "abandoned" and parts["b0002-recorded"].batch_id == other
    [again] = [p for name, p in parts.items() if name not in ("b0001-crashed", "b0002-recorded")]
    assert again.state == "collected" and again.requests == 3 and len(loopback.batches()) == 2
    assert sorted(row.custom_id for row in loopback.batch_rows if row.batch_id == again.batch_id) == \
        sorted(k.split(":", 1)[-1] for k in lost_keys)


# ---------------------------------------------------------------- a critique round in batch mode

ANSWERS = [("sum", "What is 12 plus 30? End with the number.", "41", {"type": "numeric", "value": 42}),
           ("colour", "Name a primary colour.", "Green", None),
           ("fruits", "Answer in lowercase only: name two fruits.", "Apples", {"type": "lowercase"}),
           ("capital", "What is the capital of France?", "Paris", "Paris")]


def answer_rows() -> list[dict[str, Any]]:
    return [{"id": f"a-{pid}", "prompt_id": pid, "sample": 0, "answer": a, "messages": [{"role": "user", "content": q}],
             **({"reference": ref} if ref else {})} for pid, q, a, ref in ANSWERS]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def teacher_env(loopback_teacher, tmp_path, monkeypatch):
    loopback_teacher.script(teacher_script)
    monkeypatch.setenv("DISTILL_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    return loopback_teacher


def test_a_three_stage_round_in_batch_mode_matches_the_live_round(teacher_env, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "batch-cache"))
    batch = RunConfig(name="batch", runs_dir=tmp_path / "runs", chain="default", batch=True)
    summary = critique_answers(batch, answer_rows())
    assert teacher_env.count("openai") == 0  # not one live call
    parts = BatchBook(batch.run_dir).parts()
    # 3 stages, 3 single-row repair passes (colour's replies need one each), 2 judge orders
    assert [p.requests for p in parts] == [4, 4, 4, 1, 1, 1, 3, 3]
    manifest = json.loads((batch.run_dir / "manifest.json").read_text())
    usage = manifest["teacher_usage"]["critique"]
    assert usage["batch_calls"] == usage["teacher_calls"] == 15 and usage["cache_hits"] == 0
    assert usage["cost_usd"] == pytest.approx(usage["cost_at_batch_prices_usd"])
    assert usage["cost_at_batch_prices_usd"] == pytest.approx(usage["cost_at_live_prices_usd"] / 2)
    assert manifest["batches"]["outcomes"] == {"succeeded": 21}
    assert "| critique | 4 | 4 | 0 | 15 | 0 | 15 |" in summary.table()

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "live-cache"))
    live = RunConfig(name="live", runs_dir=tmp_path / "runs", chain="default")
    critique_answers(live, answer_rows())
    for name in ("critiques.jsonl", "revisions.jsonl", "sft.jsonl", "prefs.jsonl", "rejected.jsonl"):
        assert read(batch.run_dir / name) == read(live.run_dir / name), name


def test_failed_batch_rows_are_recorded_per_row_and_retried_live(teacher_env, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    teacher_env.batch_script(lambda view: "expired" if "primary colour" in view.messages[-1]["content"] else None)
    cfg = RunConfig(name="r", runs_dir=tmp_path / "runs", chain="quick", batch=True, filters=("acceptable",))
    critique_answers(cfg, answer_rows())
    revisions = {r["prompt_id"]: r for r in read(cfg.run_dir / "revisions.jsonl")}
    assert revisions["colour"]["status"] == "failed" and revisions["colour"]["reason"] == "teacher_batch_expired"
    assert "batch_expired" in revisions["colour"]["detail"]
    rejected = {r["prompt_id"]: r for r in read(cfg.run_dir / "rejected.jsonl")}
    assert rejected["colour"]["filter"] == "failed" and "teacher_batch_expired" in rejected["colour"]["reason"]

    live = RunConfig(name="r", runs_dir=tmp_path / "runs", chain="quick", batch=False, filters=("acceptable",))
    critique_answers(live, answer_rows())  # the same run again, live: only the failed row is asked
    asked = [s.body["messages"][1]["content"] for s in teacher_env.requests if s.endpoint == "openai"]
    assert asked and all("primary colour" in text for text in asked)
    assert read(cfg.run_dir / "revisions.jsonl")[1]["status"] == "ok"


def test_a_submitting_part_whose_pid_now_belongs_to_another_process_is_recovered(loopback, tmp_path) -> None:
    """The submitting process died before recording its batch id, and the system gave its PID to an
    unrelated process: the part is not taken for one still being submitted (which would wait
    forever); its batch is looked for and adopted."""
    settings, reqs, run = settings_for("openai", loopback, tmp_path), requests(3), tmp_path / "run"
    book = BatchBook(run)
    keys = write_lost_part(book, "b0001-crashed", settings, reqs)
    made = create_batch(settings, keys, reqs, "b0001-crashed")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            book.update("b0001-crashed", host=socket.gethostname(), pid=other.pid)  # the same PID, reused
            _, [pending] = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs, wait=False))
        finally:
            other.kill()
    assert isinstance(pending, BatchesPending)  # the adopted batch is still running
    [part] = BatchBook(run).parts()
    assert part.state == "submitted" and part.batch_id == made and len(loopback.batches()) == 1


def test_a_part_its_submitter_is_still_creating_is_left_alone(loopback, tmp_path) -> None:
    """While the submitting process holds the part's lock, another run does not touch the part."""
    settings, reqs, run = settings_for("openai", loopback, tmp_path), requests(3), tmp_path / "run"
    book = BatchBook(run)
    write_lost_part(book, "b0001-busy", settings, reqs)
    book.update("b0001-busy", host=socket.gethostname())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(book.submitting_lock("b0001-busy"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        book.update("b0001-busy", pid=holder.pid)
        _, [pending] = asyncio.run(batch_pass(settings, tmp_path / "cache", run, reqs, wait=False))
    finally:
        holder.kill()
        holder.wait()
    assert isinstance(pending, BatchesPending)
    assert [p.state for p in BatchBook(run).parts()] == ["submitting"] and loopback.batches() == []


HOLD_LOCK = """
import fcntl, sys, time
fh = open(sys.argv[1], "a")
fcntl.flock(fh, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""

"""The teacher-call cache around the Teacher seam: keys, hits, single-flight, failures, offline.

A scripted fake teacher stands in for a backend (the seam, not a Mock): it records every
request it is sent, and each test says what it answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

from distill.errors import CacheError, ConfigError, TeacherError
from distill.teachers.base import Completion, Request, Teacher, Usage
from distill.teachers.cache.key import cache_key, canonical_request
from distill.teachers.cache.layer import CachedTeacher, OfflineMiss, offline_from_env
from distill.teachers.cache.store import CacheStore, cache_path

IDENTITY = {"provider": "openai", "model": "gpt-4o-mini"}


class ScriptedTeacher:
    """A fake backend: answers `reply(request)` after `delay` seconds, and logs every call."""

    backend = "openai"
    model = "gpt-4o-mini"

    def __init__(self, reply: Callable[[Request], Completion] | None = None, delay: float = 0.0):
        self.calls: list[Request] = []
        self.closed = False
        self._reply = reply or (lambda r: Completion(
            text="revised: " + r.messages[-1]["content"], finish_reason="stop", usage=Usage(11, 7),
            raw={"id": "chatcmpl-1", "choices": [{"message": {"content": "..."}}]}, model="gpt-4o-mini-2024-07-18"))
        self._delay = delay

    def identity(self) -> Mapping[str, Any]:
        return dict(IDENTITY)

    async def complete(self, request: Request) -> Completion:
        self.calls.append(request)
        if self._delay:
            await asyncio.sleep(self._delay)
        return self._reply(request)

    async def aclose(self) -> None:
        self.closed = True


def ask(text: str = "Is 2+2=5?", **kw: Any) -> Request:
    return Request(messages=({"role": "system", "content": "Critique."}, {"role": "user", "content": text}), **kw)


def make(tmp_path: Path, inner: Teacher | None = None, *, offline: bool = False) -> CachedTeacher:
    return CachedTeacher(CacheStore(cache_path(tmp_path)), IDENTITY, (lambda: inner) if inner else None,
                         offline=offline)


def never_built() -> Teacher:
    raise AssertionError("the backend must not be built")


# ----------------------------------------------------------------------------------- the key

def test_key_is_versioned_sha256_and_pinned() -> None:
    """A changed key format would silently orphan every user's cache: pin one key."""
    key = cache_key(IDENTITY, ask())
    assert key.startswith("v1:") and len(key) == 3 + 64
    assert key == "v1:" + __import__("hashlib").sha256(canonical_request(IDENTITY, ask()).encode()).hexdigest()
    assert key == PINNED_KEY


PINNED_KEY = "v1:24abba66a12a004fb0ef25d6afec08db25695b0673f136ea9981eb168c2b9a27"


def test_key_ignores_key_order_argument_order_and_numeric_spelling() -> None:
    a = Request(messages=({"role": "user", "content": "hi"},), temperature=0.7, max_tokens=64, seed=1,
                response_schema={"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}},
                tools=({"name": "f", "parameters": {"x": 1, "y": 2}},))
    b = Request(tools=({"parameters": {"y": 2, "x": 1}, "name": "f"},), seed=1, max_tokens=64,
                response_schema={"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"},
                temperature=0.7, messages=({"content": "hi", "role": "user"},))
    assert cache_key(IDENTITY, a) == cache_key(IDENTITY, b)
    assert cache_key({"model": "gpt-4o-mini", "provider": "openai"}, a) == cache_key(IDENTITY, a)
    # 0 and 0.0, 1 and 1.0, -0.0 and 0.0 are the same decoding parameters
    assert cache_key(IDENTITY, ask(temperature=0, top_p=1)) == cache_key(IDENTITY, ask(temperature=0.0, top_p=1.0))
    assert cache_key(IDENTITY, ask(temperature=-0.0)) == cache_key(IDENTITY, ask())
    # a list where the dataclass expects a tuple gives the same key
    assert cache_key(IDENTITY, ask(stop=["\n"])) == cache_key(IDENTITY, ask(stop=("\n",)))  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {"messages": ({"role": "user", "content": "Is 2+2=4?"},)},
    {"messages": ({"role": "system", "content": "Critique!"}, {"role": "user", "content": "Is 2+2=5?"})},
    {"temperature": 0.2}, {"top_p": 0.9}, {"max_tokens": 512}, {"stop": ("END",)}, {"seed": 7},
    {"response_schema": {"type": "object"}}, {"schema_name": "verdict"},
    {"tools": ({"name": "search", "parameters": {}},)}, {"sample": 1},
], ids=lambda c: next(iter(c)))
def test_every_output_field_changes_the_key(change: dict[str, Any]) -> None:
    assert cache_key(IDENTITY, replace(ask(), **change)) != cache_key(IDENTITY, ask())


@pytest.mark.parametrize("identity", [
    {"provider": "anthropic", "model": "gpt-4o-mini"}, {"provider": "openai", "model": "gpt-4o"},
    {**IDENTITY, "weights_sha256": "ab12"},
], ids=["provider", "model", "weights"])
def test_model_identity_changes_the_key(identity: dict[str, Any]) -> None:
    assert cache_key(identity, ask()) != cache_key(IDENTITY, ask())


def test_bookkeeping_and_connection_settings_do_not_change_the_key() -> None:
    base = cache_key(IDENTITY, ask())
    assert cache_key(IDENTITY, ask(template_ids=("critique-v2",), prompt_id="p9")) == base
    noisy = {**IDENTITY, "api_key": "sk-secret", "base_url": "http://127.0.0.1:9/v1", "timeout": 5.0,
             "max_retries": 9, "rpm": 3000, "tpm": 10**6, "concurrency": 64}
    assert cache_key(noisy, ask()) == base
    assert "sk-secret" not in canonical_request(noisy, ask())


def test_unhashable_field_is_named() -> None:
    with pytest.raises(CacheError, match="response_schema"):
        cache_key(IDENTITY, ask(response_schema={"type": object()}))


# ------------------------------------------------------------------------------ hits and misses

def test_miss_then_hit_bills_zero_and_returns_the_same_answer(tmp_path: Path) -> None:
    inner = ScriptedTeacher()

    async def main() -> tuple[Completion, Completion, CachedTeacher]:
        async with make(tmp_path, inner) as teacher:
            first = await teacher.complete(ask(template_ids=("critique-v1",)))
            second = await teacher.complete(ask(prompt_id="other"))
            return first, second, teacher

    first, second, teacher = asyncio.run(main())
    assert len(inner.calls) == 1 and inner.closed
    assert (first.cached, first.usage) == (False, Usage(11, 7))
    assert (second.cached, second.usage, second.retries, second.cost) == (True, Usage(0, 0), 0, 0.0)
    assert (second.text, second.finish_reason, dict(second.raw), second.model) == \
        (first.text, first.finish_reason, dict(first.raw), first.model)
    assert (teacher.stats.requests, teacher.stats.hits, teacher.stats.misses, teacher.stats.stored) == (2, 1, 1, 1)
    store = CacheStore(cache_path(tmp_path))
    entry = store.get(cache_key(IDENTITY, ask()))
    assert entry is not None and entry.template_ids == ("critique-v1",)
    assert (entry.backend, entry.model, entry.input_tokens, entry.output_tokens) == ("openai", "gpt-4o-mini", 11, 7)
    last = store.summary()["last_run"]
    assert (last["requests"], last["hits"], last["misses"], last["hit_rate"]) == (2, 1, 1, 0.5)
    store.close()


def test_a_fully_cached_run_never_builds_the_backend(tmp_path: Path) -> None:
    asyncio.run(_fill(tmp_path, [ask("a"), ask("b")]))

    async def replay() -> tuple[list[Completion], CachedTeacher]:
        async with CachedTeacher(CacheStore(cache_path(tmp_path)), IDENTITY, never_built) as teacher:
            return [await teacher.complete(ask(t)) for t in "ab"], teacher

    results, teacher = asyncio.run(replay())
    assert all(c.cached for c in results) and teacher.inner is None


async def _fill(tmp_path: Path, requests: list[Request]) -> None:
    async with make(tmp_path, ScriptedTeacher()) as teacher:
        for request in requests:
            await teacher.complete(request)


def test_samples_are_distinct_entries(tmp_path: Path) -> None:
    inner = ScriptedTeacher()
    asyncio.run(_fill_with(tmp_path, inner, [ask(temperature=0.8, sample=k) for k in range(4)] * 2))
    assert [r.sample for r in inner.calls] == [0, 1, 2, 3]


async def _fill_with(tmp_path: Path, inner: Teacher, requests: list[Request]) -> list[Completion]:
    async with make(tmp_path, inner) as teacher:
        return [await teacher.complete(r) for r in requests]


# -------------------------------------------------------------------------------- single-flight

def test_identical_requests_in_flight_are_sent_once(tmp_path: Path) -> None:
    inner = ScriptedTeacher(delay=0.05)

    async def main() -> tuple[list[Completion], CachedTeacher]:
        async with make(tmp_path, inner) as teacher:
            results = await asyncio.gather(*(teacher.complete(ask(prompt_id=f"p{i}")) for i in range(50)),
                                           *(teacher.complete(ask("other")) for _ in range(10)))
            return list(results), teacher

    results, teacher = asyncio.run(main())
    assert len(inner.calls) == 2
    assert {c.text for c in results[:50]} == {"revised: Is 2+2=5?"}
    billed = [c for c in results if not c.cached]
    assert len(billed) == 2 and all(c.usage == Usage(11, 7) for c in billed)
    assert all(c.usage == Usage() for c in results if c.cached)
    assert (teacher.stats.coalesced, teacher.stats.misses, teacher.stats.hit_rate) == (58, 2, 58 / 60)


def test_a_cancelled_caller_does_not_cancel_the_shared_call(tmp_path: Path) -> None:
    inner = ScriptedTeacher(delay=0.05)

    async def main() -> Completion:
        async with make(tmp_path, inner) as teacher:
            leader = asyncio.ensure_future(teacher.complete(ask()))
            await asyncio.sleep(0.01)
            follower = asyncio.ensure_future(teacher.complete(ask()))
            await asyncio.sleep(0.01)
            leader.cancel()
            return await follower

    answer = asyncio.run(main())
    assert answer.text == "revised: Is 2+2=5?" and len(inner.calls) == 1
    assert (answer.cached, answer.usage) == (False, Usage(11, 7))  # the paid call is billed to someone


# ------------------------------------------------------------------------------------ failures

def test_failures_are_shared_in_flight_and_never_stored(tmp_path: Path) -> None:
    outcomes = iter([TeacherError("upstream 503 after 5 retries", reason="server_error", status=503), None])

    def reply(request: Request) -> Completion:
        error = next(outcomes)
        if error:
            raise error
        return Completion(text="fine", finish_reason="stop", usage=Usage(1, 1))

    inner = ScriptedTeacher(reply, delay=0.02)

    async def main() -> tuple[list[Any], Completion]:
        async with make(tmp_path, inner) as teacher:
            failed = await asyncio.gather(*(teacher.complete(ask()) for _ in range(5)), return_exceptions=True)
            assert len(teacher.store) == 0
            return list(failed), await teacher.complete(ask())

    failed, retried = asyncio.run(main())
    assert all(isinstance(f, TeacherError) for f in failed)
    assert len(inner.calls) == 2 and (retried.text, retried.cached) == ("fine", False)


@pytest.mark.parametrize("finish_reason", ["error", "incomplete", ""])
def test_incomplete_answers_are_not_stored(tmp_path: Path, finish_reason: str) -> None:
    inner = ScriptedTeacher(lambda r: Completion(text="partial", finish_reason=finish_reason))
    results = asyncio.run(_fill_with(tmp_path, inner, [ask(), ask()]))
    assert len(inner.calls) == 2 and not any(c.cached for c in results)


def test_truncated_by_max_tokens_is_a_complete_answer(tmp_path: Path) -> None:
    inner = ScriptedTeacher(lambda r: Completion(text="long...", finish_reason="length"))
    results = asyncio.run(_fill_with(tmp_path, inner, [ask(), ask()]))
    assert len(inner.calls) == 1 and results[1].cached


# ------------------------------------------------------------------------------------- offline

def test_offline_miss_counts_misses_and_names_prompts(tmp_path: Path) -> None:
    asyncio.run(_fill(tmp_path, [ask("cached")]))

    async def main() -> tuple[list[Any], CachedTeacher]:
        teacher = CachedTeacher(CacheStore(cache_path(tmp_path)), IDENTITY, never_built, offline=True)
        async with teacher:
            requests = [ask("cached", prompt_id="p0")] + [ask(f"q{i}", prompt_id=f"p{i}") for i in range(1, 9)]
            return list(await asyncio.gather(*(teacher.complete(r) for r in requests),
                                             return_exceptions=True)), teacher

    results, teacher = asyncio.run(main())
    assert isinstance(results[0], Completion) and results[0].cached
    misses = results[1:]
    assert all(isinstance(m, OfflineMiss) and isinstance(m, CacheError) for m in misses)
    assert teacher.inner is None
    first = str(misses[0])
    assert "'p1'" in first and "1 miss(es) so far" in first and str(cache_path(tmp_path)) in first
    assert "distill cache import" in first and "DISTILL_OFFLINE" in first
    summary = misses[0].summary(total=9)
    assert summary.startswith("offline mode: 8 of 9 teacher request(s) are not in the cache")
    assert "p1, p2, p3, p4, p5 and 3 more" in summary
    assert (teacher.stats.offline_misses, teacher.stats.hits) == (8, 1)


def test_offline_flag_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert offline_from_env() is False
    for value, expected in [("1", True), ("true", True), ("on", True), ("0", False), ("no", False)]:
        monkeypatch.setenv("DISTILL_OFFLINE", value)
        assert offline_from_env() is expected
    monkeypatch.setenv("DISTILL_OFFLINE", "maybe")
    with pytest.raises(ConfigError, match="DISTILL_OFFLINE='maybe'"):
        offline_from_env()


def test_the_cache_is_a_teacher(tmp_path: Path) -> None:
    teacher = make(tmp_path, ScriptedTeacher())
    assert isinstance(teacher, Teacher)
    assert (teacher.backend, teacher.model, dict(teacher.identity())) == ("openai", "gpt-4o-mini", IDENTITY)
    asyncio.run(teacher.aclose())


def test_an_online_cache_needs_a_factory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CachedTeacher(CacheStore(cache_path(tmp_path)), IDENTITY, None)


def test_the_cache_lives_under_distill_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_path() == tmp_path / "elsewhere" / "teacher-calls.sqlite"
    monkeypatch.delenv("DISTILL_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    assert cache_path() == tmp_path / "cache" / "teacher-calls.sqlite"


# ----------------------------------------------------------------------------- verified reads

@pytest.mark.parametrize("edit", ["text = 'a better answer'", "output_tokens = 999", "raw = '{}'",
                                  "request = replace(request, 'Is 2+2=5?', 'Is 2+2=4?')",
                                  "template_ids = 'not json'"])
def test_an_entry_altered_on_disk_is_a_miss_with_a_warning_never_served(tmp_path: Path, edit: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    asyncio.run(_fill(tmp_path, [ask()]))
    db = sqlite3.connect(cache_path(tmp_path))
    db.execute(f"UPDATE entries SET {edit}")
    db.commit()
    db.close()
    with pytest.raises(OfflineMiss):  # an offline replay does not serve it
        asyncio.run(_fill_with_offline(tmp_path, [ask()]))
    assert "does not verify" in caplog.text and "distill cache verify" in caplog.text

    inner = ScriptedTeacher()  # online, it is asked again, and the answer replaces the altered entry
    [done] = asyncio.run(_fill_with(tmp_path, inner, [ask()]))
    assert done.text == "revised: Is 2+2=5?" and not done.cached and len(inner.calls) == 1
    [again] = asyncio.run(_fill_with_offline(tmp_path, [ask()]))
    assert again.cached and again.text == "revised: Is 2+2=5?"


async def _fill_with_offline(tmp_path: Path, requests: list[Request]) -> list[Completion]:
    async with make(tmp_path, offline=True) as teacher:
        return [await teacher.complete(r) for r in requests]


@pytest.mark.parametrize("text", ["", "plain", 'quotes " and \\ backslash', "ünïcode ✓ 日本語 \U0001f600",
                                  "control \x00\x01\x1f\x7f\t\n\r chars", "\u2028\u2029 separators", "</script>"])
@pytest.mark.parametrize("tokens", [(0, 0), (7, 12), (2 ** 70, -1), (True, 3), (1.5, 2)])
def test_the_checksum_hashes_the_canonical_json_of_the_response(text: str, tokens: tuple[Any, Any]) -> None:
    """Every read checks a checksum, so it is not built with json.dumps; it must still hash exactly
    the canonical JSON it is documented to, or caches written before would stop verifying."""
    import hashlib

    from distill.records.ids import canonical_json
    from distill.teachers.cache.entry import response_checksum

    head = canonical_json([text, "stop", *tokens, "gpt-4o-mini-2024-07-18"])
    expected = hashlib.sha256((head + "\n" + '{"id":"x"}').encode("utf-8")).hexdigest()
    assert response_checksum(text, "stop", *tokens, "gpt-4o-mini-2024-07-18", '{"id":"x"}') == expected

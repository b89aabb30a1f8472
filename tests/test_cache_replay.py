"""Offline replay end to end: `open_teacher` with the real `openai` and `anthropic` backends (the
official SDKs) against the loopback server, whose own request counter must not move while a
whole batch is replayed offline, and where no client is even built."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from distill.teachers.base import Completion, Request, Usage
from distill.teachers.cache.layer import CachedTeacher, OfflineMiss
from distill.teachers.resolve import resolve_settings
from distill.teachers.settings import TeacherSettings
from distill.teachers.stack import TeacherHandle, open_teacher

SCHEMA = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"],
          "additionalProperties": False}


def batch() -> list[Request]:
    """30 prompts, a structured-output critique each, 3 samples of one, and 5 exact duplicates."""
    out = [Request(messages=({"role": "system", "content": "Critique the answer."},
                             {"role": "user", "content": f"Question {i}: is {i} prime?"}),
                   template_ids=("critique-v1",), prompt_id=f"q{i}") for i in range(30)]
    out += [Request(messages=({"role": "user", "content": f"Judge answer {i}."},), response_schema=SCHEMA,
                    schema_name="verdict", template_ids=("judge-v1",), prompt_id=f"q{i}") for i in range(30)]
    out += [Request(messages=({"role": "user", "content": "Say something."},), temperature=0.9, sample=k,
                    prompt_id="q0") for k in range(3)]
    return out + out[:5]


def settings_for(backend: str, base_url: str, key: str | None, tmp_path: Path) -> TeacherSettings:
    env = {"DISTILL_TEACHER": f"{backend}:{'gpt-4o-mini' if backend == 'openai' else 'claude-sonnet-4-5'}",
           "DISTILL_TEACHER_BASE_URL": base_url, "DISTILL_CONFIG": str(tmp_path / "none.toml")}
    if key is not None:
        env["DISTILL_TEACHER_API_KEY"] = key
    (tmp_path / "none.toml").write_text("")
    return resolve_settings(env=env)


async def run_batch(settings: TeacherSettings, cache_dir: Path, *, offline: bool | None,
                    requests: list[Request]) -> tuple[list[Any], CachedTeacher]:
    teacher = open_teacher(settings, offline=offline, cache_dir=cache_dir)
    assert isinstance(teacher, TeacherHandle) and isinstance(teacher.cache, CachedTeacher)
    async with teacher:
        results = await asyncio.gather(*(teacher.complete(r) for r in requests), return_exceptions=True)
    return list(results), teacher.cache


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_offline_replay_of_a_whole_batch_makes_zero_http_requests(loopback: Any, tmp_path: Path, backend: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir, requests = tmp_path / "cache", batch()
    url = loopback.openai_url if backend == "openai" else loopback.anthropic_url
    online = settings_for(backend, url, "sk-test-0123456789abcdef", tmp_path)

    first, teacher = asyncio.run(run_batch(online, cache_dir, offline=False, requests=requests))
    assert all(isinstance(r, Completion) for r in first), first
    distinct = len(requests) - 5
    assert loopback.count() == distinct  # duplicates in flight were sent once
    assert sum(r.usage.total_tokens > 0 for r in first) == distinct
    assert teacher.stats.stored == distinct

    # Another machine: no key, a dead base URL; DISTILL_OFFLINE=1 from the environment.
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    elsewhere = settings_for(backend, "http://127.0.0.1:9/v1", None, tmp_path)
    before = loopback.count()
    replay, teacher = asyncio.run(run_batch(elsewhere, cache_dir, offline=None, requests=requests))
    assert loopback.count() == before, "an offline replay sent HTTP requests"
    assert teacher.offline and teacher.inner is None  # no client was ever built
    assert all(r.cached and r.usage == Usage() for r in replay)
    assert [r.text for r in replay] == [r.text for r in first]
    assert teacher.stats.hits + teacher.stats.coalesced == len(requests)


def test_an_offline_miss_in_a_batch_is_reported_whole_and_sends_nothing(loopback: Any, tmp_path: Path) -> None:
    cache_dir, requests = tmp_path / "cache", batch()
    online = settings_for("openai", loopback.openai_url, "sk-test-0123456789abcdef", tmp_path)
    asyncio.run(run_batch(online, cache_dir, offline=False, requests=requests[:10]))
    before = loopback.count()
    results, teacher = asyncio.run(run_batch(online, cache_dir, offline=True, requests=requests[:30]))
    assert loopback.count() == before and teacher.inner is None
    misses = [r for r in results if isinstance(r, OfflineMiss)]
    assert len(misses) == 20 and all(isinstance(r, Completion) for r in results[:10])
    summary = misses[-1].summary(total=len(results))
    assert "20 of 30 teacher request(s) are not in the cache" in summary
    assert "q10, q11, q12, q13, q14 and 15 more" in summary


def test_a_fully_cached_online_run_sends_nothing(loopback: Any, tmp_path: Path) -> None:
    cache_dir, requests = tmp_path / "cache", batch()[:12]
    online = settings_for("openai", loopback.openai_url, "sk-test-0123456789abcdef", tmp_path)
    asyncio.run(run_batch(online, cache_dir, offline=False, requests=requests))
    sent = loopback.count()
    results, teacher = asyncio.run(run_batch(online, cache_dir, offline=False, requests=requests))
    assert loopback.count() == sent and teacher.inner is None
    assert all(r.cached for r in results)

"""API keys never appear in logs, error messages, output or files, even when a server echoes them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from loopback_server import LoopbackServer

from distill.cli import main
from distill.errors import TeacherError
from distill.teachers.base import Request
from distill.teachers.resolve import resolve_settings
from distill.teachers.stack import live_teacher

KEY = "sk-proj-SECRETSECRET-0123456789-abcdefghijklmnop"
PROVIDERS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_key_never_leaks(provider: str, loopback: LoopbackServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                           capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILL_TEACHER", f"{provider}:{PROVIDERS[provider]}")
    base_url = loopback.openai_url if provider == "openai" else loopback.anthropic_url
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", base_url)
    monkeypatch.setenv("DISTILL_TEACHER_API_KEY", KEY)
    monkeypatch.setenv("DISTILL_TEACHER_MAX_RETRIES", "1")
    caplog.set_level(logging.DEBUG)  # everything: distill, the SDKs, httpx, aiohttp

    echo = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    loopback.fail_next(503, retry_after=0.01)  # a retried failure is logged...
    loopback.fail_next(401, body=echo)  # ...and the final one echoes the key back, as some servers do
    teacher = live_teacher(resolve_settings())

    async def go() -> BaseException:
        try:
            await teacher.complete(Request(messages=({"role": "user", "content": "hi"},)))
        except TeacherError as exc:
            return exc
        finally:
            await teacher.aclose()
        raise AssertionError("the 401 should have failed the request")

    error = asyncio.run(go())
    assert error.status == 401  # type: ignore[attr-defined]
    assert loopback.count() == 2  # the key really was sent and echoed
    assert main(["config", "--json"]) == 0
    assert main(["config"]) == 0

    shown = capsys.readouterr()
    texts = {"error message": str(error), "error repr": repr(error), "logs": caplog.text,
             "stdout": shown.out, "stderr": shown.err, "settings": repr(resolve_settings()),
             "teacher": repr(vars(teacher))}
    for where, text in texts.items():
        assert KEY not in text, f"the key leaked into the {where}"
    assert "***mnop" in str(error)  # redacted, not dropped: the user can tell which key was refused
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the key leaked into {path}"


URL_SECRET = "url-token-SECRET-0123456789"


def test_credentials_in_a_base_url_are_masked_wherever_it_is_shown_or_recorded(
        loopback_teacher: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from distill.stages.round import RunConfig, critique_answers

    monkeypatch.chdir(tmp_path)
    url = loopback_teacher.openai_url.replace("http://", f"http://reviewer:{URL_SECRET}@")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", url + "?api-key=" + URL_SECRET)
    for args in (["config"], ["config", "--json"], ["config", "--identity", "--json"]):
        assert main(args) == 0
    shown = capsys.readouterr()
    assert URL_SECRET not in shown.out + shown.err
    assert "http://***@127.0.0.1" in shown.out and "api-key=***" in shown.out  # masked, not dropped

    # a round records the base URL in manifest.json, and in batch mode in batches.json, before
    # anything is sent (aiohttp, the SDKs' transport here, then refuses a URL with credentials)
    monkeypatch.setenv("DISTILL_TEACHER", "anthropic:claude-haiku-4-5")
    monkeypatch.setenv("DISTILL_TEACHER_MAX_RETRIES", "0")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL",
                       loopback_teacher.anthropic_url.replace("http://", f"http://reviewer:{URL_SECRET}@"))
    answers = [{"id": "a-cap", "prompt_id": "cap", "sample": 0, "answer": "Paris.",
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}]
    live = RunConfig(name="live", runs_dir=tmp_path / "runs", chain="quick", filters=("acceptable",))
    critique_answers(live, answers)
    batch = RunConfig(name="batch", runs_dir=tmp_path / "runs", chain="quick", batch=True, filters=("acceptable",))
    with pytest.raises(TeacherError):
        critique_answers(batch, answers)
    for path in (live.run_dir / "manifest.json", live.run_dir / "revisions.jsonl", batch.run_dir / "batches.json"):
        text = path.read_text(encoding="utf-8")
        assert URL_SECRET not in text, f"the base URL's credentials leaked into {path.name}"
    assert "http://***@127.0.0.1" in (live.run_dir / "manifest.json").read_text(encoding="utf-8")
    assert "http://***@127.0.0.1" in (batch.run_dir / "batches.json").read_text(encoding="utf-8")

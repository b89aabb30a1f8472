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
from distill.teachers.registry import create_backend
from distill.teachers.settings import resolve_settings

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
    teacher = create_backend(resolve_settings())

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

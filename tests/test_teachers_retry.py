"""The retry loop and failure classification, with a scripted attempt function and a recorded sleep."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any

import pytest

from distill.errors import QuotaExhausted, TeacherError
from distill.teachers.retry import ProviderFailure, RetryLoop, failure_from_status, retry_after_seconds


class Script:
    """An attempt function that fails with the given failures, then returns "ok"."""

    def __init__(self, *failures: ProviderFailure):
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def loop(max_retries: int = 5) -> tuple[RetryLoop, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryLoop("test:model", max_retries=max_retries, sleep=sleep, rng=random.Random(0)), slept


def status(code: int, headers: dict[str, str] | None = None, body: Any = None) -> ProviderFailure:
    return failure_from_status(code, headers or {}, body, f"HTTP {code}")


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses_are_retried(code: int) -> None:
    retry, slept = loop()
    script = Script(status(code), status(code))
    assert asyncio.run(retry.run(script)) == ("ok", 2)
    assert script.calls == 3 and len(slept) == 2


@pytest.mark.parametrize("reason", ["timeout", "connection", "malformed_response"])
def test_failures_without_an_answer_are_retried(reason: str) -> None:
    retry, _ = loop()
    assert asyncio.run(retry.run(Script(ProviderFailure(reason, "x")))) == ("ok", 1)


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422, 413])
def test_client_errors_are_not_retried(code: int) -> None:
    retry, slept = loop()
    script = Script(status(code))
    with pytest.raises(TeacherError) as caught:
        asyncio.run(retry.run(script))
    assert script.calls == 1 and slept == []
    assert caught.value.status == code and "1 attempt" in str(caught.value)


def test_backoff_is_jittered_and_exponential() -> None:
    retry, slept = loop(max_retries=5)
    asyncio.run(retry.run(Script(*[status(503)] * 5)))
    for n, seconds in enumerate(slept):
        ceiling = min(30.0, 0.5 * 2 ** n)
        assert ceiling / 2 <= seconds <= ceiling
    assert len(set(slept)) == len(slept)


def test_retry_after_is_used_instead_of_backoff() -> None:
    retry, slept = loop()
    asyncio.run(retry.run(Script(status(429, {"retry-after-ms": "1500", "retry-after": "2"}),
                                 status(503, {"retry-after": "3"}))))
    assert 1.5 <= slept[0] <= 1.5 * 1.05 + 1e-9
    assert 3.0 <= slept[1] <= 3.25


def test_a_retry_after_beyond_the_cap_fails_at_once_saying_so() -> None:
    retry, slept = loop()
    with pytest.raises(TeacherError, match="asked to wait 3600 s"):
        asyncio.run(retry.run(Script(status(429, {"retry-after": "3600"}))))
    assert slept == []


def test_retries_run_out_with_the_last_reason() -> None:
    retry, _ = loop(max_retries=2)
    with pytest.raises(TeacherError) as caught:
        asyncio.run(retry.run(Script(status(500), status(502), status(503))))
    assert caught.value.reason == "server_error" and "3 attempts" in str(caught.value)
    assert "DISTILL_TEACHER_MAX_RETRIES" in str(caught.value)


@pytest.mark.parametrize("failure", [
    status(429, body={"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}),
    status(402, body={"type": "error", "error": {"type": "billing_error", "message": "payment required"}}),
    status(400, body={"type": "error", "error": {"type": "invalid_request_error",
                                                 "message": "Your credit balance is too low to access the API."}}),
])
def test_an_exhausted_quota_trips_the_loop_for_every_later_call(failure: ProviderFailure) -> None:
    retry, slept = loop()
    first = Script(failure)
    with pytest.raises(QuotaExhausted):
        asyncio.run(retry.run(first))
    later = Script()
    with pytest.raises(QuotaExhausted):
        asyncio.run(retry.run(later))
    assert first.calls == 1 and later.calls == 0 and slept == []


def test_an_ordinary_rate_limit_is_not_a_quota() -> None:
    failure = status(429, body={"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"})
    assert not failure.quota and failure.retryable and failure.reason == "rate_limited"


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"Retry-After-Ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 31  # type: ignore[operator]

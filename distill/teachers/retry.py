"""The one retry loop for every hosted teacher call.

The SDKs' own retries are off (`max_retries=0`), so nothing retries twice and every attempt goes
through the pacer. A backend turns each failed attempt into a `ProviderFailure` (status, reason,
`retry-after`, headers); `RetryLoop` decides with tenacity:

    retried       connection errors, timeouts, bodies cut short (not a whole JSON document),
                  408, 409, 429, 5xx and 529, with jittered exponential backoff, or exactly the
                  server's `retry-after-ms` / `retry-after` when it sends one
    never         400, 401, 403, 404, 422 and any other 4xx: the same request fails the same way;
                  and a whole answer that cannot be read (well-formed JSON without the fields of
                  a completion, or no JSON at all): the provider produced and bills it, and the
                  same request would get the same, so it is not bought again up to `max_retries`
                  times; the request fails (`malformed_response`), its row records it, and the
                  next run asks again
    stop at once  an exhausted quota (OpenAI `insufficient_quota`, HTTP 402, Anthropic "credit
                  balance is too low"): `QuotaExhausted` is raised, and every later call on the
                  same loop raises it too without touching the network, so a batch stops

A final failure becomes a `TeacherError` whose `reason` tag (`rate_limited`, `server_error`,
`timeout`, `auth`, ...) and message say what happened; messages never carry the API key.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from distill.errors import QuotaExhausted, TeacherError

log = logging.getLogger("distill.teachers")
T = TypeVar("T")

NEVER_RETRIED = frozenset({400, 401, 403, 404, 422})
RETRIED = frozenset({408, 409, 429, 529})
REASONS = {400: "bad_request", 401: "auth", 403: "forbidden", 404: "not_found", 408: "timeout",
           409: "conflict", 422: "unprocessable", 429: "rate_limited", 529: "overloaded"}
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "credit_balance_too_low"})
QUOTA_PHRASES = ("credit balance is too low", "exceeded your current quota")


@dataclass
class ProviderFailure(Exception):
    """One failed attempt, in provider-neutral terms. Raised by backends, consumed here."""

    reason: str  # short tag: "server_error", "rate_limited", "timeout", "connection", ...
    message: str  # already redacted by the backend
    status: int | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    headers: Mapping[str, str] = field(default_factory=dict)
    quota: bool = False
    final: bool = False  # the backend knows the same request cannot succeed, whatever the status says

    def __str__(self) -> str:
        status = f"HTTP {self.status} " if self.status is not None else ""
        return f"{status}{self.reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        if self.quota or self.final:
            return False
        if self.status is None:
            return True  # connection errors, timeouts, malformed bodies
        return self.status in RETRIED or self.status >= 500


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The server's requested wait: `retry-after-ms`, else `retry-after` (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - (time.time() if now is None else now))


def _error_fields(body: Any) -> tuple[str, str]:
    """(code-ish tags joined, message) from an OpenAI- or Anthropic-shaped error body."""
    if not isinstance(body, Mapping):
        return "", str(body or "")
    inner = body.get("error") if isinstance(body.get("error"), Mapping) else body
    tags = " ".join(str(inner.get(k) or "") for k in ("code", "type"))
    return tags, str(inner.get("message") or "")


def failure_from_status(status: int, headers: Mapping[str, str], body: Any, message: str,
                        redact: Callable[[str], str] = str) -> ProviderFailure:
    """Classify an HTTP error response; `redact` removes the API key from any text kept."""
    tags, body_message = _error_fields(body)
    text = f"{tags} {body_message} {message}".lower()
    quota = status == 402 or any(code in tags for code in QUOTA_CODES) or any(p in text for p in QUOTA_PHRASES)
    reason = "quota_exhausted" if quota else REASONS.get(status, "server_error" if status >= 500 else "client_error")
    return ProviderFailure(reason=reason, message=redact(body_message or message)[:500], status=status,
                           retry_after=retry_after_seconds(headers), headers=dict(headers), quota=quota)


def failure_from_sdk(sdk: Any, exc: BaseException, redact: Callable[[str], str] = str) -> ProviderFailure | None:
    """`exc`, raised by a call through the `openai` or `anthropic` SDK module `sdk` (None: no SDK) or
    by reading its answer, as a ProviderFailure; None for any other exception, which the caller
    lets through. A body that is whole but lacks a completion's fields, or holds a field of the wrong
    type (a token count that is no number), is `malformed_response` and final."""
    if sdk is not None and isinstance(exc, sdk.APIStatusError):
        return failure_from_status(exc.status_code, exc.response.headers, exc.body, exc.message, redact)
    if sdk is not None and isinstance(exc, sdk.APITimeoutError):  # aiohttp reports a dropped connection so too
        return transport_failure("timeout", exc, redact)
    if sdk is not None and isinstance(exc, sdk.APIConnectionError):
        return transport_failure("connection", exc, redact)
    if isinstance(exc, json.JSONDecodeError):  # bytes that are not a whole document: cut short on the way
        return transport_failure("malformed_response", exc, redact)
    unreadable = (ValueError, LookupError, TypeError, AttributeError)
    if isinstance(exc, unreadable + ((sdk.APIResponseValidationError,) if sdk is not None else ())):
        failure = transport_failure("malformed_response", exc, redact)
        return replace(failure, final=True, message=failure.message + "; the answer came back whole, and is "
                       "billed, but cannot be read: not bought again")
    return None


def transport_failure(reason: str, exc: BaseException, redact: Callable[[str], str]) -> ProviderFailure:
    """A failure with no HTTP answer (timeout, refused or dropped connection, unreadable body)."""
    cause = exc.__cause__ or exc.__context__
    text = f"{type(exc).__name__}: {exc}" + (f" ({type(cause).__name__}: {cause})" if cause is not None else "")
    return ProviderFailure(reason, redact(text)[:300])


class _Wait:
    """tenacity wait: the server's retry-after when given, else full-jitter exponential backoff."""

    def __init__(self, base: float, cap: float, rng: random.Random):
        self.base, self.cap, self.rng = base, cap, rng

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, ProviderFailure) and exc.retry_after is not None:
            return exc.retry_after + self.rng.uniform(0, min(0.05 * exc.retry_after, 0.25))
        ceiling = min(self.cap, self.base * 2 ** (state.attempt_number - 1))
        return self.rng.uniform(ceiling / 2, ceiling)


class RetryLoop:
    """Runs one attempt function until it succeeds, fails for good, or retries run out."""

    def __init__(self, label: str, *, max_retries: int, base_delay: float = 0.5, max_delay: float = 30.0,
                 max_retry_after: float = 120.0, sleep: Callable[[float], Awaitable[None]] | None = None,
                 rng: random.Random | None = None):
        self.label = label
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.tripped: QuotaExhausted | None = None
        self._wait = _Wait(base_delay, max_delay, rng or random.Random())
        self._sleep = sleep

    def check(self) -> None:
        """Raise the batch-stopping QuotaExhausted if any call saw one; attempts call this after
        waiting for their pacing slot, just before they touch the network."""
        if self.tripped is not None:
            raise self.tripped

    async def run(self, attempt: Callable[[], Awaitable[T]], *, what: str = "request") -> tuple[T, int]:
        """(result, retries used); raises TeacherError / QuotaExhausted when it cannot succeed."""
        self.check()
        kwargs: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                                 retry=retry_if_exception(self._should_retry), reraise=True,
                                 before_sleep=lambda state: self._log_retry(state, what), **kwargs)
        attempts = 0
        try:
            async for attempt_context in retrying:
                with attempt_context:
                    attempts += 1
                    self.check()
                    result = await attempt()
            return result, attempts - 1
        except ProviderFailure as failure:
            raise self._final(failure, attempts, what) from None

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, ProviderFailure) or not exc.retryable or self.tripped is not None:
            return False
        return exc.retry_after is None or exc.retry_after <= self.max_retry_after

    def _log_retry(self, state: RetryCallState, what: str) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: %s attempt %d failed (%s); retrying in %.2f s",
                    self.label, what, state.attempt_number, exc, wait)

    def _final(self, failure: ProviderFailure, attempts: int, what: str) -> TeacherError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if failure.quota:
            self.tripped = self.tripped or QuotaExhausted(
                f"{self.label}: the provider reports an exhausted quota ({failure}); stopping the batch. "
                "Add credit or raise the spending limit, or pick another teacher with DISTILL_TEACHER",
                reason="quota_exhausted", status=failure.status)
            return self.tripped
        if failure.retryable and failure.retry_after is not None and failure.retry_after > self.max_retry_after:
            hint = f"the server asked to wait {failure.retry_after:.0f} s, longer than {self.max_retry_after:.0f} s"
        elif failure.retryable:
            hint = "retries exhausted; raise DISTILL_TEACHER_MAX_RETRIES or lower the request rate"
        else:
            hint = _HINTS.get(failure.status or 0, "not retryable: the same request would fail again")
        return TeacherError(f"{self.label}: {what} failed after {tries}: {failure}; {hint}",
                            reason=failure.reason, status=failure.status)


_HINTS = {
    401: "not retried: the API key was rejected; check DISTILL_TEACHER_API_KEY",
    403: "not retried: the key lacks permission for this model or endpoint",
    404: "not retried: check the model name in DISTILL_TEACHER and the base URL",
}

"""Pacing: send teacher requests as fast as the provider allows, and no faster.

Three gates stand before every attempt, in this order:

1. a concurrency limit (a semaphore), so a batch of thousands never opens thousands of sockets;
2. a requests-per-minute token bucket and a tokens-per-minute token bucket. The token cost of a
   request is estimated before the call (prompt characters / 4 plus `max_tokens`, the way
   providers reserve it) and corrected from the reported usage afterwards;
3. a cool-down: after a 429 nobody starts until the server's `retry-after` has passed, and the
   request bucket is empty then, so the restart is gradual, not a burst.

The buckets adapt to the provider's headers when present (`x-ratelimit-*` from OpenAI and
compatible servers, `anthropic-ratelimit-*` from Anthropic): a reported limit lower than the
configured one (or the first one seen, when none is configured) becomes the pacing rate, a
reported `remaining` (brought up to date) lowers the bucket when it is clearly below it. A header
that is no finite number ("inf" from a server without limits, "nan") is ignored.

Buckets hold 90% of one second of burst by default: a full minute's worth would let a fresh client
fire a whole minute's quota at once, which providers meter more finely than per minute, and the
10% left over absorbs the lag between our clock and the server's (a request is counted when it
arrives, not when we send it), so a client pacing at exactly the limit does not meet 429s.

`PacedTeacher` is the retry-and-pacing layer the stack (`distill.teachers.stack`) puts over every
hosted backend (a `Wire`): each attempt waits for its slot, is sent once by the backend, reports
the provider's headers and usage to the pacer, and its failures go to the one retry loop
(`distill.teachers.retry`). The backends themselves neither pace, retry nor map errors.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Mapping

from distill.teachers.base import Completion, Reply, Request, Wire
from distill.teachers.retry import ProviderFailure, RetryLoop, failure_from_sdk
from distill.teachers.settings import TeacherSettings

DEFAULT_COOL_DOWN = 1.0  # seconds to pause after a 429 that carries no retry-after
BURST_S = 1.0  # seconds of traffic a full bucket holds...
MARGIN = 0.9  # ...of which we use this fraction


def estimate_tokens(request: Request) -> int:
    """Tokens a request may consume: ~4 characters per prompt token, plus the output budget."""
    chars = sum(len(m.get("content", "")) for m in request.messages)
    schema_chars = len(str(request.response_schema)) if request.response_schema else 0
    return (chars + schema_chars) // 4 + 4 * len(request.messages) + request.max_tokens


class TokenBucket:
    """Continuous refill at `rate` per second up to `capacity`; may go into debt after a correction."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.clock = clock
        self.level = self.capacity
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def delay(self, amount: float) -> float:
        """Seconds until `amount` (at most the capacity) is available; 0 if it is now."""
        self._refill()
        short = min(amount, self.capacity) - self.level
        return 0.0 if short <= 0 else short / self.rate

    def available(self) -> float:
        self._refill()
        return self.level

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def lower_to(self, level: float) -> None:
        self._refill()
        self.level = min(self.level, level)

    def set_rate(self, per_minute: float, burst_s: float) -> None:
        self._refill()
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = min(self.level, self.capacity)


@dataclass(frozen=True)
class RateInfo:
    """What the provider's rate-limit headers said (None where a header was absent)."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None


def _int(text: str | None) -> int | None:
    """A header's number, or None when it is absent or no finite number ("inf", "nan", "1e400"
    and the like say nothing to pace by)."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


def parse_rate_headers(headers: Mapping[str, str]) -> RateInfo:
    """Read `x-ratelimit-*` (OpenAI style) or `anthropic-ratelimit-*` headers."""
    h = {k.lower(): v for k, v in headers.items()}
    if "anthropic-ratelimit-requests-limit" in h or "anthropic-ratelimit-tokens-limit" in h:
        p = "anthropic-ratelimit-"
        return RateInfo(_int(h.get(p + "requests-limit")), _int(h.get(p + "requests-remaining")),
                        _int(h.get(p + "tokens-limit")), _int(h.get(p + "tokens-remaining")))
    p = "x-ratelimit-"
    return RateInfo(_int(h.get(p + "limit-requests")), _int(h.get(p + "remaining-requests")),
                    _int(h.get(p + "limit-tokens")), _int(h.get(p + "remaining-tokens")))


class Slot:
    """One admitted attempt; the backend reports its headers and usage through it."""

    def __init__(self, pacer: "Pacer", estimate: int):
        self.pacer = pacer
        self.estimate = estimate
        self.started = pacer.clock()
        self.sent_mark = pacer.sent  # requests and tokens admitted before this one
        self.tokens_mark = pacer.tokens_sent
        self.charged = False

    def observe(self, headers: Mapping[str, str]) -> None:
        self.pacer.observe(headers, self)

    def charge(self, actual_tokens: int) -> None:
        """Correct the token bucket from the estimate to the usage the provider reported (once)."""
        if not self.charged and self.pacer.tokens is not None:
            self.pacer.tokens.give(self.estimate - actual_tokens)
        self.charged = True


class Pacer:
    """Concurrency limit + RPM/TPM buckets + cool-down, shared by all calls of one backend."""

    def __init__(self, *, concurrency: int, rpm: int | None = None, tpm: int | None = None,
                 burst_s: float = BURST_S * MARGIN, clock: Callable[[], float] = time.monotonic):
        self.burst_s = burst_s
        self.clock = clock
        self.configured_rpm, self.configured_tpm = rpm, tpm
        self.requests = TokenBucket(rpm / 60, rpm / 60 * burst_s, clock) if rpm else None
        self.tokens = TokenBucket(tpm / 60, tpm / 60 * burst_s, clock) if tpm else None
        self.cool_until = 0.0
        self.sent = 0  # attempts admitted so far
        self.tokens_sent = 0  # their estimated tokens
        self.rate_limited = 0  # 429s seen
        self.waited_s = 0.0  # time spent waiting on buckets and cool-downs
        self._slots = asyncio.Semaphore(concurrency)
        self._gate = asyncio.Lock()  # FIFO: the first waiter is admitted first

    @asynccontextmanager
    async def slot(self, estimate: int) -> AsyncIterator[Slot]:
        """Hold a concurrency slot and the bucket budget for one attempt."""
        async with self._slots:
            slot = await self._admit(estimate)
            try:
                yield slot
            except ProviderFailure as failure:
                self.failed(failure, slot)
                slot.charge(0)  # a failed attempt consumed no tokens
                raise
            except BaseException:
                slot.charge(0)
                raise

    async def _admit(self, estimate: int) -> Slot:
        async with self._gate:
            while (wait := self.delay(estimate)) > 0:
                self.waited_s += wait
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(estimate)
            slot = Slot(self, estimate)
            self.sent += 1
            self.tokens_sent += estimate
            return slot

    def delay(self, estimate: int) -> float:
        """Seconds until an attempt of `estimate` tokens may start (0 or less: now)."""
        wait = self.cool_until - self.clock()
        if self.requests is not None:
            wait = max(wait, self.requests.delay(1))
        if self.tokens is not None:
            wait = max(wait, self.tokens.delay(estimate))
        return wait

    def cool_down(self, seconds: float) -> None:
        """Nobody starts for `seconds`, and the request bucket is empty when they are over (it
        goes into debt by what it would refill meanwhile), so the restart is paced, not a burst."""
        self.cool_until = max(self.cool_until, self.clock() + seconds)
        if self.requests is not None:
            self.requests.lower_to(-self.requests.rate * seconds)

    def failed(self, failure: ProviderFailure, slot: Slot | None = None) -> None:
        self.observe(failure.headers, slot)
        if failure.status == 429 and not failure.quota:
            self.rate_limited += 1
            self.cool_down(failure.retry_after if failure.retry_after is not None else DEFAULT_COOL_DOWN)

    def observe(self, headers: Mapping[str, str], slot: Slot | None = None) -> None:
        """Adapt to the provider's rate-limit headers (a no-op when there are none).

        `remaining` describes the server when it received this attempt; it is brought up to
        now (refill since then, minus what was sent since) before it may lower a bucket, and
        only a disagreement of more than one request's worth lowers it: otherwise stale headers
        would keep throwing away the fraction of a request the bucket has refilled.
        """
        info = parse_rate_headers(headers)
        elapsed = self.clock() - slot.started if slot is not None else 0.0
        self.requests = self._adapt(self.requests, self.configured_rpm, info.requests_limit,
                                    info.requests_remaining, elapsed,
                                    self.sent - slot.sent_mark - 1 if slot is not None else 0, 1)
        self.tokens = self._adapt(self.tokens, self.configured_tpm, info.tokens_limit,
                                  info.tokens_remaining, elapsed,
                                  self.tokens_sent - slot.tokens_mark - slot.estimate if slot is not None else 0,
                                  slot.estimate if slot is not None else 1)

    def _adapt(self, bucket: TokenBucket | None, configured: int | None, limit: int | None,
               remaining: int | None, elapsed: float, sent_since: int, tolerance: int) -> TokenBucket | None:
        if limit is not None and limit > 0:
            if bucket is None:
                bucket = TokenBucket(limit / 60, limit / 60 * self.burst_s, self.clock)
            elif limit / 60 < bucket.rate or (configured is None and limit / 60 != bucket.rate):
                bucket.set_rate(limit, self.burst_s)
        if bucket is not None and remaining is not None:
            now_remaining = min(bucket.capacity, remaining + elapsed * bucket.rate) - sent_since
            if now_remaining < bucket.available() - tolerance:
                bucket.lower_to(now_remaining)
        return bucket


class PacedTeacher:
    """The retry-and-pacing layer over a hosted backend: a Teacher made of a `Wire`.

    Every attempt holds a pacer slot, checks that no call has exhausted the quota meanwhile, and
    is sent once by the wire; its headers and usage correct the pacer. An exception from the wire
    (the SDK's, or a body that cannot be read) becomes a `ProviderFailure` here, with the key
    redacted, and the retry loop decides what happens next.
    """

    def __init__(self, wire: Wire, settings: TeacherSettings):
        self.wire = wire
        self.backend, self.model = wire.backend, wire.model
        self.pacer = Pacer(concurrency=settings.concurrency, rpm=settings.rpm, tpm=settings.tpm)
        self.retry = RetryLoop(settings.name, max_retries=settings.max_retries)
        self._redact = settings.redact
        self._sdk: Any = None

    def identity(self) -> Mapping[str, Any]:
        return self.wire.identity()

    async def complete(self, request: Request) -> Completion:
        started = time.monotonic()
        estimate = estimate_tokens(request)
        reply, retries = await self.retry.run(lambda: self._attempt(request, estimate),
                                              what=f"request {request.prompt_id or ''}".strip())
        return replace(reply.completion, retries=retries, latency_s=time.monotonic() - started)

    async def _attempt(self, request: Request, estimate: int) -> Reply:
        async with self.pacer.slot(estimate) as slot:
            self.retry.check()  # a quota ran out while this attempt waited: do not call
            try:
                reply = await self.wire.attempt(request)
            except ProviderFailure:
                raise
            except Exception as exc:
                failure = failure_from_sdk(self._sdk_module(), exc, self._redact)
                if failure is None:
                    raise
                raise failure from None
            slot.observe(reply.headers)
            slot.charge(reply.completion.usage.total_tokens or estimate)
            return reply

    def _sdk_module(self) -> Any:
        if self._sdk is None and self.wire.sdk:
            self._sdk = importlib.import_module(self.wire.sdk)
        return self._sdk

    async def aclose(self) -> None:
        await self.wire.aclose()

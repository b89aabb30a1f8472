"""Pacing: token buckets on a fake clock, the concurrency limit, cool-downs and header adaptation."""

from __future__ import annotations

import asyncio
import time

import pytest

from distill.teachers.base import Request
from distill.teachers.pacing import Pacer, TokenBucket, estimate_tokens, parse_rate_headers
from distill.teachers.retry import ProviderFailure


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_refills_continuously_up_to_its_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=5, clock=clock)
    bucket.take(5)
    assert bucket.delay(1) == pytest.approx(0.1)
    clock.now += 0.3
    assert bucket.available() == pytest.approx(3)
    clock.now += 10
    assert bucket.available() == 5
    bucket.take(8)  # a correction may put it in debt
    assert bucket.delay(1) == pytest.approx(0.4)
    bucket.give(100)
    assert bucket.available() == 5


def test_the_estimate_counts_prompt_characters_and_the_output_budget() -> None:
    request = Request(messages=({"role": "user", "content": "x" * 400},), max_tokens=50)
    assert estimate_tokens(request) == 100 + 4 + 50


def test_openai_and_anthropic_rate_headers_are_read() -> None:
    openai = parse_rate_headers({"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "2999",
                                 "x-ratelimit-limit-tokens": "150000", "x-ratelimit-remaining-tokens": "149000"})
    assert (openai.requests_limit, openai.requests_remaining, openai.tokens_limit, openai.tokens_remaining) == \
        (3000, 2999, 150000, 149000)
    anthropic = parse_rate_headers({"anthropic-ratelimit-requests-limit": "50",
                                    "anthropic-ratelimit-requests-remaining": "49",
                                    "anthropic-ratelimit-tokens-limit": "40000"})
    assert (anthropic.requests_limit, anthropic.requests_remaining, anthropic.tokens_limit) == (50, 49, 40000)
    assert parse_rate_headers({}).requests_limit is None


def test_a_reported_limit_sets_the_pace_when_none_is_configured() -> None:
    pacer = Pacer(concurrency=4)
    assert pacer.requests is None
    pacer.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "60000"})
    assert pacer.requests.rate == 10 and pacer.tokens.rate == 1000  # type: ignore[union-attr]


def test_a_lower_reported_limit_overrides_the_configured_one() -> None:
    pacer = Pacer(concurrency=4, rpm=6000)
    pacer.observe({"x-ratelimit-limit-requests": "600"})
    assert pacer.requests.rate == 10  # type: ignore[union-attr]
    pacer.observe({"x-ratelimit-limit-requests": "60000"})  # a higher one does not raise a configured rate
    assert pacer.requests.rate == 10  # type: ignore[union-attr]


def test_a_much_lower_remaining_lowers_the_bucket() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=4, rpm=6000, clock=clock)  # 100/s, 90 in the bucket
    pacer.observe({"x-ratelimit-remaining-requests": "5"})
    assert pacer.requests.available() == 5  # type: ignore[union-attr]
    pacer.observe({"x-ratelimit-remaining-requests": "80"})  # never raised by a header
    assert pacer.requests.available() == 5  # type: ignore[union-attr]


def test_a_429_cools_everyone_down_for_its_retry_after() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=4, rpm=600, clock=clock)
    pacer.failed(ProviderFailure("rate_limited", "slow down", status=429, retry_after=2.0))
    assert pacer.rate_limited == 1
    assert pacer.delay(1) == pytest.approx(2.0 + 0.1)
    clock.now += 2.0
    assert pacer.delay(1) == pytest.approx(0.1)  # the bucket restarted empty: no burst after the pause


def test_concurrency_is_limited() -> None:
    async def go() -> int:
        pacer = Pacer(concurrency=3)
        active = peak = 0

        async def one() -> None:
            nonlocal active, peak
            async with pacer.slot(10):
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1

        await asyncio.gather(*(one() for _ in range(20)))
        return peak

    assert asyncio.run(go()) == 3


def test_requests_are_admitted_at_the_configured_rate() -> None:
    async def go() -> list[float]:
        pacer = Pacer(concurrency=50, rpm=1200, burst_s=0.05)  # 20/s, a bucket of one
        starts: list[float] = []

        async def one() -> None:
            async with pacer.slot(1):
                starts.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(8)))
        return starts

    starts = asyncio.run(go())
    assert starts[-1] - starts[0] >= 7 / 20 * 0.95


def test_tokens_are_corrected_from_usage() -> None:
    async def go() -> float:
        pacer = Pacer(concurrency=2, tpm=60_000, burst_s=1.0)  # 1000 tokens in the bucket
        async with pacer.slot(900) as slot:  # 900 reserved...
            slot.charge(100)  # ...100 used: 800 come back
        return pacer.tokens.available()  # type: ignore[union-attr]

    assert asyncio.run(go()) == pytest.approx(900, abs=5)


def test_a_failed_attempt_refunds_its_tokens() -> None:
    async def go() -> float:
        pacer = Pacer(concurrency=2, tpm=60_000, burst_s=1.0)
        with pytest.raises(ProviderFailure):
            async with pacer.slot(900):
                raise ProviderFailure("server_error", "boom", status=500)
        return pacer.tokens.available()  # type: ignore[union-attr]

    assert asyncio.run(go()) == pytest.approx(1000, abs=5)


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan", "1e400", "unlimited", ""])
def test_a_rate_header_that_is_no_finite_number_is_ignored(value: str) -> None:
    """Some compatible servers report an unlimited pool as "inf": that says nothing to pace by."""
    headers = {f"x-ratelimit-{name}": value for name in ("limit-requests", "remaining-requests", "limit-tokens",
                                                        "remaining-tokens")}
    unpaced, paced = Pacer(concurrency=4), Pacer(concurrency=4, rpm=600)
    for pacer in (unpaced, paced):
        pacer.observe(headers)
        pacer.failed(ProviderFailure("rate_limited", "slow down", status=429, retry_after=0.0, headers=headers))
    assert unpaced.requests is None and unpaced.tokens is None
    assert paced.requests is not None and paced.requests.rate == 10
    assert parse_rate_headers(headers).requests_limit is None

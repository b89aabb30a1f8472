"""Provider batch APIs, the wire side: the one shape every provider's batch client has.

Why: distillation is not interactive. The providers' batch APIs answer within 24 hours at about
half the price, from a rate-limit pool of their own. A batch client only speaks the protocol: it
turns `Request`s into batch lines, splits them under the per-batch limits, submits them, reads a
batch's status, and reads every row's outcome back by `custom_id`. Deciding what to submit,
persisting batch ids, waiting and filling the cache is the queue's job (`distill.teachers.batch.queue`);
the clients for OpenAI and Anthropic are in `distill.teachers.batch.clients`.

Every row ends as an `Outcome`: succeeded (with the response body), errored, expired or canceled
(with the provider's reason). API calls go through the same retry loop as live calls (`Calls`),
except the call that creates a batch, which is never repeated blindly: when its outcome is unknown
(no answer, a timeout, a 5xx or an unreadable reply, after any of which the batch may exist and be
billed), the next attempt first looks for the batch (`BatchClient.find`) and adopts it; only when
it is not there is the create sent again. If retries run out that way, the error says the outcome
is unknown (reason `batch_submit_unknown`), so the part stays "submitting" and the next run looks
for it again before submitting anything.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

from distill.errors import QuotaExhausted, TeacherError
from distill.teachers.base import Completion, Request
from distill.teachers.retry import ProviderFailure, RetryLoop, failure_from_sdk
from distill.teachers.settings import TeacherSettings

OUTCOMES = ("succeeded", "errored", "expired", "canceled")
TRANSFER_TIMEOUT_S = 600.0  # uploads and downloads of up to 200 MB need longer than one chat call
CLOCK_SKEW_S = 300.0  # a lost batch may look created this long before its part was recorded
FIND_WINDOW_S = 3600.0  # ... and this long after: the create call's retries and upload fit well inside
MAX_LISTED = 10_000  # the most batches `find` reads back through (newest first) before giving up


@dataclass(frozen=True)
class Limits:
    """The most requests and bytes one provider batch may hold."""

    max_requests: int
    max_bytes: int

    def capped(self, max_requests: int | None) -> "Limits":
        """These limits with at most `max_requests` per batch (a user's lower cap)."""
        return replace(self, max_requests=min(self.max_requests, max_requests)) if max_requests else self


@dataclass(frozen=True)
class BatchState:
    """A batch as the provider last described it."""

    id: str
    status: str  # the provider's own word: validating, in_progress, completed, ended, ...
    ended: bool  # nothing more will happen: the results can be read
    counts: Mapping[str, int] = field(default_factory=dict)
    detail: str = ""  # why a whole batch failed (e.g. OpenAI's validation errors)
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One row of an ended batch."""

    custom_id: str
    status: str  # one of OUTCOMES
    body: Mapping[str, Any] | None = None  # the response body of a succeeded row
    reason: str = ""  # why the row did not succeed, in the provider's words


@dataclass(frozen=True)
class LostBatch:
    """What the run's book knows of a batch whose creation was asked for but whose id was never
    recorded (the submitting process died): enough to recognise it among the provider's batches."""

    label: str  # the part's local name (an OpenAI batch carries it in its metadata)
    requests: int  # how many requests the part holds
    since: float  # when the part was recorded, just before the create call (epoch seconds, local clock)
    known_ids: frozenset[str] = frozenset()  # batch ids the book records for other parts: never adopted


class BatchClient(Protocol):
    """What the batch queue (`distill.teachers.batch.queue`) needs from a provider."""

    provider: str
    limits: Limits

    def custom_id(self, key: str) -> str: ...

    def line(self, custom_id: str, request: Request) -> bytes: ...

    async def submit(self, lines: Sequence[bytes], label: str, known_ids: frozenset[str] = frozenset()) -> BatchState:
        """Create a batch of `lines` named `label`; `known_ids` are batches of other parts, never
        adopted when a create whose answer was lost is looked for."""

    async def find(self, lost: LostBatch) -> BatchState | None: ...

    async def retrieve(self, batch_id: str) -> BatchState: ...

    async def results(self, state: BatchState) -> list[Outcome]: ...

    def unanswered(self, state: BatchState) -> Outcome: ...

    def completion(self, body: Mapping[str, Any], request: Request) -> Completion: ...

    async def aclose(self) -> None: ...


def split(lines: Sequence[bytes], limits: Limits) -> tuple[list[list[int]], list[int]]:
    """Indexes of `lines` grouped into batches under `limits`, in order; and the indexes of lines
    that alone exceed the byte limit (they cannot be sent as a batch at all)."""
    groups: list[list[int]] = []
    oversized: list[int] = []
    current: list[int] = []
    size = 0
    for i, line in enumerate(lines):
        if len(line) > limits.max_bytes:
            oversized.append(i)
            continue
        if current and (len(current) >= limits.max_requests or size + len(line) > limits.max_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += len(line)
    if current:
        groups.append(current)
    return groups, oversized


async def listing(calls: "Calls", fn: Callable[[Any], Awaitable[Any]], what: str) -> Any | None:
    """`fn`'s listing through `calls`; None from a compatible server without the listing endpoint."""
    try:
        return await calls(fn, what)
    except TeacherError as exc:
        if exc.status in (404, 405, 501):
            return None
        raise


def outcome_unknown(failure: ProviderFailure) -> bool:
    """Whether a failed create may have created its batch even so: no answer (a dropped connection,
    a timeout), an unreadable reply, a 408 or a 5xx. Other answers (4xx) are refusals."""
    return failure.status is None or failure.status == 408 or failure.status >= 500


def jsonl_line(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class Calls:
    """SDK calls through distill's retry loop, with the SDK's errors turned into ProviderFailures."""

    def __init__(self, settings: TeacherSettings, make_client: Callable[[TeacherSettings], Any], client: Any = None):
        self.sdk_name = settings.backend
        self.retry = RetryLoop(f"{settings.name} batches", max_retries=settings.max_retries)
        self.redact = settings.redact  # the key and any credentials in the base URL
        self._settings = replace(settings, timeout=max(settings.timeout, TRANSFER_TIMEOUT_S))
        self._make_client = make_client
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client(self._settings)
        return self._client

    async def __call__(self, fn: Callable[[Any], Awaitable[Any]], what: str) -> Any:
        result, _ = await self.retry.run(lambda: self._once(fn), what=what)
        return result

    async def create(self, fn: Callable[[Any], Awaitable[BatchState]], what: str,
                     find: Callable[[], Awaitable[BatchState | None]]) -> BatchState:
        """`fn` creates a batch, which the provider bills: it is never sent again blindly. After an
        attempt whose outcome is unknown (`outcome_unknown`), the next one first calls `find` and
        adopts the batch it returns. When retries run out, or the search fails, after such an
        attempt: TeacherError with reason `batch_submit_unknown` (the batch may exist)."""
        unknown: ProviderFailure | None = None

        async def attempt() -> BatchState:
            nonlocal unknown
            if unknown is not None:
                found = await find()
                if found is not None:
                    return found
            try:
                return await self._once(fn)
            except ProviderFailure as failure:
                if not outcome_unknown(failure):
                    raise
                unknown = failure
                raise replace(failure, final=False) from None  # retried, after a look for the batch

        try:
            result, _ = await self.retry.run(attempt, what=what)
        except QuotaExhausted:
            raise
        except TeacherError as exc:
            if unknown is None:
                raise
            raise TeacherError(f"{self.retry.label}: {what} got no clear answer ({unknown}) and the batch was not "
                               f"found afterwards ({exc}); it may exist even so, so it is not sent again blindly: "
                               "the next run looks for it before submitting again",
                               reason="batch_submit_unknown") from None
        return result

    async def _once(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """One attempt of `fn`, the SDK's errors as ProviderFailures."""
        sdk = importlib.import_module(self.sdk_name)
        try:
            return await fn(self.client)
        except Exception as exc:
            failure = failure_from_sdk(sdk, exc, self.redact)
            if failure is None:
                raise
            raise failure from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

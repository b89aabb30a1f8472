"""Provider batch APIs, the wire side: OpenAI Batch and Anthropic Message Batches behind one shape.

Why: distillation is not interactive. The providers' batch APIs answer within 24 hours at about
half the price, from a rate-limit pool of their own. This module only speaks the protocol: it
turns `Request`s into batch lines, splits them under the per-batch limits, submits them, reads a
batch's status, and reads every row's outcome back by `custom_id`. Deciding what to submit,
persisting batch ids, waiting and filling the cache is `distill.batch`'s job.

A batch line carries exactly the body a live call sends for the same request
(`openai_api.chat_arguments`, `anthropic_api.message_arguments`), and a succeeded row is read by
the live backend's own parser (`chat_completion`, `message_completion`), so a batch answer and a
live answer are interchangeable in the cache.

    OpenAI      a JSONL file uploaded through the files API (purpose "batch"), then
                POST /v1/batches for /v1/chat/completions; custom_id = the cache key; when the
                batch ends, its output file (status 200 rows) and error file (other rows, and
                rows that expired or were cancelled) are downloaded. Nothing else is
                OpenAI-specific, so any OpenAI-compatible server that implements /v1/files and
                /v1/batches works by base URL, and the same JSONL is what vLLM's `run-batch`
                reads. At most 50,000 requests and 200 MB per batch.
    Anthropic   POST /v1/messages/batches with the requests inline; results are JSONL from the
                batch's results_url. custom_id = the key's hex digest, since Anthropic allows
                only 64 characters of [A-Za-z0-9_-] and a `v1:` key has a colon and 67.
                At most 100,000 requests and 256 MB per batch.

Every row ends as an `Outcome`: succeeded (with the response body), errored, expired or canceled
(with the provider's reason). API calls go through the same retry loop as live calls, except the
call that creates a batch, which is never repeated blindly: when its outcome is unknown (no
answer, a timeout, a 5xx or an unreadable reply, after any of which the batch may exist and be
billed), the next attempt first looks for the batch (`find`, below) and adopts it; only when it is
not there is the create sent again. If retries run out that way, the error says the outcome is
unknown (reason `batch_submit_unknown`), so the part stays "submitting" and the next run looks
for it again before submitting anything.

Finding a lost batch (`find`): when a run died after the provider created a batch but before its
id was written down, the next run looks for it instead of paying for every request twice. Both
listings are read newest first, page after page, until a batch is older than the part (or
MAX_LISTED were read). OpenAI batches carry the part's name in their metadata. Anthropic message
batches carry no metadata, so one is recognised by its shape: created around the time the part
was recorded, holding exactly the part's number of requests, and not already recorded by another part; when
two or more fit, none is taken (the part is given up and its requests are submitted again).
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

from distill.errors import ConfigError, QuotaExhausted, TeacherError
from distill.teachers.base import Completion, Request
from distill.teachers.pricing import PriceTable
from distill.teachers.retry import ProviderFailure, RetryLoop, failure_from_sdk
from distill.teachers.settings import TeacherSettings

OUTCOMES = ("succeeded", "errored", "expired", "canceled")
COMPLETION_WINDOW = "24h"
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
    """What `distill.batch` needs from a provider."""

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


async def _listing(calls: "_Calls", fn: Callable[[Any], Awaitable[Any]], what: str) -> Any | None:
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


def _jsonl(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class _Calls:
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


# ---------------------------------------------------------------- OpenAI (and compatible servers)

OPENAI_LIMITS = Limits(max_requests=50_000, max_bytes=200_000_000)
OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
OPENAI_ROW_CODES = {"batch_expired": "expired", "batch_cancelled": "canceled", "batch_canceled": "canceled"}


class OpenAIBatches:
    """OpenAI Batch: JSONL upload, /v1/batches, output and error files."""

    provider = "openai"
    endpoint = "/v1/chat/completions"
    page_size = 100  # batches per listing page (the API allows 1 to 100)

    def __init__(self, settings: TeacherSettings, client: Any = None):
        from distill.teachers import openai_api

        self._api = openai_api
        self.model = settings.model
        self.official = openai_api.is_official(settings.base_url)
        self.limits = OPENAI_LIMITS.capped(settings.batch_max_requests)
        self.prices = PriceTable.load(settings.prices_file)
        self.calls = _Calls(settings, openai_api.make_client, client)

    def custom_id(self, key: str) -> str:
        return key

    def line(self, custom_id: str, request: Request) -> bytes:
        body = self._api.chat_arguments(self.model, request, official=self.official)
        return _jsonl({"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body})

    async def submit(self, lines: Sequence[bytes], label: str, known_ids: frozenset[str] = frozenset()) -> BatchState:
        data = b"".join(lines)
        upload = await self.calls(lambda c: c.files.create(file=(f"{label}.jsonl", data, "application/jsonl"),
                                                           purpose="batch"), f"upload of batch {label}")
        lost = LostBatch(label, len(lines), time.time(), known_ids)

        async def create(c: Any) -> BatchState:
            return self._state(await c.batches.create(input_file_id=upload.id, endpoint=self.endpoint,
                                                      completion_window=COMPLETION_WINDOW,
                                                      metadata={"distill_part": label}))

        return await self.calls.create(create, f"creation of batch {label}", lambda: self.find(lost))

    async def find(self, lost: LostBatch) -> BatchState | None:
        """The batch created for `lost` by a run that died before writing its id down: the newest
        batch whose metadata names the part, among those created since CLOCK_SKEW_S before the
        part was recorded (read page after page, newest first, at most MAX_LISTED)."""
        found = await _listing(self.calls, lambda c: self._named(c, lost), "listing of recent batches")
        return self._state(found) if found is not None else None

    async def _named(self, client: Any, lost: LostBatch) -> Any | None:
        earliest = lost.since - CLOCK_SKEW_S
        read = 0
        async for batch in client.batches.list(limit=self.page_size):
            read += 1
            if read > MAX_LISTED or (batch.created_at is not None and batch.created_at < earliest):
                return None  # (a compatible server that gives no creation time is read to the end)
            if (batch.metadata or {}).get("distill_part") == lost.label and batch.id not in lost.known_ids:
                return batch
        return None

    async def retrieve(self, batch_id: str) -> BatchState:
        return self._state(await self.calls(lambda c: c.batches.retrieve(batch_id), f"status of batch {batch_id}"))

    async def results(self, state: BatchState) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for name in ("output_file_id", "error_file_id"):
            file_id = state.raw.get(name)
            if not file_id:
                continue
            content = await self.calls(lambda c, f=file_id: c.files.content(f), f"download of {name} {file_id}")
            for number, text in enumerate(content.text.splitlines(), 1):
                if text.strip():
                    outcomes.append(_openai_outcome(text, f"{file_id}:{number}"))
        return outcomes

    def unanswered(self, state: BatchState) -> Outcome:
        status = {"expired": "expired", "cancelled": "canceled"}.get(state.status, "errored")
        reason = state.detail or f"the batch ended {state.status!r} without a result for this request"
        return Outcome("", status, reason=reason)

    def completion(self, body: Mapping[str, Any], request: Request) -> Completion:
        return self._api.chat_completion(body, self.model, self.prices, batch=True)

    async def aclose(self) -> None:
        await self.calls.aclose()

    @staticmethod
    def _state(batch: Any) -> BatchState:
        raw = batch.to_dict()
        errors = (raw.get("errors") or {}).get("data") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
                           for e in errors)
        status = str(raw.get("status"))
        return BatchState(id=str(raw["id"]), status=status, ended=status in OPENAI_ENDED,
                          counts=dict(raw.get("request_counts") or {}), detail=detail, raw=raw)


def _openai_outcome(text: str, where: str) -> Outcome:
    """One line of an output or error file."""
    try:
        row = json.loads(text)
        custom_id = str(row["custom_id"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return Outcome("", "errored", reason=f"{where}: unreadable result line")
    error, response = row.get("error"), row.get("response") or {}
    if error:
        code = str(error.get("code") or "error")
        return Outcome(custom_id, OPENAI_ROW_CODES.get(code, "errored"), reason=f"{code}: {error.get('message', '')}")
    body, status = response.get("body"), response.get("status_code")
    if status == 200 and isinstance(body, dict) and body.get("choices"):
        return Outcome(custom_id, "succeeded", body=body)
    message = ((body or {}).get("error") or {}).get("message", "") if isinstance(body, dict) else str(body)
    return Outcome(custom_id, "errored", reason=f"HTTP {status}: {message}".strip())


# ---------------------------------------------------------------- Anthropic

ANTHROPIC_LIMITS = Limits(max_requests=100_000, max_bytes=256_000_000)


class AnthropicBatches:
    """Anthropic Message Batches: requests inline, results as JSONL."""

    provider = "anthropic"
    page_size = 100  # batches per listing page (the API allows 1 to 1000)

    def __init__(self, settings: TeacherSettings, client: Any = None):
        from distill.teachers import anthropic_api

        self._api = anthropic_api
        self.model = settings.model
        self.limits = ANTHROPIC_LIMITS.capped(settings.batch_max_requests)
        self.prices = PriceTable.load(settings.prices_file)
        self.calls = _Calls(settings, anthropic_api.make_client, client)

    def custom_id(self, key: str) -> str:
        return key.split(":", 1)[-1]

    def line(self, custom_id: str, request: Request) -> bytes:
        params, _ = self._api.message_arguments(self.model, request)
        return _jsonl({"custom_id": custom_id, "params": params})

    async def submit(self, lines: Sequence[bytes], label: str, known_ids: frozenset[str] = frozenset()) -> BatchState:
        requests = [json.loads(line) for line in lines]
        lost = LostBatch(label, len(lines), time.time(), known_ids)

        async def create(c: Any) -> BatchState:
            return self._state(await c.messages.batches.create(requests=requests))

        return await self.calls.create(create, f"creation of batch {label}", lambda: self.find(lost))

    async def find(self, lost: LostBatch) -> BatchState | None:
        """The batch created for `lost` by a run that died before writing its id down.

        Message batches carry no metadata, so the batch is recognised by its shape: created from
        CLOCK_SKEW_S before the part was recorded to FIND_WINDOW_S after it, holding exactly
        `lost.requests` requests, and not in `lost.known_ids`. Only a unique fit is adopted; with
        two or more there is no telling which is the part's, so None (the part is given up and
        its requests submitted again, as without this search).

        Adopting another client's batch by mistake (same size, same minutes, same account) costs
        a wait, never a wrong answer: results are joined back by custom_id (the cache key's
        digest), lines with a custom_id the part does not hold are ignored, and a request with
        no result counts as unanswered, so the next run or `distill batch retry` submits it again.
        """
        candidates = await _listing(self.calls, lambda c: self._candidates(c, lost),
                                    "listing of recent message batches")
        return self._state(candidates[0]) if candidates is not None and len(candidates) == 1 else None

    async def _candidates(self, client: Any, lost: LostBatch) -> list[Any]:
        """The listed batches that fit `lost`, reading newest first until one is older than the
        window (or MAX_LISTED were read: then none, rather than a guess from part of the list)."""
        earliest, latest = lost.since - CLOCK_SKEW_S, lost.since + FIND_WINDOW_S
        fits: list[Any] = []
        read = 0
        async for batch in client.messages.batches.list(limit=self.page_size):
            created = _epoch(batch.created_at)
            if created < earliest:
                return fits
            read += 1
            if read > MAX_LISTED:
                return []
            if created <= latest and batch.id not in lost.known_ids and _requests_in(batch) == lost.requests:
                fits.append(batch)
        return fits

    async def retrieve(self, batch_id: str) -> BatchState:
        return self._state(await self.calls(lambda c: c.messages.batches.retrieve(batch_id),
                                            f"status of batch {batch_id}"))

    async def results(self, state: BatchState) -> list[Outcome]:
        async def read(client: Any) -> list[dict[str, Any]]:
            decoder = await client.messages.batches.results(state.id)
            return [item.to_dict() async for item in decoder]

        return [_anthropic_outcome(row) for row in await self.calls(read, f"results of batch {state.id}")]

    def unanswered(self, state: BatchState) -> Outcome:
        return Outcome("", "errored", reason="the batch ended without a result for this request")

    def completion(self, body: Mapping[str, Any], request: Request) -> Completion:
        _, wrapped = self._api.message_arguments(self.model, request)
        return self._api.message_completion(body, request, wrapped, self.model, self.prices, batch=True)

    async def aclose(self) -> None:
        await self.calls.aclose()

    @staticmethod
    def _state(batch: Any) -> BatchState:
        raw = batch.to_dict()
        status = str(raw.get("processing_status"))
        return BatchState(id=str(raw["id"]), status=status, ended=status == "ended",
                          counts=dict(raw.get("request_counts") or {}), raw=raw)


def _requests_in(batch: Any) -> int:
    """How many requests a message batch holds: the sum of its counts, whatever its progress."""
    counts = batch.request_counts
    return counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired


def _epoch(moment: datetime) -> float:
    """A provider timestamp in epoch seconds (UTC when it names no zone)."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)).timestamp()


def _anthropic_outcome(row: Mapping[str, Any]) -> Outcome:
    custom_id, result = str(row.get("custom_id")), row.get("result") or {}
    kind = str(result.get("type"))
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        return Outcome(custom_id, "succeeded", body=result["message"])
    if kind in ("expired", "canceled"):
        return Outcome(custom_id, kind, reason=f"the request {kind} before it was processed")
    error = (result.get("error") or {}).get("error") or result.get("error") or {}
    return Outcome(custom_id, "errored", reason=f"{error.get('type', kind)}: {error.get('message', '')}".strip())


# ---------------------------------------------------------------- choosing a client

CLIENTS: dict[str, Callable[[TeacherSettings], BatchClient]] = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}


def batch_client(settings: TeacherSettings) -> BatchClient:
    """The batch client for the configured teacher; ConfigError for backends without a batch API."""
    from distill.teachers.registry import require_key

    make = CLIENTS.get(settings.backend)
    if make is None:
        raise ConfigError(f"batch mode (--batch / DISTILL_TEACHER_BATCH=1): the teacher {settings.name} has no "
                          f"batch API; it works with openai (and OpenAI-compatible servers that implement "
                          f"/v1/files and /v1/batches) and anthropic. Run without --batch")
    require_key(settings)
    return make(settings)

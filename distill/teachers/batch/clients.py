"""The provider batch clients: OpenAI Batch and Anthropic Message Batches, in the shape of
`distill.teachers.batch.wire.BatchClient`.

A backend declares its batch client in its `BackendSpec` (`batch=`), so a third-party backend can
offer batch mode too; `distill.teachers.registry.batch_client(settings)` builds the configured
backend's. The backend hands its client its own wire: `body(request)`, exactly the body a live
call sends for the same request (`openai_api.chat_arguments`, `anthropic_api.message_arguments`),
and `read(body, request)`, the live call's own parser (`chat_completion`, `message_completion`),
so a batch answer and a live answer are interchangeable in the cache.

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

Finding a lost batch (`find`): when a run died after the provider created a batch but before its
id was written down, the next run looks for it instead of paying for every request twice. Both
listings are read newest first, page after page, until a batch is older than the part (or
MAX_LISTED were read). OpenAI batches carry the part's name in their metadata. Anthropic message
batches carry no metadata, so one is recognised by its shape: created around the time the part
was recorded, holding exactly the part's number of requests, and not already recorded by another part; when
two or more fit, none is taken (the part is given up and its requests are submitted again).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from distill.teachers.base import Completion, Request
from distill.teachers.batch.wire import (CLOCK_SKEW_S, FIND_WINDOW_S, MAX_LISTED, BatchState, Calls, Limits, LostBatch,
                                         Outcome, jsonl_line, listing)
from distill.teachers.settings import TeacherSettings

COMPLETION_WINDOW = "24h"
Body = Callable[[Request], Mapping[str, Any]]  # a request as the live call's body
Read = Callable[[Mapping[str, Any], Request], Completion]  # a response body as a Completion

# ---------------------------------------------------------------- OpenAI (and compatible servers)

OPENAI_LIMITS = Limits(max_requests=50_000, max_bytes=200_000_000)
OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
OPENAI_ROW_CODES = {"batch_expired": "expired", "batch_cancelled": "canceled", "batch_canceled": "canceled"}


class _ProviderBatches:
    """What every provider's batch client holds: its limits (capped by the settings), the SDK calls,
    and the backend's own request body and reply reader, so the batch wire matches the live one."""

    provider_limits: Limits

    def __init__(self, settings: TeacherSettings, make_client: Callable[[TeacherSettings], Any], *, body: Body,
                 read: Read, client: Any = None):
        self.limits = self.provider_limits.capped(settings.batch_max_requests)
        self.calls = Calls(settings, make_client, client)
        self._body, self._read = body, read


class OpenAIBatches(_ProviderBatches):
    """OpenAI Batch: JSONL upload, /v1/batches, output and error files."""

    provider = "openai"
    provider_limits = OPENAI_LIMITS
    endpoint = "/v1/chat/completions"
    page_size = 100  # batches per listing page (the API allows 1 to 100)

    def custom_id(self, key: str) -> str:
        return key

    def line(self, custom_id: str, request: Request) -> bytes:
        return jsonl_line({"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": self._body(request)})

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
        found = await listing(self.calls, lambda c: self._named(c, lost), "listing of recent batches")
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
        return self._read(body, request)

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


class AnthropicBatches(_ProviderBatches):
    """Anthropic Message Batches: requests inline, results as JSONL."""

    provider = "anthropic"
    provider_limits = ANTHROPIC_LIMITS
    page_size = 100  # batches per listing page (the API allows 1 to 1000)

    def custom_id(self, key: str) -> str:
        return key.split(":", 1)[-1]

    def line(self, custom_id: str, request: Request) -> bytes:
        return jsonl_line({"custom_id": custom_id, "params": self._body(request)})

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
        candidates = await listing(self.calls, lambda c: self._candidates(c, lost),
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
        return self._read(body, request)

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

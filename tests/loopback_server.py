"""A real HTTP server on 127.0.0.1 that speaks the OpenAI and Anthropic wire formats, for tests.

The official SDKs talk to it exactly as they talk to the providers, so tests exercise the real
clients, transports, error mapping and our retry and pacing code, with no mocks. It serves

    POST /v1/chat/completions    OpenAI chat completions (any OpenAI-compatible client)
    GET  /v1/models              the models served (`serve_models`), as a student server lists them
    POST /v1/completions         legacy completions, scripted by `completions_script` (token scoring:
                                 echo + logprobs on token ids, as vLLM answers it); 404 unless scripted
    POST /v1/messages            Anthropic messages
    POST /v1/files, GET /v1/files/{id}[/content]         OpenAI files (batch input and output)
    POST /v1/batches, GET /v1/batches[/{id}]              OpenAI Batch (chat completions)
    POST /v1/messages/batches, GET .../{id}[/results]    Anthropic Message Batches
    GET  /v1/messages/batches                             their listing (newest first, paged)
    GET  /_loopback/stats        counters as JSON, for a server running in another process

and runs aiohttp in a background thread on an ephemeral port, so sync and async tests alike can
use it. What tests control:

- the reply: `script(fn)` with `fn(LoopbackRequest) -> str | Reply | Fault`; the default echoes
  the last user message, or for a JSON schema returns a minimal instance of it;
- faults, queued for the next requests: `fail_next(503)`, `fail_next(429, retry_after=0.2)`,
  `fail_next("insufficient_quota")`, `fail_next("timeout", delay=5)`, `fail_next("malformed")` (a 200
  whose body is cut short), `fail_next("unreadable")` (a 200 with well-formed JSON that holds no answer),
  `fail_next("bad_usage")` (a whole answer with a token count that is no number),
  `fail_next("drop")` (connection closed without an answer), `fail_next("slow", delay=0.3)`;
  or at random: `chaos(0.2, [500, 503, "drop"], seed=1)`;
- limits: `LoopbackServer(rpm=3000, tpm=...)` enforces token buckets (`burst_s` seconds of
  burst) and answers 429 with `retry-after-ms` / `retry-after`, plus `x-ratelimit-*` or
  `anthropic-ratelimit-*` headers on every answer;
- latency: `latency_s` added before every answer;
- as a student server (`--engine server`): `serve_models([...])` sets the entries `GET /v1/models`
  lists, with or without `distill serve`'s `distill_weights_sha256` / `distill_adapter_sha256`
  fields (default: one model, `loopback`); `within_max_tokens(text, request)` is a scripted reply
  cut at the request's max_tokens (one token per word), with finish_reason `length` when cut;
- provider batches: a batch moves validating -> in_progress -> ended over `batch_polls` status
  checks (`LoopbackServer(batch_polls=2)`); its rows are answered by the same responder as live
  calls, then written out of order (`shuffle_results`). `batch_script(fn)` with
  `fn(LoopbackRequest) -> "succeeded" | "errored" | "expired" | "canceled" | None` decides each
  row's outcome; `batch_rows` lists every row ever submitted. Faults queued for the batch
  endpoints (`endpoint="openai_files"`, `"openai_batches"`, `"anthropic_batches"`) answer with
  their status, an unreadable 200 ("malformed"), or drop the connection; with `after=True` the
  request is carried out first (a batch created, say) and only its answer is lost that way.

Every request is recorded (`requests`, `count(...)`), including the status it was answered with.
Run it standalone for benchmarks: `python tests/loopback_server.py --rpm 3000 --latency-ms 50`
prints its URL and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from aiohttp import web

OPENAI, ANTHROPIC = "openai", "anthropic"
OPENAI_FILES, OPENAI_BATCHES, ANTHROPIC_BATCHES = "openai_files", "openai_batches", "anthropic_batches"
BATCH_OUTCOMES = ("succeeded", "errored", "expired", "canceled")
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
STATUS_FAULTS = {400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 529}
NAMED_FAULTS = {"bad_usage", "insufficient_quota", "timeout", "slow", "malformed", "unreadable", "drop"}


@dataclass(frozen=True)
class LoopbackRequest:
    """One request as the responder sees it, in provider-neutral form."""

    endpoint: str  # "openai" or "anthropic"
    index: int  # 0-based arrival order across the server
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    messages: list[dict[str, str]]  # the Anthropic system prompt comes first, as role "system"
    schema: Mapping[str, Any] | None  # response_format json_schema (or json_object's schema), or the forced tool's
    max_tokens: int

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def prompt(self) -> str:
        """The last user message."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass(frozen=True)
class Reply:
    """A scripted answer; token counts default to characters / 4."""

    text: str
    finish_reason: str = "stop"  # "stop" or "length"
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class Fault:
    """A fault to answer with: an HTTP status, or "insufficient_quota", "timeout" (wait `delay`,
    then 504), "slow" (wait `delay`, then answer), "malformed" or "drop". A responder may return
    one to fail a particular request."""

    kind: str | int
    retry_after: float | None = None  # sent as retry-after and retry-after-ms
    delay: float = 5.0
    endpoint: str | None = None  # only requests to this endpoint, for queued faults
    body: Mapping[str, Any] | None = None  # a custom error body
    after: bool = False  # batch endpoints: carry the request out, then answer with the fault


@dataclass
class Seen:
    """What the server received and how it answered."""

    endpoint: str
    index: int
    body: dict[str, Any]
    headers: dict[str, str]  # names lower-cased
    received: float  # time.monotonic()
    status: int | None = None  # None while in flight, or for a dropped connection
    fault: str | None = None
    late: tuple[Fault, Any] | None = None  # a fault (and its request) for after the work is done


@dataclass
class BatchRow:
    """One request submitted inside a provider batch."""

    endpoint: str  # "openai" or "anthropic": whose wire format the row speaks
    batch_id: str
    custom_id: str
    body: dict[str, Any]


@dataclass
class _Batch:
    """A provider batch moving through its states, one step per status check."""

    id: str
    endpoint: str  # "openai" or "anthropic"
    rows: list[BatchRow]
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    input_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation errors: the batch fails
    polls: int = 0
    status: str = ""
    ended_at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)  # result lines, out of order
    outcomes: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.updated = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self, amount: float) -> float:
        """0 when taken, else seconds until `amount` would be available."""
        self.refill()
        if self.level >= min(amount, self.capacity):
            self.level -= amount
            return 0.0
        return (min(amount, self.capacity) - self.level) / self.rate

    def reset_in(self) -> float:
        return (self.capacity - self.level) / self.rate


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def minimal_instance(schema: Any) -> Any:
    """The smallest value that satisfies a (simple) JSON schema: for default scripted replies."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: minimal_instance(props.get(k, {})) for k in schema.get("required", list(props))}
    if kind == "array":
        return [minimal_instance(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return True
    return None


def within_max_tokens(text: str, request: LoopbackRequest) -> Reply:
    """`text` as a student server would answer it under the request's max_tokens, counting one
    token per word: whole, finish_reason "stop"; or its first max_tokens words, "length"."""
    words = text.split()
    if len(words) > request.max_tokens:
        return Reply(" ".join(words[:request.max_tokens]), "length", output_tokens=request.max_tokens)
    return Reply(text, "stop", output_tokens=len(words))


def default_responder(request: LoopbackRequest) -> str:
    if request.schema is not None:
        return json.dumps(minimal_instance(request.schema))
    return f"echo: {request.prompt}"


class LoopbackServer:
    """The server. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, *, rpm: float | None = None, tpm: float | None = None, burst_s: float = 1.0,
                 latency_s: float = 0.0, responder: Callable[[LoopbackRequest], str | Reply] | None = None,
                 rate_headers: bool = True, batch_polls: int = 2, shuffle_results: bool = True, seed: int = 0):
        self.latency_s = latency_s
        self.batch_polls = batch_polls  # status checks until a batch ends (0 or 1: the first check)
        self.shuffle_results = shuffle_results
        self._batch_outcome: Callable[[LoopbackRequest], str | None] = lambda view: None
        self._completions: Callable[[dict[str, Any]], dict[str, Any] | int | None] = lambda body: None
        self.completions_bodies: list[dict[str, Any]] = []
        self._rng = random.Random(seed)
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._batches: dict[str, _Batch] = {}
        self._rows: list[BatchRow] = []
        self._row_counter = 0
        self.rate_headers = rate_headers
        self._responder = responder or default_responder
        self._models: list[dict[str, Any]] = [{"id": "loopback", "object": "model", "owned_by": "loopback"}]
        self._faults: deque[Fault] = deque()
        self._chaos: tuple[float, list[Fault], random.Random] | None = None
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.set_limits(rpm=rpm, tpm=tpm, burst_s=burst_s)

    # ------------------------------------------------------------ control (any thread)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """Base URL for the OpenAI SDK (it appends /chat/completions)."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """Base URL for the Anthropic SDK (it appends /v1/messages)."""
        return self.url

    def script(self, responder: Callable[[LoopbackRequest], str | Reply]) -> None:
        """Decide the reply to every following request."""
        self._responder = responder

    def serve_models(self, entries: list[dict[str, Any]]) -> None:
        """The entries `GET /v1/models` lists from now on (each needs an "id"; extra fields are sent as given)."""
        with self._lock:
            self._models = [{"object": "model", "owned_by": "loopback", "created": 0, **e} for e in entries]

    def completions_script(self, reply: Callable[[dict[str, Any]], dict[str, Any] | int | None]) -> None:
        """Answer POST /v1/completions with `reply(body)` as JSON (None: 404, as a server without it; an
        int: that HTTP error status)."""
        self._completions = reply

    def batch_script(self, outcome: Callable[[LoopbackRequest], str | None]) -> None:
        """Decide each batch row's outcome: "succeeded" (or None), "errored", "expired", "canceled"."""
        self._batch_outcome = outcome

    @property
    def batch_rows(self) -> list[BatchRow]:
        """Every row of every batch submitted so far, in submission order."""
        with self._lock:
            return list(self._rows)

    def batches(self) -> list[dict[str, Any]]:
        """Every batch as {id, endpoint, status, requests, polls}."""
        with self._lock:
            return [{"id": b.id, "endpoint": b.endpoint, "status": b.status, "requests": len(b.rows), "polls": b.polls}
                    for b in self._batches.values()]

    def fail_next(self, kind: str | int, times: int = 1, *, retry_after: float | None = None,
                  delay: float = 5.0, endpoint: str | None = None, body: Mapping[str, Any] | None = None,
                  after: bool = False) -> None:
        """Answer the next `times` requests (of `endpoint`, if given) with a fault instead. With
        `after` (batch endpoints only), each request is carried out first and then answered so."""
        if kind not in STATUS_FAULTS and kind not in NAMED_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; use one of {sorted(map(str, STATUS_FAULTS | NAMED_FAULTS))}")
        with self._lock:
            self._faults.extend(Fault(kind, retry_after, delay, endpoint, body, after) for _ in range(times))

    def chaos(self, probability: float, kinds: list[str | int | Fault], *, seed: int = 0) -> None:
        """From now on, answer each request with a random fault from `kinds` with `probability`."""
        self._chaos = (probability, [k if isinstance(k, Fault) else Fault(k) for k in kinds], random.Random(seed))

    def set_limits(self, *, rpm: float | None = None, tpm: float | None = None, burst_s: float = 1.0) -> None:
        with self._lock:
            self.rpm, self.tpm = rpm, tpm
            self._requests = _Bucket(rpm, burst_s) if rpm else None
            self._tokens = _Bucket(tpm, burst_s) if tpm else None

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def count(self, endpoint: str | None = None, *, status: int | None = None) -> int:
        """Requests received (for `endpoint`, answered with `status`, if given)."""
        return sum(1 for s in self.requests if (endpoint is None or s.endpoint == endpoint)
                   and (status is None or s.status == status))

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self._rows.clear()
            self._faults.clear()
            self._chaos = None

    def stats(self) -> dict[str, Any]:
        seen = self.requests
        by_status: dict[str, int] = {}
        for s in seen:
            by_status[str(s.status)] = by_status.get(str(s.status), 0) + 1
        return {"requests": len(seen), "by_status": by_status, "batches": len(self._batches),
                "batch_rows": len(self.batch_rows)}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "LoopbackServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="loopback-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("loopback server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._thread = self._runner = None

    async def _shutdown(self) -> None:
        """Close the listener and cancel handlers still sleeping (slow and timeout faults)."""
        await self._runner.cleanup()  # type: ignore[union-attr]
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/completions", self._legacy_completions)
        app.router.add_post("/v1/files", self._upload_file)
        app.router.add_get("/v1/files/{file_id}", self._file_object)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_openai_batch)
        app.router.add_get("/v1/batches", self._list_openai_batches)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve_openai_batch)
        app.router.add_post("/v1/messages/batches", self._create_anthropic_batch)
        app.router.add_get("/v1/messages/batches", self._list_anthropic_batches)
        app.router.add_get("/v1/messages/batches/{batch_id}", self._retrieve_anthropic_batch)
        app.router.add_get("/v1/messages/batches/{batch_id}/results", self._anthropic_batch_results)
        app.router.add_get("/_loopback/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096, reuse_address=True, shutdown_timeout=0.5)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    # ------------------------------------------------------------ handlers (server thread)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _list_models(self, request: web.Request) -> web.Response:
        with self._lock:
            seen = Seen("models", len(self._seen), {}, {k.lower(): v for k, v in request.headers.items()},
                        time.monotonic(), status=200)
            self._seen.append(seen)
            return web.json_response({"object": "list", "data": list(self._models)})

    async def _legacy_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self._lock:
            self.completions_bodies.append(body)
        reply = self._completions(body)
        if reply is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        if isinstance(reply, int):  # an HTTP error status: a rate limit, a bad key, an outage
            return web.json_response({"error": {"message": f"scripted status {reply}"}}, status=reply)
        return web.json_response(reply)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, OPENAI)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, ANTHROPIC)

    async def _handle(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {}
        seen, fault = self._record(request, endpoint, body)
        view = _view(endpoint, seen.index, body, seen.headers)
        reply = self._responder(view) if fault is None else None
        if isinstance(reply, Fault):
            fault = reply
        if fault is not None:
            seen.fault = str(fault.kind)
            response = await self._fault(request, endpoint, fault, view)
        else:
            response = await self._answer(endpoint, view, reply)
        seen.status = response.status if response is not None else None
        return response if response is not None else web.Response(status=499)  # never sent: dropped

    def _record(self, request: web.Request, endpoint: str, body: dict[str, Any]) -> tuple[Seen, Fault | None]:
        """Log a request, and take the fault queued (or drawn by chaos) for its endpoint, if any."""
        with self._lock:
            seen = Seen(endpoint, len(self._seen), body, {k.lower(): v for k, v in request.headers.items()},
                        time.monotonic())
            self._seen.append(seen)
            return seen, self._take_fault(endpoint)

    @staticmethod
    def _drop(request: web.Request) -> None:
        """Close the connection without answering."""
        request.protocol.force_close()
        if request.transport is not None:
            request.transport.abort()

    def _take_fault(self, endpoint: str) -> Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.endpoint in (None, endpoint):
                del self._faults[i]
                return fault
        if self._chaos is not None:
            probability, kinds, rng = self._chaos
            if rng.random() < probability:
                return rng.choice(kinds)
        return None

    async def _answer(self, endpoint: str, view: LoopbackRequest, reply: Any = None) -> web.Response:
        reply = self._responder(view) if reply is None else reply
        reply, input_tokens, output_tokens = _tokens(view, reply)
        with self._lock:
            wait, which = self._admit(input_tokens + output_tokens)
            headers = self._rate_headers(endpoint)
        if wait > 0:
            return self._rate_limited(endpoint, wait, which, headers)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        payload = (_openai_body if endpoint == OPENAI else _anthropic_body)(view, reply, input_tokens, output_tokens)
        return web.json_response(payload, headers=headers)

    def _admit(self, tokens: int) -> tuple[float, str]:
        if self._requests is not None:
            self._requests.refill()
            if self._requests.level < 1:
                return (1 - self._requests.level) / self._requests.rate, "requests"
        if self._tokens is not None:
            wait = self._tokens.try_take(tokens)
            if wait > 0:
                return wait, "tokens"
        if self._requests is not None:
            self._requests.try_take(1)
        return 0.0, ""

    def _rate_headers(self, endpoint: str) -> dict[str, str]:
        if not self.rate_headers:
            return {}
        headers: dict[str, str] = {}
        for name, bucket, limit in (("requests", self._requests, self.rpm), ("tokens", self._tokens, self.tpm)):
            if bucket is None:
                continue
            bucket.refill()
            remaining, reset = max(0, int(bucket.level)), bucket.reset_in()
            if endpoint == OPENAI:
                headers[f"x-ratelimit-limit-{name}"] = str(int(limit))
                headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
                headers[f"x-ratelimit-reset-{name}"] = f"{reset * 1000:.0f}ms"
            else:
                at = datetime.now(timezone.utc) + timedelta(seconds=reset)
                headers[f"anthropic-ratelimit-{name}-limit"] = str(int(limit))
                headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
                headers[f"anthropic-ratelimit-{name}-reset"] = at.isoformat().replace("+00:00", "Z")
        return headers

    def _rate_limited(self, endpoint: str, wait: float, which: str,
                      headers: dict[str, str]) -> web.Response:
        headers = dict(headers, **{"retry-after": str(max(1, math.ceil(wait)))})
        if endpoint == OPENAI:
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        message = f"Rate limit reached for {which}; try again in {wait * 1000:.0f}ms"
        return _error(endpoint, 429, "rate_limit_exceeded" if endpoint == OPENAI else "rate_limit_error",
                      message, headers)

    async def _fault(self, request: web.Request, endpoint: str, fault: Fault,
                     view: LoopbackRequest) -> web.Response | None:
        kind = fault.kind
        if kind == "drop":
            self._drop(request)
            return None
        if kind in ("timeout", "slow"):
            await asyncio.sleep(fault.delay)
            if kind == "timeout":
                return _error(endpoint, 504, "timeout", "the upstream timed out")
            return await self._answer(endpoint, view)
        if kind == "malformed":
            return web.Response(status=200, text='{"id": "chatcmpl-broken", "choices": [', content_type="application/json")
        if kind == "unreadable":  # an answer came back, complete, but without what a completion holds
            empty = {"id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "model": view.model,
                     "choices": []} if endpoint == OPENAI else \
                {"id": "msg_empty", "type": "message", "role": "assistant", "model": view.model, "content": None}
            return web.json_response(empty)
        if kind == "bad_usage":  # a whole answer, but a field of the wrong type: a token count that is no number
            payload = (_openai_body if endpoint == OPENAI else _anthropic_body)(view, Reply("fine"), 1, 1)
            payload["usage"]["prompt_tokens" if endpoint == OPENAI else "cache_read_input_tokens"] = "many"
            return web.json_response(payload)
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(fault.retry_after)))
            headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
        if kind == "insufficient_quota":
            if endpoint == ANTHROPIC:
                return _error(endpoint, 400, "invalid_request_error",
                              "Your credit balance is too low to access the Anthropic API.", headers)
            return _error(endpoint, 429, "insufficient_quota",
                          "You exceeded your current quota, please check your plan and billing details.", headers)
        status = int(kind)
        if fault.body is not None:
            return web.json_response(dict(fault.body), status=status, headers=headers)
        return _error(endpoint, status, _ERROR_TYPES.get(status, "api_error"), f"injected fault {status}", headers)


    # ------------------------------------------------------------ provider batches (server thread)

    async def _batch_call(self, request: web.Request, endpoint: str,
                          body: Mapping[str, Any] | None = None) -> tuple[Seen, web.Response | None]:
        """Record a batch-API request; a queued fault for `endpoint` answers it instead (or drops it),
        or, queued with `after`, is kept for `_reply` to answer with once the request is carried out."""
        seen, fault = self._record(request, endpoint, dict(body or {}))
        if fault is None:
            return seen, None
        seen.fault = str(fault.kind)
        if fault.after:
            seen.late = (fault, request)
            return seen, None
        return seen, self._batch_fault(seen, request, endpoint, fault)

    def _batch_fault(self, seen: Seen, request: web.Request, endpoint: str, fault: Fault) -> web.Response:
        wire = ANTHROPIC if endpoint in (ANTHROPIC_BATCHES, ANTHROPIC) else OPENAI
        if fault.kind == "drop":
            self._drop(request)
            seen.status = None
            return web.Response(status=499)
        if fault.kind == "malformed":
            seen.status = 200
            return web.Response(status=200, text='{"id": "batch_broken", "status": ', content_type="application/json")
        status = int(fault.kind) if isinstance(fault.kind, int) else 500
        seen.status = status
        return _error(wire, status, _ERROR_TYPES.get(status, "api_error"), f"injected fault {status}")

    def _reply(self, seen: Seen, payload: Any, status: int = 200) -> web.Response:
        if seen.late is not None:  # the work is done; its answer is lost
            fault, request = seen.late
            return self._batch_fault(seen, request, seen.endpoint, fault)
        seen.status = status
        return web.json_response(payload, status=status)

    async def _upload_file(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose", ""))
        data = upload.file.read() if hasattr(upload, "file") else str(upload or "").encode()
        name = getattr(upload, "filename", "upload.jsonl")
        seen, failed = await self._batch_call(request, OPENAI_FILES, {"filename": name, "purpose": purpose})
        if failed is not None:
            return failed
        with self._lock:
            obj = {"id": f"file-{len(self._files) + 1}", "object": "file", "bytes": len(data),
                   "created_at": int(time.time()), "filename": name, "purpose": purpose, "status": "processed"}
            self._files[obj["id"]] = (obj, data)
        return self._reply(seen, obj)

    async def _file_object(self, request: web.Request) -> web.Response:
        seen, failed = await self._batch_call(request, OPENAI_FILES)
        found = self._files.get(request.match_info["file_id"])
        if failed is not None or found is None:
            return failed or _error(OPENAI, 404, "not_found_error", "no such file")
        return self._reply(seen, found[0])

    async def _file_content(self, request: web.Request) -> web.Response:
        seen, failed = await self._batch_call(request, OPENAI_FILES)
        found = self._files.get(request.match_info["file_id"])
        if failed is not None or found is None:
            return failed or _error(OPENAI, 404, "not_found_error", "no such file")
        seen.status = 200
        return web.Response(body=found[1], content_type="application/octet-stream")

    async def _create_openai_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        seen, failed = await self._batch_call(request, OPENAI_BATCHES, body)
        if failed is not None:
            return failed
        found = self._files.get(str(body.get("input_file_id")))
        if found is None:
            return self._reply(seen, {"error": {"message": "input_file_id not found", "type": "invalid_request_error",
                                                "code": None, "param": "input_file_id"}}, 400)
        with self._lock:
            batch = _Batch(f"batch_{len(self._batches) + 1}", OPENAI, [], time.time(), dict(body.get("metadata") or {}),
                           input_file_id=found[0]["id"], status="validating")
            seen_ids: set[str] = set()
            for number, line in enumerate(found[1].decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                custom_id = str(row.get("custom_id", ""))
                if not custom_id or custom_id in seen_ids:
                    batch.errors.append({"code": "duplicate_custom_id" if custom_id else "missing_custom_id",
                                         "message": f"custom_id {custom_id!r} is missing or not unique",
                                         "line": number})
                if row.get("method") != "POST" or row.get("url") != body.get("endpoint"):
                    batch.errors.append({"code": "invalid_url", "message": f"url {row.get('url')!r} is not the batch's "
                                         f"endpoint {body.get('endpoint')!r}", "line": number})
                seen_ids.add(custom_id)
                batch.rows.append(BatchRow(OPENAI, batch.id, custom_id, dict(row.get("body") or {})))
            self._batches[batch.id] = batch
            self._rows.extend(batch.rows)
        return self._reply(seen, self._openai_batch(batch))

    async def _list_openai_batches(self, request: web.Request) -> web.Response:
        """One page of the OpenAI listing, newest first: `limit` (1-100, default 20) batches after
        the batch `after`, with has_more, first_id and last_id."""
        seen, failed = await self._batch_call(request, OPENAI_BATCHES)
        if failed is not None:
            return failed
        try:
            limit = int(request.query.get("limit", 20))
        except ValueError:
            limit = 0
        with self._lock:
            ids = [b.id for b in reversed(self._batches.values()) if b.endpoint == OPENAI]
        after = request.query.get("after")
        if not 1 <= limit <= 100 or (after is not None and after not in ids):
            return self._reply(seen, {"error": {"message": f"invalid limit {limit} or cursor {after!r}",
                                                "type": "invalid_request_error", "code": None, "param": None}}, 400)
        start = ids.index(after) + 1 if after is not None else 0
        data = [self._openai_batch(self._batches[i]) for i in ids[start:start + limit]]
        return self._reply(seen, {"object": "list", "data": data, "has_more": start + limit < len(ids),
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _retrieve_openai_batch(self, request: web.Request) -> web.Response:
        return await self._retrieve(request, OPENAI_BATCHES, self._openai_batch)

    async def _create_anthropic_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        seen, failed = await self._batch_call(request, ANTHROPIC_BATCHES, {"requests": len(body.get("requests", []))})
        if failed is not None:
            return failed
        rows, ids = [], set()
        for i, entry in enumerate(body.get("requests") or []):
            custom_id = str(entry.get("custom_id", ""))
            params = entry.get("params") or {}
            if not ANTHROPIC_CUSTOM_ID.match(custom_id) or custom_id in ids:
                return self._reply(seen, {"type": "error", "error": {"type": "invalid_request_error", "message":
                                   f"requests.{i}.custom_id: {custom_id!r} must be unique and match "
                                   f"{ANTHROPIC_CUSTOM_ID.pattern}"}}, 400)
            if not {"model", "max_tokens", "messages"} <= set(params):
                message = f"requests.{i}.params: model, max_tokens and messages are required"
                return self._reply(seen, {"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": message}}, 400)
            ids.add(custom_id)
            rows.append((custom_id, dict(params)))
        with self._lock:
            batch = _Batch(f"msgbatch_{len(self._batches) + 1:04d}", ANTHROPIC, [], time.time(), status="in_progress")
            batch.rows = [BatchRow(ANTHROPIC, batch.id, cid, params) for cid, params in rows]
            self._batches[batch.id] = batch
            self._rows.extend(batch.rows)
        return self._reply(seen, self._anthropic_batch(batch))

    async def _list_anthropic_batches(self, request: web.Request) -> web.Response:
        """One page of the Anthropic listing, newest first: `limit` (1-1000, default 20) batches
        after `after_id` or just before `before_id`, with has_more, first_id and last_id."""
        seen, failed = await self._batch_call(request, ANTHROPIC_BATCHES)
        if failed is not None:
            return failed
        query = request.query
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return self._invalid(seen, "limit: must be an integer from 1 to 1000")
        with self._lock:
            ids = [b.id for b in reversed(self._batches.values()) if b.endpoint == ANTHROPIC]
        cursor = query.get("after_id") or query.get("before_id")
        if cursor is not None and cursor not in ids:
            return self._invalid(seen, f"no such batch {cursor!r} to page from")
        if "before_id" in query:
            end = ids.index(cursor)
            page, has_more = ids[max(0, end - limit):end], end - limit > 0
        else:
            start = ids.index(cursor) + 1 if cursor is not None else 0
            page, has_more = ids[start:start + limit], start + limit < len(ids)
        data = [self._anthropic_batch(self._batches[i]) for i in page]
        return self._reply(seen, {"data": data, "has_more": has_more, "first_id": page[0] if page else None,
                                  "last_id": page[-1] if page else None})

    def _invalid(self, seen: Seen, message: str) -> web.Response:
        """An Anthropic 400 invalid_request_error, recorded on `seen`."""
        return self._reply(seen, {"type": "error", "error": {"type": "invalid_request_error", "message": message}}, 400)

    async def _retrieve_anthropic_batch(self, request: web.Request) -> web.Response:
        return await self._retrieve(request, ANTHROPIC_BATCHES, self._anthropic_batch)

    async def _anthropic_batch_results(self, request: web.Request) -> web.Response:
        seen, failed = await self._batch_call(request, ANTHROPIC_BATCHES)
        batch = self._batches.get(request.match_info["batch_id"])
        if failed is not None or batch is None or batch.ended_at is None:
            return failed or _error(ANTHROPIC, 404, "not_found_error", "no results for this batch (yet)")
        seen.status = 200
        text = "".join(json.dumps(line) + "\n" for line in batch.results)
        return web.Response(text=text, content_type="application/binary")

    async def _retrieve(self, request: web.Request, endpoint: str, render: Callable[[_Batch], dict]) -> web.Response:
        seen, failed = await self._batch_call(request, endpoint)
        batch = self._batches.get(request.match_info["batch_id"])
        if failed is not None or batch is None:
            return failed or _error(OPENAI if endpoint == OPENAI_BATCHES else ANTHROPIC, 404, "not_found_error",
                                    "no such batch")
        with self._lock:
            batch.polls += 1
            if batch.ended_at is None:
                self._advance(batch)
        return self._reply(seen, render(batch))

    def _advance(self, batch: _Batch) -> None:
        """One status check's worth of progress; the batch ends on check number `batch_polls`."""
        if batch.errors:
            batch.status, batch.ended_at = "failed", time.time()
            return
        if batch.polls < self.batch_polls:
            batch.status = "in_progress"
            return
        lines = [self._run_row(batch, row) for row in batch.rows]
        if self.shuffle_results:
            self._rng.shuffle(lines)
        batch.results = [line for _, line in lines]
        for outcome, _ in lines:
            batch.outcomes[outcome] = batch.outcomes.get(outcome, 0) + 1
        batch.ended_at = time.time()
        if batch.endpoint == ANTHROPIC:
            batch.status = "ended"
            return
        batch.status = "cancelled" if "canceled" in batch.outcomes else "expired" if "expired" in batch.outcomes \
            else "completed"
        good = [line for outcome, line in lines if outcome == "succeeded"]
        bad = [line for outcome, line in lines if outcome != "succeeded"]
        for name, rows in (("output_file_id", good), ("error_file_id", bad)):
            if rows:
                file_id = f"file-{len(self._files) + 1}"
                data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
                self._files[file_id] = ({"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch_output",
                                         "created_at": int(time.time()), "filename": f"{batch.id}_{name}.jsonl",
                                         "status": "processed"}, data)
                setattr(batch, name, file_id)

    def _run_row(self, batch: _Batch, row: BatchRow) -> tuple[str, dict[str, Any]]:
        """Answer one batch row with the responder, or give it its scripted outcome."""
        self._row_counter += 1
        index = self._row_counter
        view = _view(row.endpoint, index, row.body, {})
        outcome = self._batch_outcome(view) or "succeeded"
        if outcome not in BATCH_OUTCOMES:
            raise ValueError(f"batch outcome {outcome!r}: use one of {BATCH_OUTCOMES}")
        reply: Any = self._responder(view) if outcome == "succeeded" else None
        if isinstance(reply, Fault):
            outcome = "errored"
        if row.endpoint == OPENAI:
            line: dict[str, Any] = {"id": f"batch_req_{index}", "custom_id": row.custom_id, "response": None,
                                    "error": None}
            if outcome == "succeeded":
                reply, input_tokens, output_tokens = _tokens(view, reply)
                line["response"] = {"status_code": 200, "request_id": f"req_{index}",
                                    "body": _openai_body(view, reply, input_tokens, output_tokens)}
            elif outcome == "errored":
                line["response"] = {"status_code": 400, "request_id": f"req_{index}", "body": {"error": {
                    "message": "scripted batch row error", "type": "invalid_request_error", "code": None,
                    "param": None}}}
            else:
                code = "batch_expired" if outcome == "expired" else "batch_cancelled"
                line["error"] = {"code": code, "message": f"This request was not executed: {code}."}
            return outcome, line
        if outcome == "succeeded":
            reply, input_tokens, output_tokens = _tokens(view, reply)
            if view.schema is not None and not _is_json(reply.text):  # the model ignored the forced tool
                view = replace(view, schema=None)
            result: dict[str, Any] = {"type": "succeeded", "message": _anthropic_body(view, reply, input_tokens,
                                                                                      output_tokens)}
        elif outcome == "errored":
            result = {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error",
                                                                                "message": "scripted batch row error"}}}
        else:
            result = {"type": outcome}
        return outcome, {"custom_id": row.custom_id, "result": result}

    def _openai_batch(self, batch: _Batch) -> dict[str, Any]:
        done = sum(batch.outcomes.values())
        ended = int(batch.ended_at) if batch.ended_at is not None else None
        return {
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "input_file_id": batch.input_file_id, "status": batch.status, "created_at": int(batch.created_at),
            "expires_at": int(batch.created_at) + 86400,
            "in_progress_at": int(batch.created_at) if batch.polls else None,
            "completed_at": ended if batch.status == "completed" else None,
            "expired_at": ended if batch.status == "expired" else None,
            "cancelled_at": ended if batch.status == "cancelled" else None,
            "failed_at": ended if batch.status == "failed" else None,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "request_counts": {"total": len(batch.rows), "completed": batch.outcomes.get("succeeded", 0),
                               "failed": done - batch.outcomes.get("succeeded", 0)},
            "metadata": batch.metadata,
        }

    def _anthropic_batch(self, batch: _Batch) -> dict[str, Any]:
        def stamp(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z") if t else None

        counts = {k: batch.outcomes.get(k, 0) for k in ("succeeded", "errored", "canceled", "expired")}
        counts["processing"] = len(batch.rows) - sum(counts.values())
        return {
            "id": batch.id, "type": "message_batch", "processing_status": batch.status, "request_counts": counts,
            "created_at": stamp(batch.created_at), "expires_at": stamp(batch.created_at + 86400),
            "ended_at": stamp(batch.ended_at), "cancel_initiated_at": None, "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if batch.ended_at else None,
        }


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 408: "timeout", 409: "conflict", 422: "invalid_request_error",
                429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "api_error",
                529: "overloaded_error"}


def _error(endpoint: str, status: int, kind: str, message: str,
           headers: Mapping[str, str] | None = None) -> web.Response:
    if endpoint == OPENAI:
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": kind, "param": None}}
    else:
        body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=dict(headers or {}))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _tokens(view: LoopbackRequest, reply: Any) -> tuple[Reply, int, int]:
    """The reply as a Reply, with its input and output token counts (characters / 4 unless scripted)."""
    reply = reply if isinstance(reply, Reply) else Reply(str(reply))
    input_tokens = reply.input_tokens if reply.input_tokens is not None else \
        estimate_tokens("".join(m["content"] for m in view.messages))
    output_tokens = reply.output_tokens if reply.output_tokens is not None else estimate_tokens(reply.text)
    return reply, input_tokens, output_tokens


def _view(endpoint: str, index: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> LoopbackRequest:
    if endpoint == OPENAI:
        messages = [{"role": m.get("role", ""), "content": _text(m.get("content"))} for m in body.get("messages", [])]
        fmt = body.get("response_format") or {}
        schema = ((fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema"
                  else fmt.get("schema") if fmt.get("type") == "json_object" else None)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    else:
        system = body.get("system")
        messages = ([{"role": "system", "content": _text(system)}] if system else []) + \
            [{"role": m.get("role", ""), "content": _text(m.get("content"))} for m in body.get("messages", [])]
        schema = _forced_tool_schema(body)
        max_tokens = body.get("max_tokens") or 16
    return LoopbackRequest(endpoint, index, body, headers, messages, schema, int(max_tokens))


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return str(content or "")


def _forced_tool_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choice = body.get("tool_choice") or {}
    if choice.get("type") != "tool":
        return None
    tool = next((t for t in body.get("tools", []) if t.get("name") == choice.get("name")), None)
    return tool.get("input_schema") if tool else None


def _openai_body(view: LoopbackRequest, reply: Reply, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-loopback-{view.index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": view.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens},
    }


def _anthropic_body(view: LoopbackRequest, reply: Reply, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    tool = (view.body.get("tool_choice") or {}).get("name") if view.schema is not None else None
    if tool is not None:
        content: list[dict[str, Any]] = [{"type": "tool_use", "id": f"toolu_{view.index}", "name": tool,
                                          "input": json.loads(reply.text)}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": reply.text}]
        stop = "end_turn" if reply.finish_reason == "stop" else "max_tokens"
    return {
        "id": f"msg_loopback_{view.index}",
        "type": "message",
        "role": "assistant",
        "model": view.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def main(argv: list[str] | None = None) -> int:
    """Serve until stdin closes: `python tests/loopback_server.py --rpm 3000 --latency-ms 50`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--burst-s", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--batch-polls", type=int, default=2, help="status checks until a provider batch ends")
    args = parser.parse_args(argv)
    with LoopbackServer(rpm=args.rpm, tpm=args.tpm, burst_s=args.burst_s, latency_s=args.latency_ms / 1000,
                        batch_polls=args.batch_polls) as server:
        print(server.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())

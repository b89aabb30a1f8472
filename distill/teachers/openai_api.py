"""The `openai` backend: chat completions through the official `openai` SDK (AsyncOpenAI).

Serves OpenAI itself and any OpenAI-compatible server by base URL (vLLM, llama.cpp server,
Ollama, TGI). The SDK does transport, auth and error mapping; distill does the rest:

- its retries are off (`max_retries=0`): `distill.teachers.retry` is the one retry loop;
- every attempt passes the pacer (`distill.teachers.pacing`), which reads the `x-ratelimit-*`
  headers through `with_raw_response`;
- the transport is the SDK's aiohttp client (`DefaultAioHttpClient`), which costs less CPU per
  request than the default httpx transport at high concurrency (see bench/teacher.py);
- a requested JSON schema goes out as `response_format: {"type": "json_schema", ...}`, strict when
  the schema allows it (closed objects, all properties required). Not every compatible server
  takes that shape (the llama-cpp-python server accepts only `text` and `json_object`, with the
  schema beside it), so with `json_mode` auto a rejection of `response_format` steps down once, for
  the rest of the session, to json_object and then to none (the prompt alone asks for JSON, and
  `distill.stages.protocol` parses and repairs). The cache key holds the schema, not this wire shape;
- the official endpoint gets `max_completion_tokens`, other servers the older `max_tokens` that
  every compatible server understands.

Errors the SDK raises become `ProviderFailure`s with the key redacted from their text.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any, Mapping

from distill.errors import TeacherError
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.pacing import Pacer, estimate_tokens
from distill.teachers.pricing import PriceTable
from distill.teachers.registry import BackendSpec
from distill.teachers.retry import ProviderFailure, RetryLoop, failure_from_sdk
from distill.teachers.settings import TeacherSettings

log = logging.getLogger("distill.teachers")

JSON_STEPS = ("json_schema", "json_object", "off")  # response_format shapes, most to least constrained
FORMAT_REJECTED = "response_format_rejected"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "no-key"  # local OpenAI-compatible servers ignore the key, the SDK wants one


class OpenAITeacher:
    """A Teacher over an AsyncOpenAI client (built by `create`, or passed in by a caller)."""

    backend = "openai"

    def __init__(self, settings: TeacherSettings, client: Any):
        self.model = settings.model
        self.settings = settings
        self.client = client
        self.official = is_official(settings.base_url)
        self.pacer = Pacer(concurrency=settings.concurrency, rpm=settings.rpm, tpm=settings.tpm)
        self.retry = RetryLoop(settings.name, max_retries=settings.max_retries)
        self.prices = PriceTable.load(settings.prices_file)
        self._redact = settings.redact
        self.json_mode = "json_schema" if settings.json_mode == "auto" else settings.json_mode
        self._step_down = settings.json_mode == "auto"

    def identity(self) -> Mapping[str, Any]:
        return identity(self.settings)

    async def complete(self, request: Request) -> Completion:
        started = time.monotonic()
        estimate = estimate_tokens(request)
        while True:
            mode = self.json_mode
            try:
                body, retries = await self._send(request, estimate)
                return self._completion(body, retries, time.monotonic() - started)
            except TeacherError as exc:
                if exc.reason != FORMAT_REJECTED or not self._step_down_from(mode, exc):
                    raise

    async def _send(self, request: Request, estimate: int) -> tuple[dict[str, Any], int]:
        """The request in the current JSON mode, through the retry loop: (response body, retries)."""
        kwargs = self._arguments(request)
        return await self.retry.run(lambda: self._attempt(kwargs, estimate),
                                    what=f"request {request.prompt_id or ''}".strip())

    def _step_down_from(self, mode: str, exc: TeacherError) -> bool:
        """After the server rejected `mode`'s response_format: use the next shape (once for all
        requests in flight); False when there is none left to try."""
        if mode == "off":
            return False
        if self.json_mode == mode:
            self.json_mode = JSON_STEPS[JSON_STEPS.index(mode) + 1]
            log.warning("%s: the server rejected response_format %s (HTTP %s); sending %s from now on "
                        "(DISTILL_TEACHER_JSON_MODE pins a choice)", self.settings.name, mode, exc.status,
                        "no response_format" if self.json_mode == "off" else self.json_mode)
        return True

    async def aclose(self) -> None:
        await self.client.close()

    def _arguments(self, request: Request) -> dict[str, Any]:
        return chat_arguments(self.model, request, official=self.official, json_mode=self.json_mode)

    async def _attempt(self, kwargs: dict[str, Any], estimate: int) -> dict[str, Any]:
        import openai

        async with self.pacer.slot(estimate) as slot:
            self.retry.check()  # a quota ran out while this attempt waited: do not call
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**kwargs)
                slot.observe(raw.headers)
                body = raw.parse().to_dict()
                usage = body.get("usage") or {}
                slot.settle(int(usage.get("total_tokens") or estimate))
                if not body.get("choices"):
                    raise ValueError("no choices in the response")
                return body
            except Exception as exc:
                failure = failure_from_sdk(openai, exc, self._redact)
                if failure is None:
                    raise
                if (isinstance(exc, openai.APIStatusError) and self._step_down and "response_format" in kwargs
                        and format_rejected(exc.status_code, failure)):
                    failure = replace(failure, reason=FORMAT_REJECTED, final=True)
                raise failure from None

    def _completion(self, body: dict[str, Any], retries: int, latency: float) -> Completion:
        return chat_completion(body, self.model, self.prices, retries=retries, latency=latency)


def chat_arguments(model: str, request: Request, *, official: bool, json_mode: str = "json_schema") -> dict[str, Any]:
    """The chat-completions body for `request`: what a live call sends and what a batch line
    (`distill.teachers.batch.clients`) carries, so both get the same answer and the same cache key.
    `json_mode` is the wire shape of a requested schema (see JSON_STEPS)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in request.messages],
        "temperature": request.temperature,
        "top_p": request.top_p,
        ("max_completion_tokens" if official else "max_tokens"): request.max_tokens,
    }
    if request.stop:
        kwargs["stop"] = list(request.stop)
    if request.seed is not None:
        kwargs["seed"] = request.seed
    if request.tools:
        kwargs["tools"] = [dict(t) for t in request.tools]
    if request.response_schema is not None and json_mode != "off":
        kwargs["response_format"] = response_format(request, json_mode)
    return kwargs


def response_format(request: Request, json_mode: str) -> dict[str, Any]:
    """`json_schema`: OpenAI structured outputs (also vLLM, Ollama, llama.cpp's llama-server).
    `json_object`: JSON mode with the schema beside it, the shape llama-cpp-python's server
    constrains decoding with (servers that do not know `schema` still return JSON)."""
    schema = dict(request.response_schema or {})
    if json_mode == "json_object":
        return {"type": "json_object", "schema": schema}
    spec: dict[str, Any] = {"name": request.schema_name, "schema": schema}
    if strict_compatible(schema):
        spec["strict"] = True
    return {"type": "json_schema", "json_schema": spec}


def format_rejected(status: int, failure: ProviderFailure) -> bool:
    """Whether an error response says the server does not take this `response_format` (a 400 or
    422, or the 500 the llama-cpp-python server answers a validation error with)."""
    return status in (400, 422, 500, 501) and "response_format" in failure.message.lower()


def chat_completion(body: Mapping[str, Any], model: str, prices: PriceTable, *, retries: int = 0,
                    latency: float = 0.0, batch: bool = False) -> Completion:
    """A chat-completion response body as a Completion (live, or one line of a batch's output)."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content")
    finish = choice.get("finish_reason") or "stop"
    if text is None and message.get("tool_calls"):
        text = json.dumps([c.get("function") for c in message["tool_calls"]], ensure_ascii=False)
    if text is None and message.get("refusal"):
        text, finish = message["refusal"], "refusal"
    usage_body = body.get("usage") or {}
    usage = Usage(int(usage_body.get("prompt_tokens") or 0), int(usage_body.get("completion_tokens") or 0))
    reported = str(body.get("model") or model)
    return Completion(text=text or "", finish_reason=finish, usage=usage, raw=dict(body), model=reported,
                      latency_s=latency, retries=retries, batch=batch,
                      cost=prices.cost("openai", reported, usage, batch=batch) if reported else None)


def strict_compatible(schema: Any) -> bool:
    """True when every object in the schema is closed and requires all its properties, which is
    what OpenAI's strict structured outputs demand."""
    if isinstance(schema, list):
        return all(strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", ())) != set(props):
            return False
    return all(strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const"))


# ---------------------------------------------------------------- the registered backend

def identity(settings: TeacherSettings) -> dict[str, Any]:
    return {"backend": "openai", "model": settings.model, "base_url": settings.base_url or DEFAULT_BASE_URL}


def is_official(base_url: str | None) -> bool:
    """True for OpenAI's own endpoint (which wants `max_completion_tokens` and a key)."""
    return base_url is None or "api.openai.com" in base_url


def needs_key(settings: TeacherSettings) -> bool:
    return is_official(settings.base_url)


def make_client(settings: TeacherSettings) -> Any:
    """AsyncOpenAI with SDK retries off, our timeout, and the aiohttp transport."""
    import openai

    key = settings.api_key.reveal() if settings.api_key is not None else PLACEHOLDER_KEY
    return openai.AsyncOpenAI(api_key=key, base_url=settings.base_url or DEFAULT_BASE_URL,
                              timeout=settings.timeout, max_retries=0,
                              http_client=openai.DefaultAioHttpClient(timeout=settings.timeout))


def create(settings: TeacherSettings) -> OpenAITeacher:
    return OpenAITeacher(settings, make_client(settings))


BACKEND = BackendSpec(
    name="openai",
    summary="OpenAI chat completions, or any OpenAI-compatible server by base URL (vLLM, llama.cpp, Ollama, TGI)",
    make=create,
    identify=identity,
    key_env=("OPENAI_API_KEY",),
    base_url_env=("OPENAI_BASE_URL",),
    key_required=needs_key,
)

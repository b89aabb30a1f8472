"""The `anthropic` backend: the Messages API through the official `anthropic` SDK (AsyncAnthropic).

Like the `openai` backend, this module speaks the wire format only (`AnthropicWire.attempt`: one
request, read back as a Completion), with the SDK's own retries off and the aiohttp transport;
the stack (`distill.teachers.stack`) puts retry and pacing (which reads the
`anthropic-ratelimit-*` headers), the cache and the price over it. Its batch client
(`distill.teachers.batch.clients.AnthropicBatches`) is declared in its `BackendSpec`.
Differences the wire absorbs:

- system messages go to the request's own `system` field; the rest stay in order;
- a requested JSON schema becomes one forced tool (`tool_choice: {"type": "tool"}`) whose input
  schema is the requested one, and the tool call's input is the reply text. A schema whose top
  level is not an object is wrapped as `{"value": ...}` (tools take objects) and unwrapped after;
- the Messages API of SDK 2.x has no sampling parameters, so `temperature`, `top_p` and `seed`
  are not sent (they still keep requests apart in the cache key);
- an overloaded API answers 529, which the retry loop retries like a 5xx.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from distill.teachers.base import Completion, Reply, Request, Usage
from distill.teachers.batch.clients import AnthropicBatches
from distill.teachers.registry import BackendSpec
from distill.teachers.settings import TeacherSettings

DEFAULT_BASE_URL = "https://api.anthropic.com"
PLACEHOLDER_KEY = "no-key"
WRAPPED = "value"  # property name for a non-object schema wrapped into an object
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "refusal", "pause_turn": "stop"}


class AnthropicWire:
    """The Messages API wire over an AsyncAnthropic client (built by `create`, or passed in)."""

    backend = "anthropic"
    sdk = "anthropic"

    def __init__(self, settings: TeacherSettings, client: Any):
        self.model = settings.model
        self.settings = settings
        self.client = client

    def identity(self) -> Mapping[str, Any]:
        return identity(self.settings)

    async def attempt(self, request: Request) -> Reply:
        kwargs, wrapped = message_arguments(self.model, request)
        raw = await self.client.messages.with_raw_response.create(**kwargs)
        body = (await raw.parse()).to_dict()
        return Reply(message_completion(body, request, wrapped, self.model), raw.headers)

    async def aclose(self) -> None:
        await self.client.close()


def message_arguments(model: str, request: Request) -> tuple[dict[str, Any], bool]:
    """The Messages API parameters for `request`, and whether a non-object schema was wrapped:
    what a live call sends and what a batch entry (`distill.teachers.batch.clients`) carries."""
    system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
    kwargs: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": m["role"], "content": m["content"]}
                     for m in request.messages if m["role"] != "system"],
    }
    if system:
        kwargs["system"] = system
    if request.stop:
        kwargs["stop_sequences"] = list(request.stop)
    wrapped = False
    if request.response_schema is not None:
        schema = dict(request.response_schema)
        if schema.get("type") != "object":
            schema, wrapped = {"type": "object", "properties": {WRAPPED: schema}, "required": [WRAPPED]}, True
        kwargs["tools"] = [{"name": request.schema_name, "input_schema": schema,
                            "description": "Give the reply as this tool's input."}]
        kwargs["tool_choice"] = {"type": "tool", "name": request.schema_name}
    elif request.tools:
        kwargs["tools"] = [dict(t) for t in request.tools]
    return kwargs, wrapped


def message_completion(body: Mapping[str, Any], request: Request, wrapped: bool, model: str, *,
                       batch: bool = False) -> Completion:
    """A Messages API response body as a Completion (live, or one succeeded row of a batch). A
    body without content, or with a field of the wrong type, raises ValueError / LookupError /
    TypeError, which the retry layer and the batch queue record as an unreadable answer."""
    if not isinstance(body.get("content"), list):
        raise ValueError("no content in the response")
    blocks = body["content"]
    finish = FINISH.get(str(body.get("stop_reason")), str(body.get("stop_reason") or "stop"))
    forced = next((b for b in blocks if b.get("type") == "tool_use" and request.response_schema is not None
                   and b.get("name") == request.schema_name), None)
    if forced is not None:
        value = forced.get("input")
        if wrapped and isinstance(value, dict):
            value = value.get(WRAPPED)
        text = json.dumps(value, ensure_ascii=False)
        finish = "stop" if finish == "tool_calls" else finish
    else:
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    u = body.get("usage") or {}
    usage = Usage(int(u.get("input_tokens") or 0) + int(u.get("cache_creation_input_tokens") or 0)
                  + int(u.get("cache_read_input_tokens") or 0), int(u.get("output_tokens") or 0))
    return Completion(text=text, finish_reason=finish, usage=usage, raw=dict(body), model=str(body.get("model") or model),
                      batch=batch)


# ---------------------------------------------------------------- the registered backend

def identity(settings: TeacherSettings) -> dict[str, Any]:
    return {"backend": "anthropic", "model": settings.model, "base_url": settings.base_url or DEFAULT_BASE_URL}


def needs_key(settings: TeacherSettings) -> bool:
    return settings.base_url is None or "api.anthropic.com" in settings.base_url


def make_client(settings: TeacherSettings) -> Any:
    """AsyncAnthropic with SDK retries off, our timeout, and the aiohttp transport."""
    import anthropic

    key = settings.api_key.reveal() if settings.api_key is not None else PLACEHOLDER_KEY
    return anthropic.AsyncAnthropic(api_key=key, base_url=settings.base_url or DEFAULT_BASE_URL,
                                    timeout=settings.timeout, max_retries=0,
                                    http_client=anthropic.DefaultAioHttpClient(timeout=settings.timeout))


def create(settings: TeacherSettings) -> AnthropicWire:
    return AnthropicWire(settings, make_client(settings))


def batch_client(settings: TeacherSettings) -> AnthropicBatches:
    """Anthropic Message Batches for `settings`: a line carries the live call's parameters, a
    succeeded row is read by the live call's parser."""
    def read(body: Mapping[str, Any], request: Request) -> Completion:
        _, wrapped = message_arguments(settings.model, request)
        return message_completion(body, request, wrapped, settings.model, batch=True)

    return AnthropicBatches(settings, make_client, body=lambda request: message_arguments(settings.model, request)[0],
                            read=read)


def scores(settings: TeacherSettings, cache_dir: Any = None) -> Any:
    from distill.teachers.scoring import Capability

    return Capability(False, "the Messages API returns no log-probabilities")


BACKEND = BackendSpec(
    name="anthropic",
    summary="Anthropic Messages API (system prompt in its own field; JSON schema through a forced tool)",
    make=create,
    identify=identity,
    key_env=("ANTHROPIC_API_KEY",),
    base_url_env=("ANTHROPIC_BASE_URL",),
    key_required=needs_key,
    batch=batch_client,
    scores=scores,
)

"""The Teacher seam: one async call, `complete(Request) -> Completion`, for every backend.

A `Request` holds everything that can change the teacher's output (rendered messages, decoding
parameters, a JSON schema for structured output, a sample index) and, apart from it, metadata
that cannot (the ids of the templates that rendered it, the prompt id for error reports). The
cache keys on the first part only. A `Completion` carries the text, why generation stopped,
token usage, the provider's raw response, latency, the number of retries, whether it came
from the cache, and its estimated cost (None when the model's price is unknown).

In batch mode a teacher may raise `Deferred` instead of answering: the request went into a
provider batch and the row is run again once the batch has answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True)
class Request:
    """One teacher call. Fields above `template_ids` change the output; the rest is bookkeeping."""

    messages: tuple[Mapping[str, str], ...]
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_schema: Mapping[str, Any] | None = None  # JSON schema the reply must follow
    schema_name: str = "response"
    tools: tuple[Mapping[str, Any], ...] = ()
    sample: int = 0  # n samples at temperature > 0 are n distinct requests
    # bookkeeping, never part of the cache key:
    template_ids: tuple[str, ...] = ()
    prompt_id: str | None = None

    def output_fields(self) -> dict[str, Any]:
        """Every field that can change the output, defaults filled in (the cache key's input)."""
        return {
            "messages": [dict(m) for m in self.messages],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "seed": self.seed,
            "response_schema": dict(self.response_schema) if self.response_schema is not None else None,
            "schema_name": self.schema_name,
            "tools": [dict(t) for t in self.tools],
            "sample": self.sample,
        }


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Completion:
    """A teacher's answer to one Request."""

    text: str
    finish_reason: str  # "stop", "length", "tool_calls", ... as normalised by the backend
    usage: Usage = field(default_factory=Usage)
    raw: Mapping[str, Any] = field(default_factory=dict)  # the provider's full response body
    model: str = ""  # the model name the provider reports
    latency_s: float = 0.0
    retries: int = 0
    cached: bool = False  # True when served by the cache: billed zero
    cost: float | None = None  # THE price in USD, set by the pricing layer; None = unknown model, never guessed
    batch: bool = False  # answered through a provider batch API: billed at the batch price
    alternative_cost: float | None = None  # the same usage at the other mode's price (live <-> batch): compared, never billed


class Deferred(Exception):
    """Not a failure: the request was queued for a provider batch and its answer will be in the
    cache once the batch has ended (see `distill.teachers.batch`). A stage that gets it leaves the row
    pending, writes nothing for it, and runs it again after the batch."""

    def __init__(self, key: str):
        super().__init__(f"request {key} is waiting on a provider batch")
        self.key = key


@dataclass(frozen=True)
class Reply:
    """One attempt's answer from a hosted wire: the completion read from the body, and the
    response headers (the pacing layer reads the provider's rate limits from them)."""

    completion: Completion
    headers: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Wire(Protocol):
    """What a hosted backend implements: its wire format and nothing else. `attempt` sends one
    request once and reads the reply; an exception it raises is classified by the retry layer
    (`distill.teachers.retry.failure_from_sdk`, with the SDK module named by `sdk`)."""

    backend: str
    model: str
    sdk: str  # the SDK module whose exceptions the retry layer reads ("" when it uses none)

    def identity(self) -> Mapping[str, Any]: ...

    async def attempt(self, request: Request) -> Reply: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Teacher(Protocol):
    """What every backend implements. `identity()` names the provider and resolved model
    (for local models: path plus weights hash); it is part of the cache key."""

    backend: str
    model: str

    def identity(self) -> Mapping[str, Any]: ...

    async def complete(self, request: Request) -> Completion: ...

    async def aclose(self) -> None: ...

"""One stored teacher answer (`Entry`), how an answer becomes one, and how it is verified.

Every read verifies the entry it serves (`Entry.damage`: its key is the sha256 of its request, its
response matches its checksum; two hashes, cheap beside any model call): an entry altered on
disk is a miss with a warning, never an answer, and the answer fetched instead replaces it. A
checksum catches rot and careless edits, not a deliberate forgery: whoever edits an answer can
recompute its checksum (see `distill cache import`).

`entry_of` is the one way an answer enters the cache, whether it came from a live call or a
provider batch; only complete, successful answers are stored (`storable`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_string  # how json writes a str with ensure_ascii=False
from typing import Any, Mapping, Sequence

from distill.errors import CacheError
from distill.records.ids import canonical_json
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.cache.key import KEY_VERSION, backend_name, key_of

# Finish reasons of a response that is not complete: never stored.
INCOMPLETE_FINISH_REASONS = frozenset({"", "error", "incomplete", "cancelled", "canceled", "timeout", "aborted"})
# An entry's fields, in the order of the cache's `entries` columns (distill.teachers.cache.store).
COLUMNS = ("key", "backend", "model", "request", "text", "finish_reason", "input_tokens", "output_tokens",
           "raw", "response_model", "template_ids", "created_at", "checksum")


def response_checksum(text: str, finish_reason: str, input_tokens: int, output_tokens: int,
                      response_model: str, raw: str) -> str:
    """sha256 over a stored response, so reads, `verify` and `import` catch edited or rotten
    answers: of the canonical JSON of [text, finish_reason, input_tokens, output_tokens,
    response_model], a newline, and the raw body."""
    head = _checksum_head(text, finish_reason, input_tokens, output_tokens, response_model)
    return hashlib.sha256((head + "\n" + raw).encode("utf-8")).hexdigest()


def _checksum_head(text: Any, finish_reason: Any, input_tokens: Any, output_tokens: Any, response_model: Any) -> str:
    """`canonical_json` of the five fields. Every cache read checks a checksum, so with their usual
    types (three strings, two ints) the text is written directly, the way json writes them with
    ensure_ascii=False (its own C string encoder, `int.__repr__`), without building an encoder."""
    if type(text) is str and type(finish_reason) is str and type(response_model) is str \
            and type(input_tokens) is int and type(output_tokens) is int:
        return (f"[{_json_string(text)},{_json_string(finish_reason)},{int.__repr__(input_tokens)},"
                f"{int.__repr__(output_tokens)},{_json_string(response_model)}]")
    return canonical_json([text, finish_reason, input_tokens, output_tokens, response_model])


@dataclass(frozen=True)
class Entry:
    """One stored teacher answer, exactly as it sits in the database."""

    key: str
    backend: str
    model: str
    request: str  # canonical JSON; key == key_of(request)
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    raw: str  # canonical JSON of the provider's response body
    response_model: str
    template_ids: tuple[str, ...]
    created_at: float
    checksum: str

    @classmethod
    def build(cls, *, key: str, backend: str, model: str, request: str, text: str, finish_reason: str,
              input_tokens: int, output_tokens: int, raw: Mapping[str, Any], response_model: str,
              template_ids: Sequence[str], created_at: float | None = None) -> "Entry":
        """An entry with its raw body canonicalised and its checksum computed."""
        try:
            raw_text = canonical_json(dict(raw))
        except (TypeError, ValueError) as exc:
            raise CacheError(f"the {backend} response for key {key} has a raw body that is not JSON ({exc}); "
                             "the backend must return plain dicts in Completion.raw") from None
        return cls(key=key, backend=backend, model=model, request=request, text=text, finish_reason=finish_reason,
                   input_tokens=int(input_tokens), output_tokens=int(output_tokens), raw=raw_text,
                   response_model=response_model, template_ids=tuple(template_ids),
                   created_at=time.time() if created_at is None else float(created_at),
                   checksum=response_checksum(text, finish_reason, int(input_tokens), int(output_tokens),
                                              response_model, raw_text))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Entry":
        """The entry a database row holds; ValueError when its template ids are not a JSON list."""
        values = dict(zip(COLUMNS, row))
        template_ids = json.loads(values["template_ids"])
        if not isinstance(template_ids, list):
            raise ValueError(f"template_ids is not a JSON list: {values['template_ids'][:60]!r}")
        values["template_ids"] = tuple(template_ids)
        return cls(**values)

    def to_row(self) -> tuple[Any, ...]:
        return tuple(json.dumps(list(self.template_ids), ensure_ascii=False) if c == "template_ids"
                     else getattr(self, c) for c in COLUMNS)

    def problems(self) -> list[str]:
        """Why this entry cannot be trusted (empty when its key and checksum re-derive and its
        backend and model columns are the ones its request names)."""
        found = []
        try:
            material = json.loads(self.request)
            canonical = canonical_json(material)
        except (TypeError, ValueError):
            return ["the stored request is not valid JSON"]
        if canonical != self.request:
            found.append("the stored request is not in canonical form")
        if not self.key.startswith(KEY_VERSION + ":"):
            found.append(f"unknown key version {self.key.split(':', 1)[0]!r} (this distill writes {KEY_VERSION})")
        elif key_of(self.request) != self.key:
            found.append("the key does not match the sha256 of the stored request")
        found += self._column_problems(material)
        if not self._checksum_ok():
            found.append("the response does not match its checksum")
        return found

    def damage(self) -> str | None:
        """Why this entry must not be served, or None: the cheap check made on every read (its key
        is the sha256 of its request, its response matches its checksum). `problems()` checks more."""
        if key_of(self.request) != self.key:
            return "the key does not match the sha256 of the stored request"
        if not self._checksum_ok():
            return "the response does not match its checksum"
        return None

    def _checksum_ok(self) -> bool:
        return self.checksum == response_checksum(self.text, self.finish_reason, self.input_tokens,
                                                  self.output_tokens, self.response_model, self.raw)

    def _column_problems(self, material: Any) -> list[str]:
        """The backend and model columns (what `stats`, `export --model` and `prune --model` go by)
        must be the ones the request's identity names: the key does not cover them."""
        identity = material.get("identity") if isinstance(material, dict) else None
        if not isinstance(identity, dict):
            return ["the stored request names no model identity"]
        found = []
        if self.backend != backend_name(identity):
            found.append(f"backend {self.backend!r} is not the one its request names ({backend_name(identity)!r})")
        if self.model != str(identity.get("model") or ""):
            found.append(f"model {self.model!r} is not the one its request names ({identity.get('model')!r})")
        return found

    def to_completion(self, latency_s: float = 0.0) -> Completion:
        """The stored answer as a cache hit: flagged cached, billed zero."""
        return Completion(text=self.text, finish_reason=self.finish_reason, usage=Usage(), raw=json.loads(self.raw),
                          model=self.response_model, latency_s=latency_s, retries=0, cached=True, cost=0.0)


def entry_of(identity: Mapping[str, Any], canonical: str, request: Request, completion: Completion) -> Entry:
    """The entry that stores `completion` as the answer to `request`, whose canonical text
    (`canonical_request(identity, request)`) is `canonical` and gives the key: the one way an
    answer enters the cache, whether it came from a live call or a provider batch."""
    return Entry.build(key=key_of(canonical), backend=backend_name(identity),
                       model=str(identity.get("model") or ""), request=canonical,
                       text=completion.text, finish_reason=completion.finish_reason,
                       input_tokens=completion.usage.input_tokens, output_tokens=completion.usage.output_tokens,
                       raw=completion.raw, response_model=completion.model, template_ids=request.template_ids)


def storable(completion: Completion) -> bool:
    """Only complete, successful answers are cached; an errored or cut-off-by-failure one is not."""
    if completion.cached:
        return False
    return (completion.finish_reason or "").lower() not in INCOMPLETE_FINISH_REASONS

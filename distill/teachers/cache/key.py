"""The cache key: a versioned hash of everything that can change a teacher's answer.

The key is `v1:` + sha256 of the canonical JSON (sorted keys, compact, UTF-8) of the provider,
the resolved model identity and `Request.output_fields()` with numeric types normalised, so the
same request built in another key order or argument order gives the same key. API keys, base
URLs, timeouts and retry settings never enter it. Each entry keeps that canonical text, so
`verify` and `import` re-derive every key instead of trusting it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from distill.errors import CacheError
from distill.records.ids import canonical_json
from distill.teachers.base import Request

KEY_VERSION = "v1"


# Identity fields that never change the output; dropped even if a backend reports them.
EXCLUDED_IDENTITY_FIELDS = frozenset({
    "api_key", "base_url", "url", "endpoint", "timeout", "timeout_s", "max_retries", "retries",
    "concurrency", "rpm", "tpm", "requests_per_minute", "tokens_per_minute", "organization", "project",
})


def key_material(identity: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """What the key hashes: the model identity (minus connection settings) and the output fields."""
    ident = {k: v for k, v in identity.items() if k not in EXCLUDED_IDENTITY_FIELDS}
    fields = request.output_fields()
    for name in ("temperature", "top_p"):  # 1 and 1.0 (and -0.0 and 0.0) must hash alike
        fields[name] = float(fields[name]) + 0.0
    for name in ("max_tokens", "sample"):
        fields[name] = int(fields[name])
    if fields["seed"] is not None:
        fields["seed"] = int(fields["seed"])
    return {"identity": ident, "request": fields}


def canonical_request(identity: Mapping[str, Any], request: Request) -> str:
    """The canonical JSON text of `key_material`; raises CacheError naming an unhashable field."""
    material = key_material(identity, request)
    try:
        return canonical_json(material)
    except (TypeError, ValueError) as exc:
        named = [*material["request"].items(), *(("identity." + k, v) for k, v in material["identity"].items())]
        for name, value in named:
            try:
                canonical_json(value)
            except (TypeError, ValueError):
                raise CacheError(f"request field {name!r} cannot be part of a cache key: {exc}") from None
        raise CacheError(f"request cannot be part of a cache key: {exc}") from None


def backend_name(identity: Mapping[str, Any]) -> str:
    """The provider an identity names (`provider`, else `backend`), as stored in an entry's `backend`."""
    return str(identity.get("provider") or identity.get("backend") or "")


def key_of(canonical: str) -> str:
    """The versioned key of a canonical request text."""
    return f"{KEY_VERSION}:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_key(identity: Mapping[str, Any], request: Request) -> str:
    """The cache key of `request` sent to the model named by `identity`."""
    return key_of(canonical_request(identity, request))

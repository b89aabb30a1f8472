"""Teacher settings: which backend and model, where, with which key, and how hard to push it.

Everything is chosen by environment variables, with a config file and command-line flags on top:

    DISTILL_TEACHER              backend:model, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5,
                                 local:default, local:/models/qwen           (default local:default)
    DISTILL_TEACHER_BASE_URL     else the backend SDK's own OPENAI_BASE_URL / ANTHROPIC_BASE_URL
    DISTILL_TEACHER_API_KEY      else the backend SDK's own OPENAI_API_KEY / ANTHROPIC_API_KEY
    DISTILL_TEACHER_CONCURRENCY  requests in flight at once                  (default 16)
    DISTILL_TEACHER_RPM          requests per minute; unset = learn it from rate-limit headers
    DISTILL_TEACHER_TPM          tokens per minute;   unset = learn it from rate-limit headers
    DISTILL_TEACHER_TIMEOUT      seconds per attempt                         (default 60)
    DISTILL_TEACHER_MAX_RETRIES  retries after the first attempt             (default 6)
    DISTILL_TEACHER_BATCH_SIZE   local backend: requests generated together  (default 8)
    DISTILL_TEACHER_BATCH        1: send uncached requests as provider batches (half price, see
                                 distill.teachers.batch)                      (default 0)
    DISTILL_TEACHER_BATCH_POLL   seconds between the first batch status checks (default 30)
    DISTILL_TEACHER_BATCH_MAX_REQUESTS  requests per provider batch, below the provider's own
                                 limit (50,000 OpenAI, 100,000 Anthropic)     (default: that limit)
    DISTILL_TEACHER_JSON_MODE    openai backend: how a JSON schema goes out: json_schema (structured
                                 outputs), json_object (JSON mode with the schema beside it, as the
                                 llama-cpp-python server takes it), off (the prompt only), or auto:
                                 json_schema, stepping down once a server rejects it  (default auto)
    DISTILL_PRICES               a TOML or JSON price file extending the built-in table
    DISTILL_CONFIG               the config file (default ./distill.toml when it exists)

Precedence, highest first: flags > config file > environment > defaults. The config file and the
flags are explicit, per-project or per-run choices that a person wrote down or typed; the
environment is ambient (a shell profile exporting OPENAI_BASE_URL for another tool should not
silently redirect a project that pinned its teacher in `distill.toml`). Within the environment,
distill's own variables beat the SDKs' variables.

The config file is TOML with a `[teacher]` table whose keys are the field names below (plus
`teacher = "backend:model"`). It may not hold an API key, since such files get committed: it can
name the variable holding one with `api_key_env = "MY_VLLM_KEY"`.

Keys are wrapped in `Secret`, whose repr and str are masked and which refuses to be pickled, so a
key cannot reach a log line, an error message or a file by accident. A base URL may carry
credentials too (`https://user:token@host/v1`, `?api-key=...`): `mask_url` masks them wherever a
base URL is shown or recorded (`distill config`, manifest.json, batches.json, model identities,
error messages). Each resolved value records its source (flag, config file, environment variable
or default) for `distill config`; `distill.teachers.resolve` resolves them (it needs the backend's
registry entry for the SDK's own variables, so this module stays below the registry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from distill.config import BOOL_TEXT
from distill.errors import ConfigError

DEFAULT_TEACHER = "local:default"
DEFAULT_CONFIG_FILE = "distill.toml"
ENV_TEACHER = "DISTILL_TEACHER"
ENV_BASE_URL = "DISTILL_TEACHER_BASE_URL"
ENV_API_KEY = "DISTILL_TEACHER_API_KEY"
ENV_CONFIG = "DISTILL_CONFIG"
ENV_PRICES = "DISTILL_PRICES"


class Secret:
    """An API key. Masked wherever it is shown; `reveal()` is the one way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def masked(self) -> str:
        """`***` plus the last four characters for long keys (enough to tell keys apart)."""
        return f"***{self._value[-4:]}" if len(self._value) >= 16 else "***"

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the key replaced by its masked form."""
        return text.replace(self._value, self.masked()) if self._value else text

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    __str__ = masked

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "Secret":
        return self

    def __reduce__(self) -> Any:
        raise TypeError("an API key (Secret) cannot be pickled or stored")


_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^\s/?#]*)(?P<path>[^\s?#]*)"
                  r"(?:\?(?P<query>[^\s#]*))?")
_QUERY_VALUE = re.compile(r"=[^&;]*")


def mask_url(text: str) -> str:
    """`text` with the credentials of every URL in it masked: the user and password before `@`
    become `***` and every query value becomes `***` (`https://***@host/v1?api-key=***`). The
    scheme, host, port and path stay, enough to tell endpoints apart. Masking twice changes nothing."""
    def masked(match: re.Match[str]) -> str:
        authority = match["authority"]
        if "@" in authority:
            authority = "***@" + authority.rpartition("@")[2]
        query = "" if match["query"] is None else "?" + _QUERY_VALUE.sub("=***", match["query"])
        return match["scheme"] + authority + match["path"] + query
    return _URL.sub(masked, text)


def masked_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A model identity with `mask_url` applied to each text value (a base URL is the usual one)."""
    return {k: mask_url(v) if isinstance(v, str) else v for k, v in identity.items()}


@dataclass(frozen=True)
class TeacherSettings:
    """The resolved teacher configuration. `sources` maps each field to where its value came from."""

    backend: str = "local"
    """Backend name, as registered in the `distill.teachers` entry-point group."""
    model: str = "default"
    """Provider model name, or for `local` a model directory or `default` (the embedded student)."""
    base_url: str | None = None
    """API base URL; None means the provider's official endpoint."""
    api_key: Secret | None = None
    """The API key, masked everywhere it is shown."""
    concurrency: int = 16
    """Requests in flight at once."""
    rpm: int | None = None
    """Requests per minute to pace to; None = unpaced until rate-limit headers say otherwise."""
    tpm: int | None = None
    """Tokens per minute to pace to; None = unpaced until rate-limit headers say otherwise."""
    timeout: float = 60.0
    """Seconds one attempt may take before it counts as timed out (and is retried)."""
    max_retries: int = 6
    """Retries after the first attempt, for retryable failures only."""
    batch_size: int = 8
    """Local backend only: concurrent requests generated together in one batch."""
    prices_file: str | None = None
    """A TOML or JSON file of extra model prices (see `distill.teachers.pricing`)."""
    batch: bool = False
    """Send uncached requests as provider batches (OpenAI Batch, Anthropic Message Batches)."""
    batch_poll: float = 30.0
    """Seconds before the first status check of a submitted batch; later checks back off."""
    batch_max_requests: int | None = None
    """Requests per provider batch; None = the provider's own limit. Larger sets are split."""
    json_mode: str = "auto"
    """openai backend: how a JSON schema is sent (auto, json_schema, json_object, off); see JSON_MODES."""
    key_env: tuple[str, ...] = ()
    """The variables that could have held the key, in the order they are read (for error messages)."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each value came from: `flag --rpm`, `env DISTILL_TEACHER_RPM`, `distill.toml`, `default`."""

    @property
    def name(self) -> str:
        """`backend:model`, the way DISTILL_TEACHER spells it."""
        return f"{self.backend}:{self.model}"

    @property
    def uses_default(self) -> bool:
        """True when nothing chose a teacher and the offline default local:default applies."""
        return self.sources.get("backend") == "default"

    def key_hint(self) -> str:
        """`set DISTILL_TEACHER_API_KEY or OPENAI_API_KEY`: what to do about a missing key."""
        return "set " + " or ".join(self.key_env or (ENV_API_KEY,))

    def display(self) -> dict[str, Any]:
        """Every field as plain data for printing: the key and the base URL's credentials masked,
        sources left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("sources", "key_env"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.masked() if isinstance(value, Secret) else \
                mask_url(value) if f.name == "base_url" and value is not None else value
        return out

    def redact(self, text: str) -> str:
        """`text` (an error message, a provider's reply) with the key and any URL credentials masked."""
        return mask_url(self.api_key.redact(text) if self.api_key is not None else text)


# ---------------------------------------------------------------- parsing values

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


FLAG_VALUES = "1 or 0 (true/false, yes/no, on/off)"


def parse_flag(text: str) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off, any case; empty is off. ValueError otherwise."""
    try:
        return BOOL_TEXT[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


JSON_MODES = ("auto", "json_schema", "json_object", "off")


def _json_mode(text: str) -> str:
    if text.lower() not in JSON_MODES:
        raise ValueError(text)
    return text.lower()


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError
    return text.rstrip("/")


@dataclass(frozen=True)
class Knob:
    """One tunable field: its variable, its parser, what a valid value looks like, what it does,
    and whether `distill config` takes it as a flag (`--field-name`)."""

    env: str
    parse: Callable[[str], Any]
    expected: str
    help: str
    flag: bool = True


KNOBS: dict[str, Knob] = {
    "base_url": Knob(ENV_BASE_URL, _url, "an http:// or https:// URL",
                     "API base URL, e.g. http://localhost:8000/v1 for vLLM"),
    "concurrency": Knob("DISTILL_TEACHER_CONCURRENCY", _positive_int, "a positive integer (requests in flight)",
                        "requests in flight at once"),
    "rpm": Knob("DISTILL_TEACHER_RPM", _positive_int, "a positive integer (requests per minute)",
                "requests per minute to pace to"),
    "tpm": Knob("DISTILL_TEACHER_TPM", _positive_int, "a positive integer (tokens per minute)",
                "tokens per minute to pace to"),
    "timeout": Knob("DISTILL_TEACHER_TIMEOUT", _positive_float, "a positive number of seconds", "seconds per attempt"),
    "max_retries": Knob("DISTILL_TEACHER_MAX_RETRIES", _non_negative_int, "an integer >= 0",
                        "retries after the first attempt"),
    "batch_size": Knob("DISTILL_TEACHER_BATCH_SIZE", _positive_int, "a positive integer",
                       "local backend: requests generated together"),
    "prices_file": Knob(ENV_PRICES, str, "a path to a TOML or JSON price file", "TOML/JSON file of extra model prices"),
    "batch": Knob("DISTILL_TEACHER_BATCH", parse_flag, FLAG_VALUES,
                  "send uncached requests as provider batches", flag=False),  # `distill run --batch`
    "batch_poll": Knob("DISTILL_TEACHER_BATCH_POLL", _positive_float, "a positive number of seconds",
                       "seconds before the first status check of a submitted batch", flag=False),
    "batch_max_requests": Knob("DISTILL_TEACHER_BATCH_MAX_REQUESTS", _positive_int,
                               "a positive integer (requests per provider batch)", "requests per provider batch",
                               flag=False),
    "json_mode": Knob("DISTILL_TEACHER_JSON_MODE", _json_mode, "one of " + ", ".join(JSON_MODES),
                      "openai backend: how a JSON schema is sent", flag=False),
}


def parse_knob(knob: Knob, raw: Any, where: str) -> Any:
    """`raw` (from a flag, the config file or a variable named by `where`) parsed by `knob`; ConfigError
    naming `where`, the value and what was expected."""
    try:
        return knob.parse(str(raw).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={raw!r}: expected {knob.expected}") from None


def parse_teacher(value: str, where: str = ENV_TEACHER) -> tuple[str, str]:
    """`backend:model` -> (backend, model); a bare `local` means local:default, a bare `none` no teacher."""
    text = value.strip()
    backend, sep, model = text.partition(":")
    backend, model = backend.strip().lower(), model.strip()
    if not sep and backend == "local":
        return "local", "default"
    if not sep and backend == "none":  # no teacher: self-training only (distill.teachers.none)
        return "none", "none"
    if not backend or not model:
        raise ConfigError(f"{where}={value!r}: expected BACKEND:MODEL, e.g. openai:gpt-4o-mini, "
                          "anthropic:claude-sonnet-4-5, local:default or local:/path/to/model")
    return backend, model

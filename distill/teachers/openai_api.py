"""The `openai` backend: chat completions through the official `openai` SDK (AsyncOpenAI).

Serves OpenAI itself and any OpenAI-compatible server by base URL (vLLM, llama.cpp server,
Ollama, TGI). This module speaks the wire format only (`OpenAIWire.attempt`: one request, read
back as a Completion); the stack (`distill.teachers.stack`) puts the layers over it: retry and
pacing (`distill.teachers.pacing.PacedTeacher`, which reads the `x-ratelimit-*` headers the
attempt returns and turns the SDK's errors into failures with the key redacted), the cache and
the price. Its batch client (`distill.teachers.batch.clients.OpenAIBatches`) is declared in its
`BackendSpec`.

- the SDK's retries are off (`max_retries=0`): `distill.teachers.retry` is the one retry loop;
- the transport is the SDK's aiohttp client (`DefaultAioHttpClient`), which costs less CPU per
  request than the default httpx transport at high concurrency (see bench/teacher.py);
- a requested JSON schema goes out as `response_format: {"type": "json_schema", ...}`, strict when
  the schema allows it (closed objects, all properties required). Not every compatible server
  takes that shape (the llama-cpp-python server accepts only `text` and `json_object`, with the
  schema beside it), so with `json_mode` auto a rejection of `response_format` steps down once, for
  the rest of the session, to json_object and then to none (the prompt alone asks for JSON, and
  `distill.stages.protocol` parses and repairs); the same attempt sends the next shape at once,
  so a step down is no retry. The cache key holds the schema, not this wire shape;
- the official endpoint gets `max_completion_tokens`, other servers the older `max_tokens` that
  every compatible server understands;
- `served_models` lists what a server serves (`GET /models`, each entry as the server wrote it,
  extra fields included), through the same client and retry loop: the served student
  (`distill.teachers.served_student`) checks with it that a server serves the expected model.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from distill.teachers.base import Completion, Reply, Request, Usage
from distill.teachers.batch.clients import OpenAIBatches
from distill.teachers.registry import BackendSpec
from distill.teachers.retry import RetryLoop, failure_from_sdk
from distill.teachers.settings import TeacherSettings

log = logging.getLogger("distill.teachers")

JSON_STEPS = ("json_schema", "json_object", "off")  # response_format shapes, most to least constrained
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "no-key"  # local OpenAI-compatible servers ignore the key, the SDK wants one


class OpenAIWire:
    """The chat-completions wire over an AsyncOpenAI client (built by `create`, or passed in)."""

    backend = "openai"
    sdk = "openai"

    def __init__(self, settings: TeacherSettings, client: Any):
        self.model = settings.model
        self.settings = settings
        self.client = client
        self.official = is_official(settings.base_url)
        self.json_mode = "json_schema" if settings.json_mode == "auto" else settings.json_mode
        self._step_down = settings.json_mode == "auto"

    def identity(self) -> Mapping[str, Any]:
        return identity(self.settings)

    async def attempt(self, request: Request) -> Reply:
        """Send `request` once; with `json_mode` auto, a rejected response_format is sent again
        at once in the next shape (see JSON_STEPS)."""
        import openai

        while True:
            mode = self.json_mode
            kwargs = chat_arguments(self.model, request, official=self.official, json_mode=mode)
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**kwargs)
            except openai.APIStatusError as exc:
                if not (self._step_down and "response_format" in kwargs and format_rejected(exc)):
                    raise
                self._step_down_from(mode, exc.status_code)
                continue
            return Reply(chat_completion(raw.parse().to_dict(), self.model), raw.headers)

    def _step_down_from(self, mode: str, status: int) -> None:
        """After the server rejected `mode`'s response_format: use the next shape (once for all
        requests in flight)."""
        if self.json_mode == mode:
            self.json_mode = JSON_STEPS[JSON_STEPS.index(mode) + 1]
            log.warning("%s: the server rejected response_format %s (HTTP %s); sending %s from now on "
                        "(DISTILL_TEACHER_JSON_MODE pins a choice)", self.settings.name, mode, status,
                        "no response_format" if self.json_mode == "off" else self.json_mode)

    async def aclose(self) -> None:
        await self.client.close()


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


def format_rejected(exc: Any) -> bool:
    """Whether an error response (`openai.APIStatusError`) says the server does not take this
    `response_format` (a 400 or 422, or the 500 the llama-cpp-python server answers a validation
    error with)."""
    body = exc.body.get("error", exc.body) if isinstance(exc.body, Mapping) else exc.body
    text = f"{body.get('message', '') if isinstance(body, Mapping) else body or ''} {exc.message}"
    return exc.status_code in (400, 422, 500, 501) and "response_format" in text.lower()


def chat_completion(body: Mapping[str, Any], model: str, *, batch: bool = False) -> Completion:
    """A chat-completion response body as a Completion (live, or one line of a batch's output).
    A body without choices, or with a field of the wrong type, raises ValueError / LookupError /
    TypeError, which the retry layer and the batch queue record as an unreadable answer."""
    if not body.get("choices"):
        raise ValueError("no choices in the response")
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
    return Completion(text=text or "", finish_reason=finish, usage=usage, raw=dict(body),
                      model=str(body.get("model") or model), batch=batch)


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


async def served_models(settings: TeacherSettings) -> list[dict[str, Any]]:
    """The models the server at `settings.base_url` serves (`GET /models`), each entry with every
    field the server sent (`distill serve` adds weight hashes); retried as a chat call is, and a
    final failure is a TeacherError."""
    import openai

    client = make_client(settings)
    retry = RetryLoop(settings.name, max_retries=settings.max_retries)

    async def attempt() -> list[dict[str, Any]]:
        try:
            page = await client.models.list()
            return [entry.to_dict() for entry in page.data]
        except Exception as exc:
            failure = failure_from_sdk(openai, exc, settings.redact)
            if failure is None:
                raise
            raise failure from None

    try:
        return (await retry.run(attempt, what="GET /models"))[0]
    finally:
        await client.close()


def create(settings: TeacherSettings) -> OpenAIWire:
    return OpenAIWire(settings, make_client(settings))


def batch_client(settings: TeacherSettings) -> OpenAIBatches:
    """OpenAI Batch for `settings`: its lines carry the live call's body, its rows are read by
    the live call's parser, so batch and live answers are interchangeable in the cache."""
    official = is_official(settings.base_url)
    return OpenAIBatches(settings, make_client,
                         body=lambda request: chat_arguments(settings.model, request, official=official),
                         read=lambda body, request: chat_completion(body, settings.model, batch=True))


# ---------------------------------------------------------------- token scoring (on-policy distillation)

PROBES_FILE = "scoring-probes.json"  # in the cache directory: {sha256(base URL + model): true/false}


def _probe_key(settings: TeacherSettings) -> str:
    import hashlib

    return hashlib.sha256(f"{settings.base_url or DEFAULT_BASE_URL}\n{settings.model}".encode()).hexdigest()


def _probes_path(cache_dir: Any) -> Any:
    from distill.teachers.cache.store import cache_path

    return cache_path(cache_dir).parent / PROBES_FILE


def _read_probes(cache_dir: Any) -> dict[str, bool]:
    try:
        data = json.loads(_probes_path(cache_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


def _record_probe(settings: TeacherSettings, cache_dir: Any, result: bool) -> None:
    from distill.records.files import write_atomic

    probes = {**_read_probes(cache_dir), _probe_key(settings): result}
    path = _probes_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(probes, indent=1, sort_keys=True) + "\n")


def scores(settings: TeacherSettings, cache_dir: Any = None) -> Any:
    """OpenAI itself: no. An OpenAI-compatible server: what its probe found, else unknown until used."""
    from distill.teachers.scoring import Capability

    if is_official(settings.base_url):
        return Capability(False, "OpenAI returns log-probs of generated tokens only, never of given ones")
    known = _read_probes(cache_dir).get(_probe_key(settings))
    if known is None:
        return Capability(None, "probed on first use (completions with echo + logprobs on token ids)")
    return Capability(known, "the server " + ("returned" if known else "did not return") +
                      " prompt logprobs for token ids (probed once; delete "
                      f"{PROBES_FILE} in the cache directory to probe again)")


UNABLE_STATUS = (400, 404, 405, 422, 501)  # the replies that mean "cannot score token ids here"


class CompletionsScorer:
    """Top-k log-probs of given token ids from an OpenAI-compatible server's legacy completions
    endpoint: `prompt` as token ids, `echo: true`, `logprobs: k`, one new token (vLLM's shape;
    `return_tokens_as_token_ids` makes the candidates token ids rather than text)."""

    full_vocabulary = False

    def __init__(self, settings: TeacherSettings, cache_dir: Any = None, client: Any = None):
        import httpx

        self.settings = settings
        self.cache_dir = cache_dir
        key = settings.api_key.reveal() if settings.api_key is not None else PLACEHOLDER_KEY
        self.client = client or httpx.Client(base_url=(settings.base_url or DEFAULT_BASE_URL).rstrip("/") + "/",
                                             timeout=settings.timeout, headers={"Authorization": f"Bearer {key}"})

    def identity(self) -> Mapping[str, Any]:
        return identity(self.settings)

    def _post(self, ids: list[int], k: int, as_ids: bool) -> Mapping[str, Any] | None:
        from distill.errors import TeacherError

        body = {"model": self.settings.model, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": k,
                "temperature": 0}
        if as_ids:
            body["return_tokens_as_token_ids"] = True
        try:
            reply = self.client.post("completions", json=body)
        except Exception as exc:  # httpx transport errors
            raise TeacherError(self.settings.redact(f"{self.settings.name}: scoring request failed "
                                                    f"({type(exc).__name__}: {exc})"), reason="connection") from None
        if reply.status_code in UNABLE_STATUS:  # the server has no such endpoint or refuses these fields
            return None
        if reply.status_code >= 400:  # a key, a rate limit or an outage says nothing about what it can do
            raise TeacherError(self.settings.redact(f"{self.settings.name}: scoring request failed with HTTP "
                                                    f"{reply.status_code}: {reply.text[:200]}"),
                               reason="rate_limit" if reply.status_code == 429 else "http_error",
                               status=reply.status_code)
        logprobs = (reply.json().get("choices") or [{}])[0].get("logprobs") or {}
        return logprobs if isinstance(logprobs.get("top_logprobs"), list) else None

    def probe(self, ids: list[int]) -> Mapping[str, Any] | None:
        """One request; its verdict is recorded in the cache directory for `distill config`."""
        found = self._post(ids, 1, as_ids=False)
        ok = found is not None and len(found["top_logprobs"]) >= len(ids)
        _record_probe(self.settings, self.cache_dir, ok)
        return found if ok else None

    def vocabulary(self, student_tokenizer: Any) -> Any:
        """The student's vocabulary when the server echoes the student's ids of a probe text as the
        same token texts; VocabularyMismatch when it does not, ConfigError when it cannot score."""
        from distill.errors import ConfigError, VocabularyMismatch
        from distill.teachers.scoring import Vocabulary

        ids = student_tokenizer("Distill: 42 cafés, naïve résumé; ok?", add_special_tokens=False)["input_ids"]
        found = self.probe(ids)
        if found is None:
            raise ConfigError(f"teacher {self.settings.name}: the server did not return prompt logprobs for token "
                              "ids (completions with echo + logprobs), so it cannot score the student's answers")
        echoed = [str(t) for t in found.get("tokens") or []][:len(ids)]
        mine = [student_tokenizer.decode([i]) for i in ids]
        if not echoed:
            raise VocabularyMismatch(f"the teacher {self.settings.name} did not echo the tokens of the student's ids "
                                     f"{ids[:8]}..., so it cannot be checked to share the student's vocabulary; "
                                     "use a server that returns `tokens` with echo + logprobs (vLLM does)")
        if echoed != mine and echoed != student_tokenizer.convert_ids_to_tokens(ids):
            raise VocabularyMismatch(f"the teacher {self.settings.name} reads the student's token ids {ids[:8]}... as "
                                     f"{echoed[:8]}, the student as {mine[:8]}: they use different vocabularies "
                                     "(cross-tokenizer alignment is not supported)")
        return Vocabulary.of(student_tokenizer)

    def score(self, rows: Any, k: int) -> list[Any]:
        from distill.errors import TeacherError
        from distill.teachers.scoring import TokenScores, logprob_or_floor

        out = []
        for prompt, answer in rows:
            ids = [*prompt, *answer]
            found = self._post(ids, k, as_ids=True)
            if found is None:
                raise TeacherError(f"{self.settings.name}: the server returned no prompt logprobs", reason="scoring")
            tops = found["top_logprobs"][len(prompt):len(ids)]
            cand = [sorted(((int(str(t).rsplit(":", 1)[-1]), logprob_or_floor(float(v)))
                            for t, v in (top or {}).items()), key=lambda c: -c[1]) for top in tops]
            out.append(TokenScores(ids=tuple(tuple(i for i, _ in c) for c in cand),
                                   logprobs=tuple(tuple(v for _, v in c) for c in cand)))
        return out

    def close(self) -> None:
        self.client.close()


def make_scorer(settings: TeacherSettings, cache_dir: Any = None) -> CompletionsScorer:
    return CompletionsScorer(settings, cache_dir)


BACKEND = BackendSpec(
    name="openai",
    summary="OpenAI chat completions, or any OpenAI-compatible server by base URL (vLLM, llama.cpp, Ollama, TGI)",
    make=create,
    identify=identity,
    key_env=("OPENAI_API_KEY",),
    base_url_env=("OPENAI_BASE_URL",),
    key_required=needs_key,
    batch=batch_client,
    scores=scores,
    scorer=make_scorer,
)

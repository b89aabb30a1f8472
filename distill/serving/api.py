"""The OpenAI wire format over the served student: `distill serve`'s routes, checks and errors.

Routes: `GET /v1/models`, `POST /v1/chat/completions` (`stream: true` answers as server-sent
events: a role chunk, content deltas, a finish chunk, a usage chunk when `stream_options.
include_usage` asks for one, then `data: [DONE]`), `POST /v1/completions` (a prompt string or a
list of them, raw text without the chat template), `GET /health`. A JSON `response_format`
(`json_schema`, or `json_object` with an optional `schema`) is honoured by constrained decoding, as
the local teacher does it, so a distill run can use the served student as its `openai:` teacher. The model name chooses the
student: `student` is the base, every adapter is served under its own name. `/v1/models` entries
carry `distill_weights_sha256` (the base weights' hash) and `distill_adapter_sha256` (the adapter's,
or null), so a client can check it is talking to the exact student it expects.

Every error is an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`: 401 for a
missing or wrong API key (compared in constant time, never logged), 404 for an unknown model (the
message lists the served names) or path, 400 for a body that is not JSON, a field of the wrong type
or range, an unsupported feature (`n` above 1, tools, logprobs), a JSON schema that does not
compile, and a
prompt that with `max_tokens` does not fit the context window (the message gives both numbers: a
prompt is never truncated). Without `max_tokens` a request may use the rest of the context window.

`StudentServer` runs the app on uvicorn in a background thread (`distill.serving.http`).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Sequence

from distill.errors import DistillError
from distill.records.prompts import parse_messages
from distill.serving.batching import Batcher, Job, Result
from distill.serving.http import ThreadedServer

MAX_STOPS = 4
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed takes


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Served:
    """One served model: its name, its Student, and when the server started serving it."""

    name: str
    student: Any
    created: int

    def card(self) -> dict[str, Any]:
        identity = self.student.identity
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "distill",
                "distill_weights_sha256": identity.weights_sha256, "distill_adapter_sha256": identity.adapter_sha256}


class ServingApp:
    """The routes over the served students, one `Batcher` for all of them."""

    def __init__(self, students: Mapping[str, Any], *, api_key: str | None = None, max_batch: int = 32,
                 wait_s: float = 0.005):
        created = int(time.time())
        self.served = {name: Served(name, student, created) for name, student in students.items()}
        self.batcher = Batcher(students, max_batch=max_batch, wait_s=wait_s)
        self.api_key = api_key

    def asgi(self) -> Any:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        routes = [Route("/v1/models", self.models), Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"]), Route("/health", self.health)]
        return Starlette(routes=routes, exception_handlers={HTTPException: self.http_error},
                         middleware=self._middleware())

    def _middleware(self) -> list[Any]:
        from starlette.middleware import Middleware

        return [Middleware(KeyGuard, key=self.api_key)] if self.api_key else []

    async def http_error(self, request: Any, exc: Any) -> Any:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(RequestError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                           kind=kind))

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [s.card() for s in self.served.values()]})

    async def chat(self, request: Any) -> Any:
        try:
            body = await json_body(request)
            served = self.model(body)
            messages = chat_messages(body.get("messages"))
            refuse_unsupported(body)
            text = served.student.render(messages)
            jobs = [self.job(served, body, text, strip=True, max_key=chat_max_key(body), field="messages")]
        except RequestError as err:
            return error_response(err)
        if body.get("stream"):
            return self.stream(jobs, served.name, chat=True, usage=include_usage(body))
        return await self.respond(jobs, served.name, chat=True)

    async def completions(self, request: Any) -> Any:
        try:
            body = await json_body(request)
            served = self.model(body)
            refuse_unsupported(body)
            for name in ("echo", "suffix", "best_of"):
                if body.get(name) not in (None, False, 1):
                    raise RequestError(400, f"'{name}' is not supported by distill serve; leave it out", param=name)
            jobs = [self.job(served, body, text, strip=False, max_key="max_tokens", field="prompt")
                    for text in prompt_texts(body)]
        except RequestError as err:
            return error_response(err)
        if body.get("stream"):
            return self.stream(jobs, served.name, chat=False, usage=include_usage(body))
        return await self.respond(jobs, served.name, chat=False)

    def model(self, body: Mapping[str, Any]) -> Served:
        name = body.get("model")
        if not isinstance(name, str):
            raise RequestError(400, "field 'model': required, a string naming a served model "
                               f"({', '.join(self.served)})", param="model")
        if name not in self.served:
            raise RequestError(404, f"model {name!r} is not served here; served models: {', '.join(self.served)}",
                               param="model", code="model_not_found", kind="not_found_error")
        return self.served[name]

    def job(self, served: Served, body: Mapping[str, Any], text: str, *, strip: bool, max_key: str,
            field: str) -> Job:
        """The validated decoding settings of a request, for one prompt text that fits the context."""
        student = served.student
        prompt_tokens = len(student.tokenizer(text, add_special_tokens=False)["input_ids"])
        window = student.context_window
        max_tokens = integer(body, max_key, minimum=1)
        if max_tokens is None:
            if prompt_tokens >= window:
                raise RequestError(400, f"the prompt is {prompt_tokens} tokens, and the context window of "
                                   f"{served.name} is {window} tokens: it leaves no room for an answer; "
                                   "shorten the prompt", param=field, code="context_length_exceeded")
            max_tokens = window - prompt_tokens
        elif prompt_tokens + max_tokens > window:
            raise RequestError(400, f"the prompt is {prompt_tokens} tokens and {max_key} is {max_tokens}: "
                               f"{prompt_tokens + max_tokens} tokens do not fit the context window of {served.name}, "
                               f"{window} tokens; shorten the prompt or lower {max_key}", param=max_key,
                               code="context_length_exceeded")
        temperature = number(body, "temperature", 0.0, low=0.0, high=2.0)
        top_p = number(body, "top_p", 1.0, low=0.0, high=1.0)
        if top_p == 0:
            raise RequestError(400, "field 'top_p': must be above 0 (at most 1)", param="top_p")
        n = integer(body, "n", minimum=1)
        if n not in (None, 1):
            raise RequestError(400, f"field 'n': {n} choices per request are not supported; send n=1 (or several "
                               "requests, which are batched together)", param="n")
        return Job(model=served.name, text=text, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                   temperature=temperature, top_p=top_p,
                   seed=integer(body, "seed", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]), stop=stop_strings(body),
                   strip=strip, grammar=self.grammar(served, body), room=window - prompt_tokens)

    def grammar(self, served: Served, body: Mapping[str, Any]) -> Any:
        """The compiled grammar of a JSON response format (json_schema, or json_object with an optional
        `schema` beside it as llama.cpp takes it), or None for text."""
        fmt = body.get("response_format")
        if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
            return None
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(spec, dict):
            schema = spec.get("schema", {"type": "object"})
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            schema = fmt.get("schema", {"type": "object"})
        else:
            raise RequestError(400, "field 'response_format': expected {'type': 'text'}, {'type': 'json_object'} or "
                               "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}, got "
                               f"{json.dumps(fmt)[:200]}", param="response_format")
        if not isinstance(schema, dict):
            raise RequestError(400, "field 'response_format': the schema must be a JSON object", param="response_format")
        try:
            return self.batcher.grammars[served.name].grammar(schema)
        except DistillError as exc:
            raise RequestError(400, f"field 'response_format': {exc}", param="response_format") from None

    async def respond(self, jobs: list[Job], model: str, *, chat: bool) -> Any:
        import asyncio

        from starlette.responses import JSONResponse

        try:
            results = await asyncio.gather(*(self.batcher.submit(job) for job in jobs))
        except DistillError as exc:  # a failed generation (model, grammar): an OpenAI error body, not plain text
            return error_response(RequestError(500, str(exc), kind="server_error"))
        return JSONResponse(completion_body(results, model, chat=chat))

    def stream(self, jobs: list[Job], model: str, *, chat: bool, usage: bool) -> Any:
        from starlette.responses import StreamingResponse

        return StreamingResponse(self._events(jobs, model, chat=chat, usage=usage), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def _events(self, jobs: list[Job], model: str, *, chat: bool, usage: bool) -> AsyncIterator[str]:
        import asyncio

        queue: asyncio.Queue[tuple[int, str | Result | BaseException]] = asyncio.Queue()
        for index, job in enumerate(jobs):
            job.on_delta = lambda text, index=index: queue.put_nowait((index, text))
        tasks = [asyncio.ensure_future(self._finish(self.batcher.submit(job), index, queue))
                 for index, job in enumerate(jobs)]
        chunk = Chunks(model, chat)
        if chat:
            yield sse(chunk.delta(0, {"role": "assistant", "content": ""}))
        results: list[Result] = []
        try:
            while len(results) < len(jobs):
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    yield sse(RequestError(500, str(item), kind="server_error").body())
                    return
                if isinstance(item, Result):
                    results.append(item)
                    yield sse(chunk.finish(index, item.finish_reason))
                else:
                    yield sse(chunk.delta(index, {"content": item} if chat else item))
            if usage:
                yield sse(chunk.usage(usage_body(results)))
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()

    @staticmethod
    async def _finish(pending: Any, index: int, queue: Any) -> None:
        try:
            queue.put_nowait((index, await pending))
        except Exception as exc:  # reported to the client as an error event
            queue.put_nowait((index, exc))


class KeyGuard:
    """ASGI middleware: 401 unless `Authorization: Bearer KEY` carries the server's key (constant time)."""

    def __init__(self, app: Any, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(token, self.key.encode()):
            err = RequestError(401, "missing or wrong API key: send the key distill serve was started with "
                               "(--api-key) as 'Authorization: Bearer KEY'", code="invalid_api_key",
                               kind="authentication_error")
            return await error_response(err)(scope, receive, send)
        await self.app(scope, receive, send)


class Chunks:
    """The stream's chunk bodies, one id and creation time for the whole stream."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}

    def delta(self, index: int, delta: Any) -> dict[str, Any]:
        key = "delta" if self.chat else "text"
        return self._chunk([{"index": index, key: delta, "finish_reason": None, "logprobs": None}])

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta" if self.chat else "text": {} if self.chat else "",
                             "finish_reason": reason, "logprobs": None}])

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return self._chunk([]) | {"usage": usage}


def sse(body: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def completion_body(results: Sequence[Result], model: str, *, chat: bool) -> dict[str, Any]:
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason,
                    "logprobs": None} for i, r in enumerate(results)]
    else:
        choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                   for i, r in enumerate(results)]
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage_body(results)}


def usage_body(results: Sequence[Result]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_response(err: RequestError) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status)


# ---------------------------------------------------------------- request fields

async def json_body(request: Any) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def chat_messages(value: Any) -> tuple[Mapping[str, str], ...]:
    """OpenAI chat messages as the student's {role, content} pairs: text parts joined, `developer` as system."""
    if not isinstance(value, list) or not value:
        raise RequestError(400, "field 'messages': required, a non-empty list of {role, content} objects",
                           param="messages")
    flat = []
    for i, message in enumerate(value):
        if isinstance(message, dict):
            role = "system" if message.get("role") == "developer" else message.get("role")
            message = {"role": role, "content": message_text(message.get("content"), i)}
        flat.append(message)
    try:
        return parse_messages(flat)
    except ValueError as exc:
        raise RequestError(400, str(exc), param="messages") from None


def message_text(content: Any, i: int) -> Any:
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RequestError(400, f"field 'messages[{i}].content': only text parts are supported, got {kind!r}",
                               param=f"messages[{i}].content")
        parts.append(part["text"])
    return "".join(parts)


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) and p for p in prompts)):
        raise RequestError(400, "field 'prompt': required, a non-empty string or list of strings (token arrays "
                           "are not supported)", param="prompt")
    return prompts


def refuse_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("tools") or body.get("functions"):
        raise RequestError(400, "field 'tools': distill serve does not run tools; leave them out", param="tools")
    if body.get("logprobs") not in (None, False, 0):
        raise RequestError(400, "field 'logprobs': not supported by distill serve; leave it out", param="logprobs")
    if body.get("stream") not in (None, True, False):
        raise RequestError(400, "field 'stream': expected true or false", param="stream")


def chat_max_key(body: Mapping[str, Any]) -> str:
    return "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"


def include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def integer(body: Mapping[str, Any], name: str, *, minimum: int | None = None,
            maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        bounds = (f" from {minimum} to {maximum}" if minimum is not None and maximum is not None
                  else f" of at least {minimum}" if minimum is not None else "")
        raise RequestError(400, f"field '{name}': expected an integer{bounds}, got {value!r}", param=name)
    return value


def number(body: Mapping[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(400, f"field '{name}': expected a number from {low:g} to {high:g}, got {value!r}",
                           param=name)
    return float(value)


def stop_strings(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not (isinstance(stops, list) and len(stops) <= MAX_STOPS and all(isinstance(s, str) and s for s in stops)):
        raise RequestError(400, f"field 'stop': expected a non-empty string or a list of up to {MAX_STOPS} of them, "
                           f"got {stop!r}", param="stop")
    return tuple(stops)


# ---------------------------------------------------------------- the server

class StudentServer(ThreadedServer):
    """The app on a uvicorn server in a background thread: `with StudentServer(students) as s: s.url`."""

    def __init__(self, students: Mapping[str, Any], host: str = "127.0.0.1", port: int = 8000, *,
                 api_key: str | None = None, max_batch: int = 32, wait_s: float = 0.005):
        self.app = ServingApp(students, api_key=api_key, max_batch=max_batch, wait_s=wait_s)
        super().__init__(self.app.asgi(), host, port, "distill serve")

    @property
    def url(self) -> str:
        """The OpenAI base URL (ending in /v1)."""
        return f"{self.origin}/v1"

    def stop(self) -> None:
        """Stop the engine and wait for it (`Batcher.close`: requests still running get an error on
        the live event loop, so their rows end at the next step), then the HTTP server."""
        self.app.batcher.close()
        super().stop()

"""The served student: the student's answers from an OpenAI-compatible server (`--engine server`).

At scale the student is better served by an inference engine (vLLM with data parallelism over a
node's GPUs, llama.cpp's server, `distill serve`) than generated in process. `ServedStudent` has
the local `Student`'s answering interface (`iter_answers`, `answer`, `identity`, `device`), so the
answer stage, a round and the evaluation take either; its rows are the local student's rows
(`distill.student.model.Answer`): ids from `answer_id` with the served model's identity, the
server's finish reason and its token counts (`usage`).

Its requests are chat completions through the teacher layer's client (`stack.live_teacher` over
the `openai` wire): the same HTTP client, retry loop and pacing (at most `concurrency` requests in
flight, the server's rate-limit headers followed), never the teacher-call cache: resume works
through the answers file, as for the local student.

Before any answer, `connect` asks the server what it serves (`GET /v1/models`) and refuses a
server that does not serve the expected student:

- the model: `--student-model NAME` must be listed; without it, the one model served, else the one
  entry whose weight hashes are the expected student's, else an error naming what is served;
- the weights: an entry that carries `distill_weights_sha256` (and `distill_adapter_sha256` when an
  adapter is applied), as `distill serve` writes them, must carry the expected student's hashes
  (`--student`, else $DISTILL_STUDENT, else the embedded student; `--adapter`'s hash, or none).
  The identity recorded is then the expected student's (its key, hence answer ids and resume, are
  the same as the local student's), with where it was served as its path, `URL#NAME`;
- a server that reports no hashes (vLLM, llama.cpp) is taken on its word for the name only, and the
  identity says so: weights hash `unverified:NAME` (and adapter hash `unverified:NAME` when
  `--adapter` names the adapter the served model is meant to be). A caller that must know the
  weights (a later round of a multi-round run, whose adapter the run itself trained) refuses it.

Sampling: temperature, top_p and max_tokens go with every request. Greedy requests (temperature 0)
carry no seed; sampled ones carry a seed per answer, `sample_seed(seed, prompt id, sample index)`:
the first 8 hex digits (32 bits) of the SHA-256 of the canonical JSON of those three, so each of K
samples of a prompt has its own seed and a resumed run asks for the same ones. A server's seeded
sampling is its own: the same seed gives the same answer from the same server and engine version,
not the answer the local student draws (which seeds torch per batch).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from distill.errors import ConfigError, ModelError, TeacherError
from distill.records.ids import content_hash
from distill.records.prompts import Prompt
from distill.student.model import (ANSWER_BATCH, Answer, Answerer, GenerationParams, ModelIdentity, model_identity,
                                   progress_bar)
from distill.teachers.base import Completion, Request
from distill.teachers.openai_api import served_models
from distill.teachers.settings import Secret, TeacherSettings, mask_url
from distill.teachers.stack import TeacherHandle, live_teacher

ENGINES = ("local", "server")
ENV_API_KEY = "DISTILL_STUDENT_API_KEY"  # for a server started with a key (`vllm serve --api-key`)
UNVERIFIED = "unverified:"
WEIGHTS_FIELD, ADAPTER_FIELD = "distill_weights_sha256", "distill_adapter_sha256"


@dataclass(frozen=True)
class Server:
    """Where a served student answers: the server's base URL (ending in /v1), the served model's
    name (None: chosen as the module docstring says) and the seconds one request may take."""

    url: str
    model: str | None = None
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--student-url {mask_url(self.url)!r}: expected an http:// or https:// base URL, "
                              "e.g. http://localhost:8000/v1")
        if not self.timeout > 0:
            raise ConfigError(f"--student-timeout must be above 0, got {self.timeout}")

    @property
    def shown(self) -> str:
        """The URL as messages and records show it, credentials masked."""
        return mask_url(self.url.rstrip("/"))


def server_of(engine: str, url: str | None, model: str | None, timeout: float) -> Server | None:
    """The `Server` chosen by `--engine`, `--student-url`, `--student-model` and `--student-timeout`,
    or None for the local engine; ConfigError for a combination that cannot be meant."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "local":
        if url is not None or model is not None:
            raise ConfigError("--student-url and --student-model are read only with --engine server; add "
                              "--engine server to answer through that server")
        return None
    if url is None:
        raise ConfigError("--engine server needs --student-url URL: the base URL of an OpenAI-compatible server "
                          "serving the student, e.g. http://localhost:8000/v1")
    return Server(url, model, timeout)


def sample_seed(seed: int, prompt_id: str, sample: int) -> int:
    """The seed sent with sample `sample` of prompt `prompt_id` (a 32-bit number; see the module docstring)."""
    return int(content_hash({"seed": seed, "prompt": prompt_id, "sample": sample}, 8), 16)


# ---------------------------------------------------------------- which model, and is it the student

class Expected:
    """The student the command means (`source` plus `adapter`), its identity computed only when a
    server reports hashes to compare with (a vLLM server needs no local copy of the weights)."""

    def __init__(self, source: str | os.PathLike[str] | None, adapter: str | os.PathLike[str] | None,
                 flags: tuple[str, str] = ("--student-model", "--adapter")):
        self.source, self.adapter = source, adapter
        self.model_flag, self.adapter_flag = flags  # the flags that name this student's served model and adapter
        self._identity: ModelIdentity | None = None

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            self._identity = model_identity(self.source, self.adapter)[1]
        return self._identity

    @property
    def adapter_path(self) -> str | None:
        return str(Path(self.adapter).expanduser()) if self.adapter is not None else None


def choose(served: Sequence[Mapping[str, Any]], name: str | None, expected: Expected, where: str) -> Mapping[str, Any]:
    """The served entry for the student: the one named, else the only one, else the one whose hashes
    are the expected student's; ModelError naming what is served otherwise."""
    listing = ", ".join(repr(str(e.get("id"))) for e in served) or "nothing"
    if name is not None:
        found = [e for e in served if e.get("id") == name]
        if not found:
            raise ModelError(f"student server {where} does not serve {name!r}; it serves {listing}. Pass one of "
                             "them with --student-model, or start the server with that model")
        return found[0]
    if len(served) == 1:
        return served[0]
    hashed = [e for e in served if WEIGHTS_FIELD in e]
    if served and hashed:
        want = expected.identity
        found = [e for e in hashed if (e.get(WEIGHTS_FIELD), e.get(ADAPTER_FIELD)) ==
                 (want.weights_sha256, want.adapter_sha256)]
        if len(found) == 1:
            return found[0]
        raise ModelError(f"student server {where} serves {listing}, and {'none' if not found else 'several'} of "
                         f"them carries the weights of the expected student {want.key}; name the one to use with "
                         f"{expected.model_flag}")
    raise ModelError(f"student server {where} serves {listing}; name the student's model with {expected.model_flag}")


def verify(entry: Mapping[str, Any], expected: Expected, where: str, *, require_verified: bool = False) -> ModelIdentity:
    """The identity of the served `entry`, after checking its hashes against the expected student's
    (ModelError naming both on a mismatch); see the module docstring for a server without hashes."""
    name = str(entry.get("id"))
    served_at = f"{where}#{name}"
    weights = entry.get(WEIGHTS_FIELD)
    if weights is None:
        if require_verified:
            want = expected.identity
            raise ModelError(f"student server {where} does not report the weight hashes of {name!r}, so it cannot be "
                             f"checked to serve {want.key}{' (' + want.adapter + ')' if want.adapter else ''}; "
                             "serve it with `distill serve`, which reports them, or use --engine local")
        unverified = UNVERIFIED + name
        adapter = expected.adapter_path
        return ModelIdentity(name=name, path=served_at, weights_sha256=unverified, adapter=adapter,
                             adapter_sha256=unverified if adapter is not None else None)
    want = expected.identity
    if weights != want.weights_sha256:
        raise ModelError(f"student server {where} serves {name!r} with weights sha256 {weights}, but the expected "
                         f"student {want.name} ({want.path}) has weights sha256 {want.weights_sha256}; serve that "
                         "student, or name the served one with --student (or $DISTILL_STUDENT)")
    adapter = entry.get(ADAPTER_FIELD)
    if adapter != want.adapter_sha256:
        if want.adapter_sha256 is None:
            raise ModelError(f"student server {where} serves {name!r} with an adapter (adapter sha256 {adapter}), "
                             f"but no {expected.adapter_flag} was given (expected adapter sha256: none); pass that "
                             f"adapter with {expected.adapter_flag}, or serve the base student")
        raise ModelError(f"student server {where} serves {name!r} with adapter sha256 {adapter or 'none'}, but "
                         f"{expected.adapter_flag} {want.adapter} has adapter sha256 {want.adapter_sha256}; serve "
                         f"that adapter, or pass the served one with {expected.adapter_flag}")
    return replace(want, path=served_at)


def server_settings(server: Server, model: str, concurrency: int) -> TeacherSettings:
    """The `openai` wire's settings for the server: `concurrency` requests in flight, the server's key
    from $DISTILL_STUDENT_API_KEY (masked like a teacher's)."""
    if concurrency < 1:
        raise ConfigError(f"batch_size (requests in flight with --engine server) must be at least 1, got {concurrency}")
    key = os.environ.get(ENV_API_KEY, "").strip()
    return TeacherSettings(backend="openai", model=model, base_url=server.url.rstrip("/"),
                           api_key=Secret(key) if key else None, concurrency=concurrency, timeout=server.timeout,
                           key_env=(ENV_API_KEY,))


def connect(server: Server, source: str | os.PathLike[str] | None = None,
            adapter: str | os.PathLike[str] | None = None, *, concurrency: int = 32,
            require_verified: bool = False,
            flags: tuple[str, str] = ("--student-model", "--adapter")) -> "ServedStudent":
    """The served student for `source` + `adapter` at `server`, checked (see the module docstring)."""
    settings = server_settings(server, server.model or "", concurrency)
    try:
        served = asyncio.run(served_models(settings))
    except TeacherError as exc:
        raise ModelError(f"student server {server.shown}: cannot list what it serves ({exc}); check --student-url "
                         "and that the server is running") from None
    expected = Expected(source, adapter, flags)
    entry = choose(served, server.model, expected, server.shown)
    identity = verify(entry, expected, server.shown, require_verified=require_verified)
    return ServedStudent(replace(settings, model=str(entry.get("id"))), identity, server.shown)


def connect_pair(server: Server, source: str | os.PathLike[str] | None, against: str | os.PathLike[str] | None,
                 adapter: str | os.PathLike[str] | None, *, against_model: str | None = None,
                 concurrency: int = 32) -> tuple["ServedStudent", "ServedStudent"]:
    """The current student (`source` + `against`, served as `against_model`) and the new one (`source` +
    `adapter`, served as `server.model`), each checked; ConfigError when one served model would answer
    for both (a server without hashes, and names that do not tell them apart)."""
    current = connect(replace(server, model=against_model), source, against, concurrency=concurrency,
                      flags=("--against-model", "--against"))
    new = connect(server, source, adapter, concurrency=concurrency)
    if current.settings.model == new.settings.model:
        raise ConfigError(f"student server {server.shown}: the current student ({against or 'the base'}) and the "
                          f"new one ({adapter}) would both be answered by {new.settings.model!r}; name each one's "
                          "served model with --against-model and --student-model")
    return current, new


# ---------------------------------------------------------------- answering

class ServedStudent(Answerer):
    """The student as a server serves it, answering as `distill.student.model.Student` does."""

    def __init__(self, settings: TeacherSettings, identity: ModelIdentity, shown: str):
        self.settings = settings
        self.identity = identity
        self.shown = shown

    @property
    def device(self) -> str:
        """Where it answers: the served model at the server (printed as the local student's device is)."""
        return f"{self.shown} as {self.settings.model!r}"

    def iter_answers(self, prompts: Sequence[Prompt], params: GenerationParams, *, batch_size: int = ANSWER_BATCH,
                     skip: frozenset[tuple[str, int]] = frozenset(), progress: bool = False) -> Iterator[list[Answer]]:
        """Yield answers `batch_size` at a time as they come back, with up to the settings' concurrency
        requests in flight throughout; (prompt id, sample) pairs in `skip` are not asked again."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        work = [(p, k) for p in prompts for k in range(params.samples) if (p.id, k) not in skip]
        if not work:
            return
        bar = progress_bar(len(work), enabled=progress)
        loop = asyncio.new_event_loop()
        flight: _Flight | None = None
        try:
            flight = _Flight(loop.run_until_complete(_open(self.settings)), work,
                             lambda handle, p, k: self._ask(handle, p, k, params), self.settings.concurrency)
            while not flight.finished:
                answers = loop.run_until_complete(flight.next(batch_size))
                bar.update(len(answers))
                if answers:
                    yield answers
            if flight.failed is not None:
                raise ModelError(f"student server {self.device}: {flight.failed}. The answers written so far "
                                 "are kept; run the same command again to resume")
        finally:  # also when opening the server's client failed: nothing is left open
            if flight is not None:
                loop.run_until_complete(flight.close())
            loop.close()
            bar.close()

    def request(self, prompt: Prompt, sample: int, params: GenerationParams) -> Request:
        """The chat request for sample `sample` of `prompt`: the decoding parameters, and a seed when sampling."""
        return Request(messages=tuple(dict(m) for m in prompt.messages), temperature=params.temperature,
                       top_p=params.top_p, max_tokens=params.max_new_tokens,
                       seed=None if params.greedy else sample_seed(params.seed, prompt.id, sample),
                       sample=sample, prompt_id=prompt.id)

    async def _ask(self, handle: TeacherHandle, prompt: Prompt, sample: int, params: GenerationParams) -> Answer:
        completion = await handle.complete(self.request(prompt, sample, params))
        return self._to_answer(prompt, sample, completion, params)

    def _to_answer(self, prompt: Prompt, sample: int, completion: Completion, params: GenerationParams) -> Answer:
        return Answer(prompt=prompt, sample=sample, text=completion.text.strip(),
                      prompt_tokens=completion.usage.input_tokens, completion_tokens=completion.usage.output_tokens,
                      finish_reason=completion.finish_reason, model=self.identity, params=params)


async def _open(settings: TeacherSettings) -> TeacherHandle:
    """The teacher layer's live stack for the server, built on the loop its connections will live on."""
    return live_teacher(settings)


class _Flight:
    """Work items sent with up to `limit` requests in flight; answers handed out as they arrive."""

    def __init__(self, handle: TeacherHandle, work: list[tuple[Prompt, int]],
                 ask: Callable[..., Any], limit: int):
        self.handle = handle
        self.pending = iter(work)
        self.left = len(work)
        self.ask = ask
        self.limit = limit
        self.running: set[asyncio.Task[Answer]] = set()
        self.done: list[Answer] = []
        self.failed: TeacherError | None = None  # the first request that failed for good: no more are sent

    @property
    def finished(self) -> bool:
        return self.left == 0 or (self.failed is not None and not self.done)

    def _fill(self) -> None:
        while len(self.running) < self.limit and self.failed is None:
            item = next(self.pending, None)
            if item is None:
                return
            self.running.add(asyncio.ensure_future(self.ask(self.handle, *item)))

    async def next(self, n: int) -> list[Answer]:
        """The next `n` answers to arrive (fewer at the end, or once a request failed for good: then
        `failed` holds its error, and the answers that arrived before it are still handed out)."""
        self._fill()
        while len(self.done) < n and self.running and self.failed is None:
            finished, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            self.running -= finished
            for task in finished:
                error = task.exception()
                if error is None:
                    self.done.append(task.result())
                elif isinstance(error, TeacherError):
                    self.failed = self.failed or error
                else:
                    raise error
            self._fill()
        out, self.done = self.done[:n], self.done[n:]
        self.left -= len(out)
        return out

    async def close(self) -> None:
        """Cancel what is still in flight and close the client."""
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        await self.handle.aclose()

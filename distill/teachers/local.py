"""The `local` backend: a transformers causal LM in this process, the embedded student by default.

`local:default` makes the embedded SmolLM2-135M-Instruct its own teacher, so critique and revision
run fully offline; `local:/models/qwen` uses any local model directory. The model loads (through
`distill.student.Student.load`) on the first request, in a worker thread, so the event loop and
`distill config` never wait for it; when it is the student's own model it shares the weights the
student already read (one copy per process, `distill.student.weights`).

Concurrent `complete()` calls are batched: they queue, and a single worker takes whatever is
waiting (up to `batch_size`) and generates it as one batch in a thread, through
`distill.student.generation` (the same per-row decoding `distill serve` uses): rows may differ in
length, `max_tokens`, sampling settings and schema. A sampled request is seeded from its own
content (seed, sample index, messages, budget, schema), so it draws the same answer whatever else
shares its batch.

A requested JSON schema is honoured by constrained decoding (`distill.student.grammar`, xgrammar):
the output is always a complete JSON document that follows the schema; a row that reaches its
budget is closed in at most `CLOSING_ALLOWANCE` extra tokens and reported with finish reason `length`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Mapping, Sequence

from distill.errors import ConfigError, DistillError, SchemaError, TeacherError
from distill.records.ids import content_hash
from distill.student.collector import Collector, settle
from distill.student.generation import Job, Result, generate
from distill.student.grammar import Grammars, decoder_version
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.registry import BackendSpec
from distill.teachers.settings import TeacherSettings

DEFAULT_NAMES = ("default", "embedded")


def model_spec(settings: TeacherSettings) -> tuple[str | None, str | None]:
    """(model directory or hub id, None for the embedded default; adapter directory or None) from
    `local:MODEL` or `local:MODEL?adapter=DIR` (a LoRA adapter applied to the model)."""
    model, sep, query = settings.model.partition("?")
    adapter = None
    if sep:
        key, eq, value = query.partition("=")
        if key != "adapter" or not eq or not value:
            raise ConfigError(f"teacher local:{settings.model}: expected local:MODEL?adapter=DIR after the '?', "
                              f"got {query!r}")
        adapter = value
    return (None if model in DEFAULT_NAMES else model), adapter


def model_source(settings: TeacherSettings) -> str | None:
    """None for the embedded default, else the model directory (or hub id) to load."""
    return model_spec(settings)[0]


@dataclass
class _Job:
    request: Request
    future: asyncio.Future


class LocalTeacher:
    """A Teacher answering from a local model; requests made concurrently are generated together."""

    backend = "local"

    def __init__(self, settings: TeacherSettings, loader: Callable[[str | None], Any] | None = None):
        self.settings = settings
        self.model = settings.model
        self.batch_size = settings.batch_size
        self._loader = loader or partial(_load_student, adapter=model_spec(settings)[1])
        self._engine: _Engine | None = None
        self._collector: Collector[_Job] = Collector(self._dispatch, max_batch=settings.batch_size)
        self.batches: list[int] = []  # sizes of the batches generated, for tests and reports

    def identity(self) -> Mapping[str, Any]:
        return identity(self.settings)

    async def complete(self, request: Request) -> Completion:
        if request.tools:
            raise TeacherError(f"local:{self.model}: the local backend does not run tools; "
                               "drop `tools` or use a hosted teacher", reason="unsupported")
        started = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        self._collector.put(_Job(request, future))
        completion = await future
        return replace(completion, latency_s=time.monotonic() - started)

    async def aclose(self) -> None:
        await self._collector.aclose(TeacherError(f"local:{self.model}: teacher closed", reason="closed"))

    async def _dispatch(self, group: list[_Job]) -> None:
        try:
            if self._engine is None:
                self._engine = _Engine(await asyncio.to_thread(self._loader, model_source(self.settings)))
            self.batches.append(len(group))
            results: Sequence[Completion | DistillError] = await asyncio.to_thread(
                self._engine.generate, [j.request for j in group])
        except DistillError as exc:  # a model that cannot load (ModelError), a grammar the model broke
            results = [exc] * len(group)
        except Exception as exc:  # torch/transformers failures: report per request, keep serving
            error = TeacherError(f"local:{self.model}: generation failed ({type(exc).__name__}: {exc})",
                                 reason="local_error")
            results = [error] * len(group)
        settle(group, results)


def _load_student(source: str | None, adapter: str | None = None) -> Any:
    from distill.student.model import Student

    return Student.load(source, adapter=adapter)


# ---------------------------------------------------------------- generation (runs in a thread)

class _Engine(Grammars):
    """The local teacher's generation: a batch of requests, each with its own schema, budget and sampling."""

    def generate(self, requests: list[Request]) -> list[Completion | DistillError]:
        """One result per request: a Completion, or the error that request alone ran into."""
        results: list[Completion | DistillError | None] = [None] * len(requests)
        jobs: dict[int, Job] = {}
        for i, request in enumerate(requests):
            try:
                jobs[i] = self._job(request)
            except TeacherError as exc:
                results[i] = exc
        if jobs:
            done = generate(self, list(jobs.values()))
            for i, result in zip(jobs, done):
                results[i] = self._completion(result)
        return [r for r in results if r is not None]

    def _job(self, request: Request) -> Job:
        """The request as a generation job; TeacherError when its prompt or schema cannot run."""
        student, name = self.student, self.student.identity.name
        text = student.render(request.messages)
        prompt_tokens = len(student.tokenizer(text, add_special_tokens=False)["input_ids"])
        if prompt_tokens >= student.context_window:
            raise TeacherError(f"local:{name}: a prompt of {prompt_tokens} tokens does not fit the "
                               f"context window of {student.context_window}", reason="too_long")
        try:
            grammar = self.grammar(request.response_schema) if request.response_schema is not None else None
        except SchemaError as exc:
            raise TeacherError(f"local:{exc}", reason="bad_schema") from None
        sampled = request.temperature > 0
        return Job(text=text, prompt_tokens=prompt_tokens, max_tokens=request.max_tokens,
                   temperature=request.temperature, top_p=request.top_p if sampled else 1.0,
                   seed=_request_seed(request) if sampled else None, stop=tuple(request.stop),
                   strip=request.response_schema is None, grammar=grammar,
                   room=student.context_window - prompt_tokens)

    def _completion(self, result: Result) -> Completion:
        return Completion(text=result.text, finish_reason=result.finish_reason,
                          usage=Usage(result.prompt_tokens, result.completion_tokens),
                          model=self.student.identity.name,
                          raw={"token_ids": list(result.token_ids), "finish_reason": result.finish_reason})


def _request_seed(r: Request) -> int:
    """A seed from what decides the sampled tokens (not `stop`, which only cuts the text after)."""
    key = [r.seed, r.sample, [dict(m) for m in r.messages], r.max_tokens,
           dict(r.response_schema) if r.response_schema is not None else None]
    return int(content_hash(key), 16) % 2**63


# ---------------------------------------------------------------- the registered backend

def identity(settings: TeacherSettings) -> dict[str, Any]:
    """Model directory and weights hash (and the adapter's), without loading the model."""
    from distill.student.model import resolve_source, weights_sha256

    source, adapter = model_spec(settings)
    directory, name, known_sha = resolve_source(source)
    out = {"backend": "local", "model": settings.model, "name": name, "path": str(directory),
           "weights_sha256": known_sha or weights_sha256(directory), "constrained_decoding": decoder_version()}
    if adapter is not None:
        out["adapter_sha256"] = weights_sha256(Path(adapter))
    return out


# ---------------------------------------------------------------- token scoring (on-policy distillation)

class LocalScorer:
    """Full-vocabulary (or top-k) next-token log-probs of given token ids from the local model, in process."""

    full_vocabulary = True

    def __init__(self, settings: TeacherSettings, loader: Callable[[], Any] | None = None):
        self.settings = settings
        source, adapter = model_spec(settings)
        self._loader = loader or partial(_load_student, source, adapter)
        self._student: Any = None

    @property
    def student(self) -> Any:
        if self._student is None:
            self._student = self._loader()
        return self._student

    def identity(self) -> Mapping[str, Any]:
        return identity(self.settings)

    def vocabulary(self, student_tokenizer: Any) -> Any:
        from distill.teachers.scoring import Vocabulary

        return Vocabulary.of(self.student.tokenizer)

    def score(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]], k: int) -> list[Any]:
        """One TokenScores per row: log-probs at each answer position (position i predicts answer token i)."""
        import torch

        from distill.teachers.scoring import TokenScores
        from distill.student.model import head_logits

        model = self.student.model
        out: list[Any] = []
        with torch.no_grad():  # not inference_mode: the scores enter the student's loss graph as constants
            for prompt, answer in rows:  # one row at a time: no padding to get wrong, rows are short
                ids = torch.tensor([[*prompt, *answer]], device=model.device)
                picked = torch.zeros((1, ids.shape[1] - 1), dtype=torch.bool, device=model.device)
                picked[0, len(prompt) - 1:] = True
                logps = torch.log_softmax(head_logits(model, ids, torch.ones_like(ids), picked).float(), dim=-1)
                if k == 0:
                    out.append(TokenScores(full=logps))
                else:
                    top = logps.topk(k, dim=-1)
                    out.append(TokenScores(ids=tuple(map(tuple, top.indices.tolist())),
                                           logprobs=tuple(map(tuple, top.values.tolist()))))
        return out

    def close(self) -> None:
        self._student = None


def scores(settings: TeacherSettings, cache_dir: Any = None) -> Any:
    from distill.teachers.scoring import Capability

    return Capability(True, "full-vocabulary log-probs in process (or top-k)")


def make_scorer(settings: TeacherSettings, cache_dir: Any = None) -> LocalScorer:
    return LocalScorer(settings)


def create(settings: TeacherSettings) -> LocalTeacher:
    return LocalTeacher(settings)


BACKEND = BackendSpec(
    name="local",
    summary="a transformers causal LM in process (default: the embedded SmolLM2 student); "
            "batched; JSON schemas by constrained decoding (xgrammar)",
    make=create,
    identify=identity,
    scores=scores,
    scorer=make_scorer,
)

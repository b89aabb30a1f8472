"""The `local` backend: a transformers causal LM in this process, the embedded student by default.

`local:default` makes the embedded SmolLM2-135M-Instruct its own teacher, so critique and revision
run fully offline; `local:/models/qwen` uses any local model directory. The model loads (through
`distill.student.Student.load`) on the first request, in a worker thread, so the event loop and
`distill config` never wait for it; when it is the student's own model it shares the weights the
student already read (one copy per process, `distill.student.weights`).

Concurrent `complete()` calls are batched: they queue, and a single worker takes whatever is
waiting (up to `batch_size`), groups it by sampling settings, and generates each group in one
`model.generate` call in a thread. Rows may differ in length, `max_tokens` and schema.

A requested JSON schema is honoured by constrained decoding with xgrammar (a grammar engine kept
by the MLC/vLLM/SGLang people, fast on CPU, works with transformers 5): at each step only tokens
that keep the output a valid prefix of the schema survive. That alone does not make a 135M model's
output parseable, because it can run out of `max_tokens` inside a string. So when a constrained row
reaches its budget it switches to closing mode: among the tokens the grammar allows it picks end of
text, then a closing quote, then tokens that close objects and arrays, then commas, leaving the model free
only where the grammar leaves no such choice (a digit, a forced key); see `closing_tiers`. The output is then a complete
JSON document that follows the schema, reported with finish reason `length`; closing mode gets at
most `CLOSING_ALLOWANCE` extra tokens. Unconstrained rows are simply stopped at their budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from importlib import metadata
from typing import Any, Callable, Mapping, Sequence

from distill.errors import ConfigError, DistillError, TeacherError
from distill.records.ids import content_hash
from distill.student.collector import Collector, settle
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.registry import BackendSpec
from distill.teachers.settings import TeacherSettings

CLOSING_ALLOWANCE = 128  # extra tokens a constrained row may use to close its JSON after its budget
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

    async def _dispatch(self, jobs: list[_Job]) -> None:
        for group in _by_sampling(jobs):
            await self._run(group)

    async def _run(self, group: list[_Job]) -> None:
        try:
            if self._engine is None:
                self._engine = _Engine(await asyncio.to_thread(self._loader, model_source(self.settings)))
            self.batches.append(len(group))
            results: Sequence[Completion | DistillError] = await asyncio.to_thread(
                self._engine.generate, [j.request for j in group])
        except DistillError as exc:
            results = [exc] * len(group)
        except Exception as exc:  # torch/transformers failures: report per request, keep serving
            error = TeacherError(f"local:{self.model}: generation failed ({type(exc).__name__}: {exc})",
                                 reason="local_error")
            results = [error] * len(group)
        settle(group, results)


def _by_sampling(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs grouped by decoding mode: greedy together, sampled by (temperature, top_p)."""
    groups: dict[tuple[float, float], list[_Job]] = {}
    for job in jobs:
        r = job.request
        key = (0.0, 1.0) if r.temperature == 0 else (r.temperature, r.top_p)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def _load_student(source: str | None, adapter: str | None = None) -> Any:
    from distill.student.model import Student

    return Student.load(source, adapter=adapter)


# ---------------------------------------------------------------- generation (runs in a thread)

class Grammars:
    """A loaded student plus the grammar machinery for it: JSON-schema grammars (compiled with
    xgrammar for the student's tokenizer) and the closing tiers, each built on first use. The local
    teacher generates with it; `distill serve` uses it for requests with a JSON response format."""

    def __init__(self, student: Any):
        self.student = student
        self.vocab_size = int(student.model.config.vocab_size)
        self._compiler: Any = None
        self._tiers: Any = None

    def grammar(self, schema: Mapping[str, Any]) -> Any:
        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.student.tokenizer, vocab_size=self.vocab_size,
                                                      stop_token_ids=list(self.student.eos_ids))
            self._compiler = xgr.GrammarCompiler(info)
        try:
            return self._compiler.compile_json_schema(json.dumps(dict(schema)), any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError for schemas it cannot compile
            raise TeacherError(f"local:{self.student.identity.name}: cannot compile the response schema "
                               f"({type(exc).__name__}: {exc})", reason="bad_schema") from None

    def tiers(self) -> Any:
        if self._tiers is None:
            self._tiers = closing_tiers(self.student.tokenizer, self.vocab_size, self.student.eos_ids)
        return self._tiers


class _Engine(Grammars):
    """The local teacher's generation: a batch of requests, each with its own schema and budget."""

    def generate(self, requests: list[Request]) -> list[Completion | DistillError]:
        """One result per request: a Completion, or the error that request alone ran into."""
        results: list[Completion | DistillError | None] = [None] * len(requests)
        grammars: list[Any] = []
        for i, request in enumerate(requests):
            try:
                grammars.append(self.grammar(request.response_schema) if request.response_schema is not None else None)
                self._check_length(request)
            except DistillError as exc:
                results[i] = exc
        runnable = [i for i, r in enumerate(results) if r is None]
        if runnable:
            done = self._generate([requests[i] for i in runnable], [grammars[i] for i in runnable])
            for i, completion in zip(runnable, done):
                results[i] = completion
        return [r for r in results if r is not None]

    def _check_length(self, request: Request) -> None:
        student = self.student
        length = len(student.tokenizer(student.render(request.messages), add_special_tokens=False)["input_ids"])
        if length >= student.context_window:
            raise TeacherError(f"local:{student.identity.name}: a prompt of {length} tokens does not fit the "
                               f"context window of {student.context_window}", reason="too_long")

    def _generate(self, requests: list[Request], grammars: list[Any]) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        student, first = self.student, requests[0]
        texts = [student.render(r.messages) for r in requests]
        enc = student.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(student.device)
        budgets = [r.max_tokens for r in requests]
        longest = max(b + (CLOSING_ALLOWANCE if g is not None else 0) for b, g in zip(budgets, grammars))
        room = student.context_window - enc["input_ids"].shape[1]
        constrained = any(g is not None for g in grammars)
        sampled = first.temperature > 0
        guide = SchemaGuide(grammars, budgets, student.eos_ids, self.tiers() if constrained else None,
                            top_p=first.top_p if sampled and first.top_p < 1 else None)
        if sampled:
            torch.manual_seed(_batch_seed(requests))
        config = GenerationConfig(max_new_tokens=max(1, min(longest, room)), do_sample=sampled,
                                  temperature=first.temperature if sampled else None,
                                  top_p=None, top_k=None,  # top-p runs inside the guide, after the grammar
                                  pad_token_id=student.tokenizer.pad_token_id, eos_token_id=list(student.eos_ids))
        with torch.inference_mode():
            output = student.model.generate(**enc, generation_config=config,
                                            logits_processor=LogitsProcessorList([guide]))
        generated = output[:, enc["input_ids"].shape[1]:].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        return [self._completion(r, ids, int(n), guide.truncated[i])
                for i, (r, ids, n) in enumerate(zip(requests, generated, prompt_lens))]

    def _completion(self, request: Request, ids: list[int], prompt_tokens: int, truncated: bool) -> Completion:
        eos = set(self.student.eos_ids)
        end = next((i for i, t in enumerate(ids) if t in eos), None)
        kept = ids if end is None else ids[:end]
        text = self.student.tokenizer.decode(kept, skip_special_tokens=True)
        finish = "length" if truncated or end is None else "stop"
        for stop in request.stop:
            if stop in text:
                text, finish = text[:text.index(stop)], "stop"
        if request.response_schema is None:
            text = text.strip()
        usage = Usage(prompt_tokens, len(kept) + (end is not None and not truncated))  # a forced stop is not output
        return Completion(text=text, finish_reason=finish, usage=usage, model=self.student.identity.name,
                          raw={"token_ids": kept, "finish_reason": finish})


def _batch_seed(requests: Sequence[Request]) -> int:
    """A seed from what decides the sampled tokens (not `stop`, which only cuts the text after)."""
    keys = [[r.seed, r.sample, [dict(m) for m in r.messages], r.max_tokens,
             dict(r.response_schema) if r.response_schema is not None else None] for r in requests]
    return int(content_hash(keys), 16) % 2**63


def closing_tiers(tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> list[Any]:
    """Token ids, in preference order, for ending a JSON document quickly.

    1. end of text; 2. a quote, possibly followed by closing brackets (`"`, `"}`, `"]}`): inside a
    string it closes the string, and outside one the grammar only allows it where a key or value
    must begin; 3. closing brackets only (`}`, `]}`): tried after quotes, since inside a string a
    bracket is just text; 4. a comma, where the grammar still requires more items or keys.
    """
    import torch

    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    tiers: list[list[int]] = [[i for i in eos_ids if i < vocab_size], [], [], []]
    for i, piece in enumerate(pieces):
        piece = piece or ""
        if piece.startswith('"') and set(piece[1:]) <= set("}]"):
            tiers[1].append(i)
        elif piece and set(piece) <= set("}]"):
            tiers[2].append(i)
        elif piece == ",":
            tiers[3].append(i)
    return [torch.tensor(ids, dtype=torch.long) for ids in tiers]


class SchemaGuide:
    """A logits processor that applies each row's grammar and enforces each row's token budget.

    transformers runs custom processors after its own temperature and top-p warpers; top-p before
    the grammar could leave a row no allowed token at all, so nucleus sampling is done here, after
    the mask, with transformers' own `TopPLogitsWarper`.
    """

    def __init__(self, grammars: Sequence[Any], budgets: Sequence[int], eos_ids: Sequence[int],
                 tiers: list[Any] | None, *, top_p: float | None = None):
        import xgrammar as xgr
        from transformers import TopPLogitsWarper

        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.budgets = list(budgets)
        self.eos = list(eos_ids)
        self.tiers = tiers
        self.bitmask: Any = None
        self.finished = [False] * len(budgets)
        self.truncated = [False] * len(budgets)
        self.step = 0
        self.top_p = TopPLogitsWarper(top_p) if top_p is not None else None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import xgrammar as xgr

        if self.step > 0:
            self._accept(input_ids[:, -1].tolist())
        rows = [i for i, m in enumerate(self.matchers) if m is not None and not self.finished[i]]
        if rows and self.bitmask is None:
            self.bitmask = xgr.allocate_token_bitmask(scores.shape[0], scores.shape[1])
        if rows:
            for i in rows:
                self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
            xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), indices=rows,
                                            backend="cpu" if scores.device.type == "cpu" else "auto")
        for i, budget in enumerate(self.budgets):
            if not self.finished[i] and self.step >= budget:
                self.truncated[i] = True
                self._close(i, scores)
        self.step += 1
        return self.top_p(input_ids, scores) if self.top_p is not None else scores

    def _accept(self, last: list[int]) -> None:
        for i, token in enumerate(last):
            if self.finished[i]:
                continue
            if token in self.eos:
                self.finished[i] = True
            elif self.matchers[i] is not None and not self.matchers[i].accept_token(token):
                raise TeacherError(f"constrained decoding: row {i} produced token {token}, which its grammar "
                                   "rejects", reason="local_error")

    def _close(self, i: int, scores: Any) -> None:
        """Steer row `i` to its end: EOS at once when free, else the quickest way out of the JSON."""
        if self.matchers[i] is None or self.tiers is None:
            scores[i].fill_(float("-inf"))
            scores[i, self.eos] = 0.0
            return
        for tier in self.tiers:
            tier = tier.to(scores.device)
            candidates = tier[scores[i, tier] > float("-inf")]
            if candidates.numel():
                kept = scores[i, candidates]
                scores[i].fill_(float("-inf"))
                scores[i, candidates] = kept
                return


# ---------------------------------------------------------------- the registered backend

@lru_cache(maxsize=None)
def _decoder_version() -> str:
    try:
        return f"xgrammar=={metadata.version('xgrammar')}"
    except metadata.PackageNotFoundError:
        return "xgrammar (not installed)"


def identity(settings: TeacherSettings) -> dict[str, Any]:
    """Model directory and weights hash (and the adapter's), without loading the model."""
    from distill.student.model import resolve_source, weights_sha256

    source, adapter = model_spec(settings)
    directory, name, known_sha = resolve_source(source)
    out = {"backend": "local", "model": settings.model, "name": name, "path": str(directory),
           "weights_sha256": known_sha or weights_sha256(directory), "constrained_decoding": _decoder_version()}
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

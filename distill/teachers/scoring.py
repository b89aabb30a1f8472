"""Teacher scoring: the teacher's next-token log-probabilities at each position of given token ids.

On-policy distillation (`distill.training.onpolicy`) samples answers from the student and asks the
teacher how likely each of the student's tokens, and the alternatives to it, would have been. That
is a different call from `Teacher.complete` (which writes text), and not every backend can make it:

    backend                        can score?
    local (transformers)           yes: full-vocabulary log-probs, in process
    openai at an OpenAI-compatible when the server takes token ids with `echo` + `logprobs` on its
    server (vLLM, ...)             completions endpoint (top-k per position); one probe request
                                   decides, and its answer is kept in the cache directory, keyed
                                   by base URL and model
    openai (api.openai.com)        no (chat completions return logprobs of generated tokens only)
    anthropic                      no

A backend declares this in its `BackendSpec` (`scores`: a function of the settings returning a
`Capability`, and `scorer`: one that builds its `Scorer`); `capability()` reads it, and `distill
config` shows it.

Scores go through the same persistent cache as every teacher call (`CachedScorer`): the key is
the teacher's identity, the token ids and k, written as a `Request` whose only message holds the
ids, so `distill cache stats/export/import/verify` treat them like any answer. A full-vocabulary
score (k = 0, local only) is not stored: 49,152 floats per token would make one sample megabytes,
and recomputing it is one forward pass of a model already in memory.

Scoring needs the teacher and the student to share one vocabulary: `check_vocabulary` compares
the two tokenizers (size and a hash of the token-to-id map) and raises `VocabularyMismatch`
naming both models. A server's tokenizer cannot be read, so a server scorer checks instead that
the server echoes the student's token ids of a probe text as the student's own tokens (and is
refused when it echoes nothing to check); it then reports the student's vocabulary as its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from distill.errors import ConfigError, VocabularyMismatch
from distill.records.ids import canonical_json
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.settings import TeacherSettings

SCORE_ROLE = "token_scores"  # the role of the one message of a score's cache request
LOGPROB_DIGITS = 5  # stored log-probs are rounded to this many decimals


@dataclass(frozen=True)
class Capability:
    """Whether a backend can score given tokens: True, False or None (not yet known: probed on
    first use), and how (shown by `distill config`)."""

    can_score: bool | None
    how: str

    def text(self) -> str:
        word = {True: "yes", False: "no", None: "unknown"}[self.can_score]
        return f"{word}: {self.how}"


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary: its size and a hash of its token-to-id map."""

    size: int
    sha256: str

    @classmethod
    def of(cls, tokenizer: Any) -> "Vocabulary":
        vocab = tokenizer.get_vocab()
        digest = hashlib.sha256(canonical_json(sorted(vocab.items(), key=lambda kv: kv[1])).encode()).hexdigest()
        return cls(size=len(vocab), sha256=digest)


def check_vocabulary(student_name: str, student: Vocabulary, teacher_name: str, teacher: Vocabulary) -> None:
    """VocabularyMismatch naming both models and sizes unless the two vocabularies are the same."""
    if student != teacher:
        same_size = " (same size, different tokens)" if student.size == teacher.size else ""
        raise VocabularyMismatch(
            f"the teacher {teacher_name} has a vocabulary of {teacher.size} tokens and the student {student_name} "
            f"one of {student.size}{same_size}: on-policy distillation scores the student's token ids with the "
            "teacher, so both must use the same tokenizer (cross-tokenizer alignment is not supported); choose a "
            "teacher of the student's family, or distill with `distill run` + `distill train` (SFT on revisions)")


@dataclass(frozen=True)
class TokenScores:
    """The teacher's log-probabilities for the next token at each answer position.

    `ids[i]` and `logprobs[i]` are the teacher's top-k candidates after the first i answer tokens
    (log-probs over the whole vocabulary, so their probabilities sum to at most 1: the rest is the
    tail). `full` instead holds a [positions, vocabulary] tensor of log-probs (local teachers, k = 0).
    """

    ids: tuple[tuple[int, ...], ...] = ()
    logprobs: tuple[tuple[float, ...], ...] = ()
    full: Any = None

    @property
    def positions(self) -> int:
        return int(self.full.shape[0]) if self.full is not None else len(self.ids)

    def to_text(self) -> str:
        return canonical_json({"ids": [list(r) for r in self.ids],
                               "logprobs": [[round(x, LOGPROB_DIGITS) for x in r] for r in self.logprobs]})

    @classmethod
    def from_text(cls, text: str) -> "TokenScores":
        data = json.loads(text)
        return cls(ids=tuple(tuple(int(i) for i in r) for r in data["ids"]),
                   logprobs=tuple(tuple(float(x) for x in r) for r in data["logprobs"]))


@runtime_checkable
class Scorer(Protocol):
    """What a backend that can score implements. `score` takes rows of (prompt ids, answer ids) and
    returns, per row, the teacher's log-probs for each answer token's position: top-k (k > 0) or
    the full vocabulary (k = 0, only where `full_vocabulary` is True)."""

    full_vocabulary: bool

    def identity(self) -> Mapping[str, Any]: ...

    def vocabulary(self, student_tokenizer: Any) -> Vocabulary: ...

    def score(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]], k: int) -> list[TokenScores]: ...

    def close(self) -> None: ...


def capability(settings: TeacherSettings, cache_dir: Any = None) -> Capability:
    """The scoring capability of the configured backend (its `BackendSpec.scores`), without
    building a client; a backend that declares nothing cannot score."""
    from distill.teachers import registry

    spec = registry.load_backend(settings.backend)
    scores = getattr(spec, "scores", None)
    if scores is None:
        return Capability(False, f"the {settings.backend} backend declares no token scoring")
    return scores(settings, cache_dir)


def score_request(tokens: Sequence[int], answer_start: int, k: int) -> Request:
    """The cache's request for a score: the token ids, where the answer starts, and k."""
    return Request(messages=({"role": SCORE_ROLE, "content": canonical_json([answer_start, list(tokens)])},),
                   temperature=0.0, max_tokens=k, schema_name=SCORE_ROLE)


class CachedScorer:
    """A Scorer's top-k scores kept in the teacher-call cache (full-vocabulary ones are not: see
    the module docstring). Offline, a miss is an OfflineMiss like any teacher call's."""

    def __init__(self, scorer: Scorer | None, identity: Mapping[str, Any], store: Any, *, offline: bool = False,
                 factory: Any = None):
        self._scorer = scorer
        self._factory = factory
        self._identity = {**dict(identity), "call": "token_scores"}
        self.store = store
        self.offline = offline
        self.hits = 0
        self.misses = 0
        self.scored_tokens = 0  # answer tokens the teacher scored (misses only): its cost

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = self._factory()
        return self._scorer

    @property
    def full_vocabulary(self) -> bool:
        return self.scorer.full_vocabulary

    def identity(self) -> Mapping[str, Any]:
        return dict(self._identity)

    def vocabulary(self, student_tokenizer: Any) -> Vocabulary:
        return self.scorer.vocabulary(student_tokenizer)

    def score(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]], k: int) -> list[TokenScores]:
        if k == 0:
            if not self.scorer.full_vocabulary:
                raise ConfigError(f"teacher {self._identity.get('backend')}:{self._identity.get('model')} gives "
                                  "only top-k scores: set onpolicy_top_k to a positive k (e.g. 20)")
            self.misses += len(rows)
            self.scored_tokens += sum(len(a) for _, a in rows)
            return self.scorer.score(rows, 0)
        from distill.teachers.cache.entry import entry_of
        from distill.teachers.cache.key import canonical_request, key_of

        out: list[TokenScores | None] = [None] * len(rows)
        todo: list[tuple[int, str, Request]] = []
        for i, (prompt, answer) in enumerate(rows):
            request = score_request([*prompt, *answer], len(prompt), k)
            canonical = canonical_request(self._identity, request)
            entry = self.store.get(key_of(canonical))
            if entry is not None:
                out[i] = TokenScores.from_text(entry.text)
                self.hits += 1
            else:
                todo.append((i, canonical, request))
        if todo and self.offline:
            from distill.teachers.cache.layer import MissTally

            raise MissTally(self.store.path).record(todo[0][2], key_of(todo[0][1]))
        if todo:
            scored = self.scorer.score([rows[i] for i, _, _ in todo], k)
            entries = []
            for (i, canonical, request), scores in zip(todo, scored):
                stored = TokenScores.from_text(scores.to_text())  # exactly what a later hit reads
                out[i] = stored
                n = len(rows[i][1])
                entries.append(entry_of(self._identity, canonical, request,
                                        Completion(text=scores.to_text(), finish_reason="stop",
                                                   usage=Usage(len(rows[i][0]) + n, 0),
                                                   model=str(self._identity.get("model") or ""))))
                self.scored_tokens += n
            self.misses += len(todo)
            self.store.put_many(entries)
        return [s for s in out if s is not None]

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
        self.store.close()


def open_scorer(settings: TeacherSettings, *, cache_dir: Any = None, offline: bool | None = None) -> CachedScorer:
    """The configured teacher as a cached Scorer; ConfigError when its backend cannot score."""
    from distill.teachers import registry
    from distill.teachers.cache.layer import offline_from_env
    from distill.teachers.cache.store import CacheStore, cache_path

    offline = offline_from_env() if offline is None else offline
    spec = registry.load_backend(settings.backend)
    found = capability(settings, cache_dir)
    if found.can_score is False or getattr(spec, "scorer", None) is None:
        raise ConfigError(f"teacher {settings.name} cannot score given tokens ({found.how}); on-policy distillation "
                          "needs a local transformers teacher (local:DIR) or an OpenAI-compatible server that "
                          "returns prompt logprobs (vLLM)")
    identity = registry.backend_identity(settings, spec)
    store = CacheStore(cache_path(cache_dir))
    return CachedScorer(None, identity, store, offline=offline,
                        factory=lambda: spec.scorer(settings, cache_dir))


def logprob_or_floor(x: float) -> float:
    """A provider's log-prob as a finite float (-inf, which some servers send, becomes -1e4)."""
    return x if math.isfinite(x) else -1e4

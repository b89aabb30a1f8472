"""Constrained decoding: JSON-schema grammars for the student's tokenizer, and a budget that always closes.

A requested JSON schema is honoured with xgrammar (a grammar engine kept by the MLC/vLLM/SGLang
people, fast on CPU, works with transformers 5): at each step only tokens that keep the output a
valid prefix of the schema survive. That alone does not make a 135M model's output parseable,
because it can run out of tokens inside a string. So when a constrained row reaches its budget it
switches to closing mode: among the tokens the grammar allows it picks end of text, then a closing
quote, then tokens that close objects and arrays, then commas, leaving the model free only where the
grammar leaves no such choice (a digit, a forced key); see `closing_tiers`. The output is then a
complete JSON document that follows the schema, and closing mode gets at most `CLOSING_ALLOWANCE`
extra tokens.

Both the local teacher (a judge's verdict as JSON) and `distill serve` (an OpenAI `response_format`)
decode through this module, by way of `distill.student.generation`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from typing import Any, Mapping, Sequence

from distill.errors import ModelError, SchemaError

CLOSING_ALLOWANCE = 128  # extra tokens a constrained row may use to close its JSON after its budget


class Grammars:
    """A loaded student plus the grammar machinery for it: JSON-schema grammars (compiled with
    xgrammar for the student's tokenizer) and the closing tiers, each built on first use."""

    def __init__(self, student: Any):
        self.student = student
        self.vocab_size = int(student.model.config.vocab_size)
        self._compiler: Any = None
        self._tiers: Any = None

    def grammar(self, schema: Mapping[str, Any]) -> Any:
        """The compiled grammar of `schema`; SchemaError when xgrammar cannot compile it."""
        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.student.tokenizer, vocab_size=self.vocab_size,
                                                      stop_token_ids=list(self.student.eos_ids))
            self._compiler = xgr.GrammarCompiler(info)
        try:
            return self._compiler.compile_json_schema(json.dumps(dict(schema)), any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError for schemas it cannot compile
            raise SchemaError(f"{self.student.identity.name}: cannot compile the response schema "
                              f"({type(exc).__name__}: {exc})") from None

    def tiers(self) -> Any:
        if self._tiers is None:
            self._tiers = closing_tiers(self.student.tokenizer, self.vocab_size, self.student.eos_ids)
        return self._tiers


@lru_cache(maxsize=None)
def decoder_version() -> str:
    """The grammar engine's version, part of a local teacher's identity."""
    try:
        return f"xgrammar=={metadata.version('xgrammar')}"
    except metadata.PackageNotFoundError:
        return "xgrammar (not installed)"


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
    It runs before the row sampler (`generation.RowSampler`), so temperature and top-p apply to the
    tokens the grammar allows (top-p before the grammar could leave a row no allowed token at all)."""

    def __init__(self, grammars: Sequence[Any], budgets: Sequence[int], eos_ids: Sequence[int],
                 tiers: list[Any] | None):
        import xgrammar as xgr

        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.budgets = list(budgets)
        self.eos = list(eos_ids)
        self.tiers = tiers
        self.bitmask: Any = None
        self.finished = [False] * len(budgets)
        self.truncated = [False] * len(budgets)
        self.step = 0

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
        return scores

    def _accept(self, last: list[int]) -> None:
        for i, token in enumerate(last):
            if self.finished[i]:
                continue
            if token in self.eos:
                self.finished[i] = True
            elif self.matchers[i] is not None and not self.matchers[i].accept_token(token):
                raise ModelError(f"constrained decoding: row {i} produced token {token}, which its grammar "
                                 "rejects")

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

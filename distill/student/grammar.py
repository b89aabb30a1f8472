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
decode through this module, by way of `distill.student.generation.JobRules`, which holds one
xgrammar matcher per row and applies the masks of a step's rows together.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from typing import Any, Mapping, Sequence

from distill.errors import SchemaError

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


def close_row(scores: Any, tiers: list[Any]) -> None:
    """Steer one row ([vocab] logits, changed in place) out of its JSON: among the tokens its grammar
    still allows, only the first tier (`closing_tiers`) that has any stays possible."""
    for tier in tiers:
        tier = tier.to(scores.device)
        candidates = tier[scores[tier] > float("-inf")]
        if candidates.numel():
            kept = scores[candidates]
            scores.fill_(float("-inf"))
            scores[candidates] = kept
            return

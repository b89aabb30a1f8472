"""Novelty of a new prompt: its highest ROUGE-L against every prompt kept so far.

Self-Instruct (Wang et al., 2023) keeps a generated instruction only when its ROUGE-L F-measure
against every instruction already in the pool is below 0.7. ROUGE-L here is the F1 of the longest
common subsequence of the two word sequences, F = 2·LCS / (n + m), as `rouge-score` computes it
without stemming; words are Unicode word runs, case-folded (`rouge-score` keeps only ASCII
`[a-z0-9]` runs, so a prompt in Chinese or Greek would have no words at all there).

Comparing every candidate with every kept prompt by dynamic programming is O(n·m) per pair and far
too slow at 10,000 prompts, so `NoveltyIndex.most_similar` does it in two steps:

1. a bound from an inverted index: the LCS of two sequences is at most the size of their multiset
   intersection, which is an exact count over (word, k-th occurrence) features, summed for every
   kept prompt at once with `numpy.bincount` over the postings of the candidate's features;
2. the exact LCS (bit-parallel, Allison-Dix / Hyyrö: one big-integer pass per word of the other
   text) only for kept prompts whose bound beats the best score found so far, best bound first.

The result is exact: the same maximum as comparing against every kept prompt. `bench/novelty.py` measures it at 10,000 prompts.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from typing import Sequence

import numpy as np

_WORDS = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words ROUGE-L compares: Unicode word runs, case-folded."""
    return _WORDS.findall(text.casefold())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of two word sequences (bit-parallel)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for word in b:
        u = v & masks.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    """ROUGE-L F1 of two texts (or word sequences): 2·LCS / (len(a) + len(b)); 0 when either is empty."""
    wa = words(a) if isinstance(a, str) else list(a)
    wb = words(b) if isinstance(b, str) else list(b)
    if not wa or not wb:
        return 0.0
    return 2 * lcs_length(wa, wb) / (len(wa) + len(wb))


def _features(tokens: Sequence[str]) -> list[str]:
    """(word, k-th occurrence) features: two texts share min(count_a, count_b) features per word."""
    seen: Counter[str] = Counter()
    out = []
    for token in tokens:
        seen[token] += 1
        out.append(f"{token}\x00{seen[token]}")
    return out


class NoveltyIndex:
    """Prompts kept so far, to ask how similar a new one is to the most similar of them."""

    def __init__(self) -> None:
        self._words: list[list[str]] = []
        self._lengths = array("q")
        self._postings: dict[str, array] = {}

    def __len__(self) -> int:
        return len(self._words)

    def add(self, text: str) -> int:
        """Keep `text`; returns its index."""
        index = len(self._words)
        tokens = words(text)
        self._words.append(tokens)
        self._lengths.append(len(tokens))
        for feature in _features(tokens):
            self._postings.setdefault(feature, array("q")).append(index)
        return index

    def most_similar(self, text: str) -> tuple[float, int | None]:
        """(the highest ROUGE-L of `text` against a kept prompt, that prompt's index); (0.0, None)
        when nothing is kept or `text` shares no word with any kept prompt."""
        tokens = words(text)
        if not self._words or not tokens:
            return 0.0, None
        postings = [self._postings[f] for f in _features(tokens) if f in self._postings]
        if not postings:
            return 0.0, None
        shared = np.bincount(np.concatenate([np.frombuffer(p, dtype=np.int64) for p in postings]),
                             minlength=len(self._words))
        lengths = np.frombuffer(self._lengths, dtype=np.int64)
        bound = 2.0 * shared / (len(tokens) + lengths)
        best, best_index = 0.0, None
        for index in np.argsort(-bound, kind="stable"):  # best bound first
            if bound[index] <= best:
                break  # no prompt left can beat `best`
            score = 2 * lcs_length(tokens, self._words[index]) / (len(tokens) + int(lengths[index]))
            if score > best:
                best, best_index = score, int(index)
        return best, best_index

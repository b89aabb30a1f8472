"""Text similarity for filtering: near-identical revisions and near-duplicate prompts.

`near_identical` compares two texts after normalisation (difflib ratio). `near_duplicates`
finds near-duplicate prompts among hundreds of thousands in near-linear time: MinHash
signatures over word 3-gram shingles (vectorised with numpy), locality-sensitive hashing in
bands to find candidate pairs, and an exact check of each candidate. The earliest prompt of a
group is kept; each later one maps to it.

A prompt is a whole conversation, not its last message: two prompts are near-duplicates only
when they have the same roles in the same order and each message is a near-duplicate of its
counterpart (word 3-gram Jaccard at least the threshold), so the same question after different
context is not a duplicate. A message without word characters ("???", ":-)") has no words to
compare; it compares by its exact text.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

_WORDS = re.compile(r"\w+")
_PRIME = (1 << 61) - 1
_PERMUTATIONS = 64
_BANDS = 16  # 16 bands of 4 rows: pairs above ~0.6 Jaccard are very likely candidates

Conversation = Sequence[Mapping[str, str]]  # {role, content} messages, as in a prompts file


def normalise(text: str) -> str:
    return " ".join(_WORDS.findall(text.casefold()))


def near_identical(a: str, b: str, threshold: float = 0.95) -> bool:
    """True when the normalised texts are equal or differ only trivially."""
    na, nb = normalise(a), normalise(b)
    if na == nb:
        return True
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio() >= threshold


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of `text`, case aside; a text without words is its own single shingle (its
    exact text, which no word n-gram can equal), so wordless texts match only when identical."""
    words = _WORDS.findall(text.casefold())
    if not words:
        return {text}
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _stable_hashes(items: set[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % _PRIME
                     for s in items], dtype=np.uint64)


_RNG = np.random.default_rng(20260101)
_A = _RNG.integers(1, 1 << 31, size=_PERMUTATIONS, dtype=np.uint64)
_B = _RNG.integers(0, 1 << 31, size=_PERMUTATIONS, dtype=np.uint64)


def _signature(items: set[str]) -> np.ndarray:
    hashes = _stable_hashes(items) % np.uint64(1 << 31)
    return ((np.outer(hashes, _A) + _B) % np.uint64(_PRIME)).min(axis=0)


def _messages(item: str | Conversation) -> list[tuple[str, set[str]]]:
    """(role, shingles) per message; a plain string is a conversation of one user message."""
    messages = [{"role": "user", "content": item}] if isinstance(item, str) else item
    return [(m["role"], shingles(m["content"])) for m in messages]


def _alike(a: list[tuple[str, set[str]]], b: list[tuple[str, set[str]]], threshold: float) -> bool:
    """Same roles in the same order, and every message at least `threshold` alike (Jaccard)."""
    return len(a) == len(b) and all(ra == rb and jaccard(sa, sb) >= threshold for (ra, sa), (rb, sb) in zip(a, b))


def near_duplicates(prompts: Sequence[str | Conversation], threshold: float = 0.9) -> dict[int, int]:
    """{index of a later near-duplicate: index of the earliest prompt it duplicates}. Each prompt
    is a conversation (a list of {role, content}) or a plain string (one user message).

    Candidates come from locality-sensitive hashing of the last message (every near-duplicate pair
    has near-duplicate last messages); each candidate is then checked message by message."""
    convs = [_messages(p) for p in prompts]
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    rows = _PERMUTATIONS // _BANDS
    duplicate_of: dict[int, int] = {}
    for i, conv in enumerate(convs):
        signature = _signature(conv[-1][1])
        candidates: set[int] = set()
        for band in range(_BANDS):
            key = (band, signature[band * rows:(band + 1) * rows].tobytes())
            candidates.update(buckets[key])
            buckets[key].append(i)
        best = min((j for j in candidates if j not in duplicate_of and _alike(conv, convs[j], threshold)),
                   default=None)
        if best is not None:
            duplicate_of[i] = best
    return duplicate_of

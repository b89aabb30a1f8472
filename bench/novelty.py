"""Benchmark: the novelty filter of `distill grow` at 10,000 prompts.

Each prompt in turn is scored against every prompt kept before it (the highest ROUGE-L) and kept
when below 0.7, as `distill grow` does. Compared: `NoveltyIndex` (an inverted-index bound, then the
exact bit-parallel LCS only where the bound can win) and the baseline, the exact LCS against every
kept prompt (what a loop over `rouge-score` does, with a faster LCS). The baseline runs on the first
--baseline prompts only (it is quadratic); both are timed on that prefix in the same run, and the
index alone on all of them. The prompts are the project's shipped prompts, recombined into
--prompts (each the start of one and the end of another, so that many pairs share words and some
are near-duplicates).
Prints a table: median of --runs runs, and checks that both give the same scores.

    python bench/novelty.py                 # 10,000 prompts, baseline on 1,000, 3 runs
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.checks.novelty import NoveltyIndex, lcs_length, words  # noqa: E402
from distill.records.prompts import read_prompts  # noqa: E402

THRESHOLD = 0.7


def corpus(n: int, seed: int = 0) -> list[str]:
    texts = [p.text for f in sorted((ROOT / "prompts").rglob("*.jsonl")) for p in read_prompts(f)]
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        a, b = rng.sample(texts, 2)
        out.append(" ".join(words(a)[: rng.randint(4, 14)] + words(b)[-rng.randint(4, 14):]))
    return out


def with_index(texts: list[str]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    index, scores = NoveltyIndex(), []
    for text in texts:
        score, _ = index.most_similar(text)
        scores.append(score)
        if score < THRESHOLD:
            index.add(text)
    return time.perf_counter() - started, scores


def baseline(texts: list[str]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    kept: list[list[str]] = []
    scores = []
    for text in texts:
        tokens = words(text)
        score = max((2 * lcs_length(tokens, k) / (len(tokens) + len(k)) for k in kept if tokens and k), default=0.0)
        scores.append(score)
        if score < THRESHOLD:
            kept.append(tokens)
    return time.perf_counter() - started, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = corpus(args.prompts)
    prefix = texts[: args.baseline]
    rows: dict[str, list[float]] = {"baseline": [], "index": [], "index_all": []}
    for _ in range(args.runs):
        t_base, s_base = baseline(prefix)
        t_index, s_index = with_index(prefix)
        if any(abs(a - b) > 1e-12 for a, b in zip(s_base, s_index)):
            print("error: the index and the baseline disagree", file=sys.stderr)
            return 1
        t_all, s_all = with_index(texts)
        rows["baseline"].append(t_base)
        rows["index"].append(t_index)
        rows["index_all"].append(t_all)
    kept = sum(s < THRESHOLD for s in s_all)
    base, fast, everything = (statistics.median(rows[k]) for k in ("baseline", "index", "index_all"))
    print(f"| method | prompts | seconds (median of {args.runs}) | prompts/s | vs baseline |")
    print("|---|---|---|---|---|")
    print(f"| exact LCS against every kept prompt (baseline) | {len(prefix)} | {base:.2f} | {len(prefix) / base:.0f} | 1.00x |")
    print(f"| NoveltyIndex | {len(prefix)} | {fast:.2f} | {len(prefix) / fast:.0f} | {base / fast:.1f}x faster |")
    print(f"| NoveltyIndex | {len(texts)} | {everything:.2f} | {len(texts) / everything:.0f} | - |")
    print(f"\nsame scores on the first {len(prefix)}: yes; kept {kept} of {len(texts)} at ROUGE-L < {THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `distill answer`'s batched generation against plain one-by-one `model.generate`.

Both run on the same prompts (the first N of prompts/examples), the same model (the embedded
SmolLM2-135M-Instruct unless --student), the same chat template and greedy decoding. Each
measurement runs in a fresh subprocess so its peak RSS is its own. Prints a table with the
median of --runs runs and the ratio against the baseline, and checks that the greedy outputs
are identical.

    python bench/generate.py                  # 64 prompts, 96 new tokens, 3 runs
    python bench/generate.py --runs 1 --prompts 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_prompts(n: int) -> list:
    from distill.records.prompts import read_prompts

    prompts = read_prompts(ROOT / "prompts/examples/train.jsonl") + read_prompts(ROOT / "prompts/examples/heldout.jsonl")
    if n > len(prompts):
        prompts = (prompts * (n // len(prompts) + 1))
    return prompts[:n]


def worker(mode: str, n: int, new_tokens: int, batch_size: int, student_source: str | None) -> dict:
    import torch

    from distill.student.model import GenerationParams, Student

    prompts = load_prompts(n)
    student = Student.load(student_source)
    params = GenerationParams(max_new_tokens=new_tokens)
    started = time.perf_counter()
    if mode == "distill":
        answers = student.answer(prompts, params, batch_size=batch_size)
        texts = [a.text for a in answers]
        tokens = sum(a.completion_tokens for a in answers)
    else:  # the baseline: what a user writes with plain transformers, one prompt at a time
        model, tok = student.model, student.tokenizer
        texts, tokens = [], 0
        for p in prompts:
            ids = tok.apply_chat_template([dict(m) for m in p.messages], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            with torch.inference_mode():
                out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
            gen = out[0, ids["input_ids"].shape[1]:].tolist()
            stop = next((i for i, t in enumerate(gen) if t in student.eos_ids), None)
            kept = gen if stop is None else gen[:stop]
            tokens += len(kept) + (stop is not None)
            texts.append(tok.decode(kept, skip_special_tokens=True).strip())
    seconds = time.perf_counter() - started
    return {"mode": mode, "tokens": tokens, "seconds": seconds, "texts": texts,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--prompts", str(args.prompts),
           "--new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size)]
    if args.student:
        cmd += ["--student", args.student]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64, help="distill's batch size (default 64)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--student", default=None)
    parser.add_argument("--worker", choices=["plain", "distill"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.prompts, args.new_tokens, args.batch_size, args.student)))
        return
    results: dict[str, list[dict]] = {"plain": [], "distill": []}
    for run in range(args.runs):
        for mode in results:
            r = measure(mode, args)
            results[mode].append(r)
            print(f"run {run + 1}/{args.runs} {mode:8s} {r['tokens'] / r['seconds']:7.1f} tok/s "
                  f"({r['seconds']:.1f} s, peak {r['peak_rss_mb']:.0f} MB)", file=sys.stderr)
    rows = {}
    for mode, runs in results.items():
        rows[mode] = {"tok_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
                      "seconds": statistics.median(r["seconds"] for r in runs),
                      "tokens": statistics.median(r["tokens"] for r in runs),
                      "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}
    identical = all(p["texts"] == d["texts"] for p, d in zip(results["plain"], results["distill"]))
    same_count = sum(a == b for a, b in zip(results["plain"][0]["texts"], results["distill"][0]["texts"]))
    base = rows["plain"]["tok_s"]
    print(f"\n{args.prompts} prompts, {args.new_tokens} new tokens max, greedy, median of {args.runs} run(s)\n")
    print("| method | batch | tokens/s | ratio | wall s | tokens | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| plain model.generate, one by one | 1 | {base:.1f} | 1.00x | {rows['plain']['seconds']:.1f} "
          f"| {rows['plain']['tokens']:.0f} | {rows['plain']['peak_rss_mb']:.0f} |")
    d = rows["distill"]
    print(f"| distill answer | {args.batch_size} | {d['tok_s']:.1f} | {d['tok_s'] / base:.2f}x | {d['seconds']:.1f} "
          f"| {d['tokens']:.0f} | {d['peak_rss_mb']:.0f} |")
    print(f"\nidentical greedy outputs: {'yes' if identical else 'NO'} ({same_count}/{args.prompts} in run 1)")


if __name__ == "__main__":
    main()

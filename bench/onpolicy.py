"""On-policy distillation against SFT on the teacher's greedy answers, at equal teacher-token cost.

The set-up of tests/test_onpolicy_learning.py: the teacher is the embedded SmolLM2 with a LoRA
adapter trained on the "Final answer: X" rule; the student is the base model (held-out rule rate
about 0%). Two ways to pass the rule on, from the same 64 training prompts:

- SFT: the teacher writes its greedy answer to each prompt (its cost: the answer tokens it
  generates), and the student is fine-tuned on them (the settings of the SFT learning test);
- on-policy: the student samples, the teacher scores every sampled token (its cost: the answer
  tokens it scores), the student descends on the reverse KL; once with as many steps as spend
  about the SFT row's teacher tokens, once with the learning test's epochs.

It prints a table (held-out rule rate on 24 prompts, teacher answer tokens, training seconds) and
writes it to bench/results/onpolicy.md. Run: `python bench/onpolicy.py` (a few minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_onpolicy_learning import ONPOLICY, distill_on_policy, rule_rate, rule_teacher  # noqa: E402
from test_train_learning import LEARNING, rule_sets  # noqa: E402

from distill.student import embedded  # noqa: E402
from distill.student.model import GenerationParams, Student  # noqa: E402
from distill.training.examples import Example  # noqa: E402
from distill.training.sft import train  # noqa: E402


def sft_on_teacher_answers(model_dir: Path, teacher_adapter: Path, out: Path) -> dict:
    """The teacher's greedy answers to the training prompts, then SFT of the base on them."""
    train_rule, heldout_rule = rule_sets()
    teacher = Student.load(model_dir, adapter=teacher_adapter)
    prompts = [p for p, _, _ in train_rule]
    answers = teacher.answer(prompts, GenerationParams(max_new_tokens=ONPOLICY.onpolicy_max_new_tokens),
                             batch_size=len(prompts))
    examples = [Example(id=a.prompt.id, prompt=a.prompt.messages, completion=a.text) for a in answers]
    started = time.monotonic()
    train(examples, out, LEARNING, student=model_dir)
    seconds = time.monotonic() - started
    rate, _ = rule_rate(model_dir, out, [p for p, _, _ in heldout_rule])
    return {"after_rate": rate, "teacher_tokens": sum(a.completion_tokens for a in answers), "train_seconds": seconds,
            "teacher_rule_rate_on_train": sum(a.text.strip().splitlines()[-1].startswith("Final answer:")
                                              for a in answers if a.text.strip()) / len(answers)}


def main() -> None:
    load = os.getloadavg()[0]  # how quiet the machine was when the run began
    model_dir = embedded.ensure_converted()
    base = Student.load(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = rule_teacher(base, model_dir, work / "teacher")
        teacher_rate, _ = rule_rate(model_dir, work / "teacher", sets["heldout"])
        print({"base": sets["before_rate"], "teacher": teacher_rate}, flush=True)
        sft = sft_on_teacher_answers(model_dir, work / "teacher", work / "sft")
        print({"sft": sft}, flush=True)
        per_step = ONPOLICY.batch_size * sft["teacher_tokens"] / 64  # tokens a step scores, if answers are as long
        matched_steps = max(1, math.ceil(sft["teacher_tokens"] / per_step))
        matched = distill_on_policy(model_dir, work / "teacher", work / "onp-matched", work / "cache-a",
                                    dataclasses.replace(ONPOLICY, max_steps=matched_steps))
        print({"matched": matched}, flush=True)
        full = distill_on_policy(model_dir, work / "teacher", work / "onp-full", work / "cache-b")
        print({"full": full}, flush=True)
    rows = [("base student (no training)", sets["before_rate"], 0, 0.0, "-"),
            ("teacher (base + rule adapter)", teacher_rate, 0, 0.0, "-"),
            ("SFT on the teacher's greedy answers (64 prompts, 2 epochs)", sft["after_rate"], sft["teacher_tokens"],
             sft["train_seconds"], f"{math.ceil(64 / LEARNING.batch_size) * LEARNING.epochs}"),
            (f"on-policy, reverse KL, {matched_steps} steps (about SFT's teacher tokens)", matched["after_rate"],
             matched["teacher_tokens"], matched["train_seconds"], str(matched["steps"])),
            (f"on-policy, reverse KL, {ONPOLICY.epochs} epochs (the learning test)", full["after_rate"], full["teacher_tokens"],
             full["train_seconds"], str(full["steps"]))]
    lines = ["| method | held-out rule rate (24 prompts) | teacher answer tokens | train seconds | steps |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {rate:.0%} | {tokens} | {seconds:.0f} | {steps} |" for name, rate, tokens, seconds, steps in rows]
    table = "\n".join(lines)
    print(table)
    note = ("Teacher answer tokens: for SFT the tokens the teacher generated (greedy, end-of-turn included), for "
            "on-policy the sampled answer tokens the teacher scored (one forward pass each, no decoding). Train "
            "seconds include on-policy's sampling and scoring; SFT's exclude the teacher's generation. One run each, "
            f"float32/bf16 as `precision=auto` picks, on {os.cpu_count()} CPU cores (load average "
            f"{load:.1f} at the start).")
    (ROOT / "bench" / "results" / "onpolicy.md").write_text(
        "# On-policy distillation against SFT on the teacher's answers\n\n`python bench/onpolicy.py`\n\n"
        + table + "\n\n" + note + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

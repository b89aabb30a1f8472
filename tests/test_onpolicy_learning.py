"""On-policy distillation on the real embedded student transfers a rule from a teacher to the base.

The teacher is the embedded SmolLM2 with the LoRA adapter that tests/test_train_learning.py trains on its rule
(a one-sentence answer, then a last line "Final answer: X"; the `rule_learning` fixture, once per session); the
student is the base model, which never ends with such a line. On-policy distillation sees only the
training prompts: each step the student samples answers, the teacher (`local:DIR?adapter=DIR`, full
vocabulary) scores every sampled token, and the student descends on the reverse KL. Afterwards the
held-out rule rate (prompts on other entities) must rise from about 0 to most.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_train_learning import LEARNING, build_sets, follows_rule, rule_sets

from distill.student.model import GenerationParams, Student
from distill.teachers.scoring import open_scorer
from distill.teachers.settings import TeacherSettings
from distill.training.config import TrainConfig
from distill.training.losslog import read_loss_log
from distill.training.sft import train

pytestmark = pytest.mark.slow

# Measured (2026-12-01, float32, 2 quiet cores; the rule teacher at 100% held out): 1e-3 for 3
# epochs of 8 prompts a step (24 steps, 409 s, 4,235 scored answer tokens) took the held-out rule
# rate from 0% to 100%, the loss from 0.45 to 0.01-0.02. 5e-4 for 3 epochs reached only 42% (the
# answers repeated "Final answer: X" and ran out of tokens); 2e-3 for 2 epochs (16 steps, 346 s)
# reached 100% too, but with the loss still near 0.5 and answers that drifted ("Argentina is the
# capital of Argentina"), so the test keeps the steadier setting. The threshold stays at 60%.
# In bfloat16 (precision auto on an AVX512-BF16 Xeon, 2 cores): 42% while the output head ran in
# bfloat16 (answers repeating "Final answer: X" until the budget), 100% (227 s, 4,700 scored
# tokens, loss 0.49 -> 0.02) once `head_logits` computed the logits in float32.
ONPOLICY = TrainConfig(learning_rate=1e-3, epochs=3, batch_size=8, onpolicy_max_new_tokens=40,
                       onpolicy_temperature=1.0, replay_fraction=0.0)


def rule_teacher(student: Student, embedded_dir: Path, out: Path) -> dict:
    """The rule adapter (SFT on the 64 rule revisions with replay) and the base's held-out rate."""
    sets = build_sets(student)
    train(sets["train"], out, LEARNING, student=embedded_dir, replay=sets["replay_train"])
    return sets


def rule_rate(model_dir: Path, adapter: Path | None, prompts: list) -> tuple[float, list[str]]:
    tuned = Student.load(model_dir, adapter=adapter)
    answers = tuned.answer(prompts, GenerationParams(max_new_tokens=40), batch_size=len(prompts))
    return sum(follows_rule(a.text) for a in answers) / len(answers), [a.text for a in answers[:3]]


def distill_on_policy(embedded_dir: Path, teacher_adapter: Path, out: Path, cache_dir: Path,
                      config: TrainConfig = ONPOLICY) -> dict:
    """On-policy distillation of the rule teacher into the base on the training prompts."""
    from distill.training.onpolicy import train_on_policy

    train_rule, heldout_rule = rule_sets()
    settings = TeacherSettings(backend="local", model=f"{embedded_dir}?adapter={teacher_adapter}")
    scorer = open_scorer(settings, cache_dir=cache_dir, offline=False)
    started = time.monotonic()
    try:
        result = train_on_policy([p for p, _, _ in train_rule], out, scorer, config, student=embedded_dir)
    finally:
        scorer.close()
    seconds = time.monotonic() - started
    rate, samples = rule_rate(embedded_dir, out, [p for p, _, _ in heldout_rule])
    losses = [row["loss"] for row in read_loss_log(out)]
    return {"after_rate": rate, "samples": samples, "train_seconds": seconds, "steps": result.steps,
            "teacher_tokens": result.summary["teacher_scoring"]["scored_answer_tokens"],
            "first_losses": losses[:3], "last_losses": losses[-3:]}


def test_on_policy_distillation_transfers_the_rule_from_an_adapter_teacher(rule_learning: dict, embedded_dir: Path,
                                                                          tmp_path: Path) -> None:
    """The teacher is the rule adapter of tests/test_train_learning.py (`rule_learning`, trained once
    per session); its held-out rate is measured there the way `rule_rate` measures the student's."""
    m = distill_on_policy(embedded_dir, rule_learning["adapter"], tmp_path / "onpolicy", tmp_path / "cache")
    print({"before_rate": rule_learning["before_rate"], "teacher_rate": rule_learning["after_rate"], **m})
    assert rule_learning["before_rate"] <= 0.05
    assert rule_learning["after_rate"] >= 0.6
    assert m["teacher_tokens"] > 0 and m["steps"] == 24
    assert m["after_rate"] >= 0.6, m["samples"]
    assert sum(m["last_losses"]) < sum(m["first_losses"])  # the divergence from the teacher fell

"""On-policy distillation on the real embedded student transfers a rule from a teacher to the base.

The teacher is the embedded SmolLM2 with a LoRA adapter trained here on the rule of
tests/test_train_learning.py (a one-sentence answer, then a last line "Final answer: X"); the
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

# NOT YET MEASURED to the end: the settings and the 60% threshold are those of the SFT learning test
# (one more epoch); no run of this test has finished yet (the first stopped on an import bug, since
# fixed; the second was stopped for time). The rule teacher it trains reached 100% held out in
# bench/onpolicy.py. Measure before relying on the threshold.
ONPOLICY = TrainConfig(learning_rate=5e-4, epochs=3, batch_size=8, onpolicy_max_new_tokens=40,
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


def test_on_policy_distillation_transfers_the_rule_from_an_adapter_teacher(student: Student, embedded_dir: Path,
                                                                          tmp_path: Path) -> None:
    teacher_adapter = tmp_path / "rule-teacher"
    sets = rule_teacher(student, embedded_dir, teacher_adapter)
    teacher_rate, _ = rule_rate(embedded_dir, teacher_adapter, sets["heldout"])
    m = distill_on_policy(embedded_dir, teacher_adapter, tmp_path / "onpolicy", tmp_path / "cache")
    print({"before_rate": sets["before_rate"], "teacher_rate": teacher_rate, **m})
    assert sets["before_rate"] <= 0.05
    assert teacher_rate >= 0.6
    assert m["teacher_tokens"] > 0
    assert m["after_rate"] >= 0.6, m["samples"]

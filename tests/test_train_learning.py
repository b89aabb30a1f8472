"""The learning test on the real embedded student: LoRA teaches a checkable rule without forgetting.

64 "teacher revisions" follow one distinctive rule: a one-sentence answer, then a last line
"Final answer: X" with the right X. The prompts come from templates (capitals, sums, products,
opposites), split by entity so that training and held-out prompts never overlap. Replay is the
student's own complete greedy answers to open-ended one-sentence prompts (tips, descriptions),
of which a disjoint part is held out. After training:

- the rate of held-out answers that end with a "Final answer:" line rises from 0 to >= 60%;
- the mean NLL per token of the held-out replay answers rises by at most 5%.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from distill.records.prompts import Prompt
from distill.student.model import GenerationParams, Student
from distill.training.config import TrainConfig
from distill.training.examples import Example, completion_nll
from distill.training.losslog import read_loss_log
from distill.training.sft import train

pytestmark = pytest.mark.slow

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Canada": "Ottawa", "Australia": "Canberra",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Greece": "Athens", "Turkey": "Ankara", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw",
    "Austria": "Vienna", "Ireland": "Dublin", "Belgium": "Brussels", "Peru": "Lima", "Chile": "Santiago",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul", "Indonesia": "Jakarta",
    "Cuba": "Havana", "Hungary": "Budapest", "Argentina": "Buenos Aires", "Iran": "Tehran",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "light": "dark",
    "early": "late", "full": "empty", "hard": "soft", "rich": "poor", "strong": "weak", "open": "closed",
    "wet": "dry", "high": "low", "long": "short", "loud": "quiet",
}
TIPS = ["studying for an exam", "sleeping better", "saving money", "staying focused at work", "learning a language",
        "starting to run", "writing an essay", "keeping houseplants alive", "reducing stress", "public speaking",
        "making new friends", "cooking rice", "staying hydrated", "organizing a desk", "waking up early",
        "reading more books", "packing for a trip", "taking better notes", "keeping a journal", "learning to swim",
        "drinking less coffee", "working from home", "eating more vegetables", "keeping a budget"]
THINGS = ["the ocean", "a forest", "a city at night", "autumn", "a library", "the moon", "a thunderstorm",
          "a desert", "a busy market", "a quiet morning", "a mountain lake", "a train station", "snowfall",
          "a summer garden", "a lighthouse", "a rainy afternoon", "a bakery", "a river", "the night sky",
          "a school playground", "a farm", "an old bridge", "a beach at sunset", "a museum"]
FINAL = re.compile(r"^Final answer:\s*\S")


def rule_sets(seed: int = 0) -> tuple[list[tuple[Prompt, str, str]], list[tuple[Prompt, str, str]]]:
    """(train, held-out) rule prompts as (prompt, teacher's sentence, final answer): 64 and 24, no
    entity in both."""
    rng = random.Random(seed)
    sums = rng.sample([(a, b) for a in range(11, 60) for b in range(11, 60) if a < b], 20)
    products = rng.sample([(a, m) for a in range(11, 60) for m in range(3, 10)], 20)
    groups = [  # (question, the teacher's one-sentence answer, final answer), held-out count
        ([(f"What is the capital of {c}?", f"The capital of {c} is {a}.", a) for c, a in CAPITALS.items()], 8),
        ([(f"What is the opposite of '{w}'?", f"The opposite of '{w}' is '{o}'.", o) for w, o in OPPOSITES.items()], 4),
        ([(f"What is {a} plus {b}?", f"{a} plus {b} equals {a + b}.", str(a + b)) for a, b in sums], 6),
        ([(f"What is {a} times {m}?", f"{a} times {m} equals {a * m}.", str(a * m)) for a, m in products], 6),
    ]
    train, heldout = [], []
    for items, n_heldout in groups:
        rng.shuffle(items)
        heldout += items[:n_heldout]
        train += items[n_heldout:]
    return _numbered(train, "rule"), _numbered(heldout, "heldout")


def _numbered(items: list[tuple[str, str, str]], tag: str) -> list[tuple[Prompt, str, str]]:
    return [(Prompt.from_text(q, id=f"{tag}-{i}"), sentence, final) for i, (q, sentence, final) in enumerate(items)]


def replay_prompts() -> list[Prompt]:
    """Open-ended prompts the rule does not apply to, which the student answers in one sentence."""
    texts = [f"Describe {t} in one sentence." for t in THINGS] + [f"In one sentence, give me a tip for {t}."
                                                                   for t in TIPS]
    random.Random(1).shuffle(texts)
    return [Prompt.from_text(t, id=f"replay-{i}") for i, t in enumerate(texts)]


def follows_rule(text: str) -> bool:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return bool(lines) and bool(FINAL.match(lines[-1]))


def build_sets(student: Student) -> dict:
    """The training revisions, and from one batched generation pass of the base student: its
    held-out rule answers (the "before" rate) and its own complete answers to the replay prompts."""
    train_rule, heldout_rule = rule_sets()
    heldout = [p for p, _, _ in heldout_rule]
    prompts = heldout + replay_prompts()
    answers = student.answer(prompts, GenerationParams(max_new_tokens=64), batch_size=len(prompts))
    before, own = answers[:len(heldout)], answers[len(heldout):]
    replay = [Example(id=a.prompt.id, prompt=a.prompt.messages, completion=a.text, source="replay")
              for a in own if a.finish_reason == "stop"]
    return {"train": [Example(id=p.id, prompt=p.messages, completion=f"{sentence}\nFinal answer: {final}")
                      for p, sentence, final in train_rule],
            "heldout": heldout, "before_rate": sum(follows_rule(a.text) for a in before) / len(before),
            "replay_train": replay[:-12], "replay_heldout": replay[-12:]}


def run_learning(student: Student, embedded_dir: Path, out: Path, config: TrainConfig) -> dict:
    """Train on the rule set + replay; measure the rule rate and the held-out replay NLL."""
    started = time.monotonic()
    sets = build_sets(student)
    generated = time.monotonic()
    nll_before = completion_nll(student, sets["replay_heldout"])
    fit_before = completion_nll(student, sets["train"])
    result = train(sets["train"], out, config, student=embedded_dir, replay=sets["replay_train"])
    trained = time.monotonic()
    tuned = Student.load(embedded_dir, adapter=out)
    answers = tuned.answer(sets["heldout"], GenerationParams(max_new_tokens=40), batch_size=len(sets["heldout"]))
    nll_after = completion_nll(tuned, sets["replay_heldout"])
    fit_after = completion_nll(tuned, sets["train"])
    return {"before_rate": sets["before_rate"], "after_rate": sum(follows_rule(a.text) for a in answers) / len(answers),
            "nll_before": nll_before, "nll_after": nll_after, "nll_rise": nll_after / nll_before - 1,
            "replay_train": len(sets["replay_train"]), "replay_heldout": len(sets["replay_heldout"]),
            "train_nll_before": fit_before, "train_nll_after": fit_after, "steps": result.steps,
            "tokens_per_s": result.tokens_per_s, "loss_log": [row["loss"] for row in read_loss_log(out)],
            "seconds": {"generate": generated - started, "train": trained - generated,
                        "evaluate": time.monotonic() - trained},
            "samples": [a.text for a in answers[:3]]}


# The shortest setting that passed on every training seed tried (0, 1, 2: 100% each, in float32
# and in bf16; ~18 s of training in bf16 on 2 free AVX512-BF16 cores, ~37 s in float32). One epoch
# at 1e-3 reached only 75% on seed 1. The defaults (2e-4, 3 epochs) reach 100% too, in ~1.5x the
# time; TrainConfig's docstring has the learning-rate sweep.
LEARNING = TrainConfig(learning_rate=5e-4, epochs=2)


def test_lora_teaches_the_final_answer_rule_without_forgetting(rule_learning: dict) -> None:
    """`rule_learning` (tests/conftest.py) is `run_learning(..., LEARNING)`, run once per session."""
    train_rule, heldout_rule = rule_sets()
    assert len(train_rule) == 64 and len(heldout_rule) == 24
    assert not {p.text for p, _, _ in train_rule} & {p.text for p, _, _ in heldout_rule}
    m = rule_learning
    print(m)
    assert m["replay_train"] >= 24 and m["replay_heldout"] == 12
    assert m["before_rate"] <= 0.05
    assert m["after_rate"] >= 0.6, m["samples"]
    assert m["nll_rise"] <= 0.05, (m["nll_before"], m["nll_after"])
    assert m["train_nll_after"] < 0.5 * m["train_nll_before"]  # the loss fell on the training revisions

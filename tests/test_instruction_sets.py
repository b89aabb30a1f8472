"""The shipped instruction-following prompt sets: valid, large enough, disjoint, reproducible, and
every scripted repair really follows its instruction (so the learning benchmark's teacher is right)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from distill.checks.reference import run_checks
from distill.records.prompts import read_prompts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import instruction_sets  # noqa: E402

FILES = ROOT / "prompts" / "instructions"


def test_the_files_are_what_the_generator_writes() -> None:
    for name, rows in instruction_sets.sets().items():
        expected = instruction_sets.set_text(rows)
        assert (FILES / name).read_text(encoding="utf-8") == expected, "rebuild with python bench/instruction_sets.py"


@pytest.mark.parametrize("name, at_least, kinds", [
    ("train.jsonl", 150, 10), ("heldout.jsonl", 60, 10), ("confirm.jsonl", 60, 10), ("demo-train.jsonl", 60, 4),
    ("demo-heldout.jsonl", 30, 4)])
def test_sets_are_valid_and_big_enough(name: str, at_least: int, kinds: int) -> None:
    prompts = read_prompts(FILES / name)  # validates every reference
    assert len(prompts) >= at_least
    by_kind = Counter(p.meta["kind"] for p in prompts)
    assert len(by_kind) >= kinds and min(by_kind.values()) >= 8


def test_heldout_questions_are_on_other_topics_than_training() -> None:
    train = {p.meta["question"] for p in read_prompts(FILES / "train.jsonl")}
    for name in ("heldout.jsonl", "confirm.jsonl", "demo-heldout.jsonl"):
        assert not train & {p.meta["question"] for p in read_prompts(FILES / name)}
    # the confirmation set is on topics of its own: no question of the held-out set either
    heldout = {p.meta["question"] for p in read_prompts(FILES / "heldout.jsonl")}
    assert not heldout & {p.meta["question"] for p in read_prompts(FILES / "confirm.jsonl")}
    general = {p.text for p in read_prompts(FILES / "general.jsonl")}
    assert len(general) >= 80 and not general & train


def test_every_scripted_repair_follows_its_instruction() -> None:
    questions = instruction_sets.question_index()
    for name in ("train.jsonl", "heldout.jsonl", "confirm.jsonl", "demo-train.jsonl", "demo-heldout.jsonl"):
        for p in read_prompts(FILES / name):
            meta = p.meta
            text = instruction_sets.repaired(meta["kind"], meta.get("n"), meta.get("phrase"), questions[meta["question"]])
            result = run_checks(p.checks, text)
            assert result.passed, (p.id, text, result.failures)
            # the teacher accepts its own repairs by the standard it holds the student's answers to
            assert instruction_sets.answers_the_question(meta["kind"], meta.get("phrase"),
                                                         questions[meta["question"]], text), (p.id, text)


def test_the_teacher_refuses_answers_that_follow_the_instruction_but_do_not_answer() -> None:
    questions = instruction_sets.question_index()

    def accepted(kind: str, phrase: str | None, question: str, text: str) -> bool:
        return instruction_sets.answers_the_question(kind, phrase, questions[question], text)

    # the wrong answer, in fewer than 25 words (what the round used to train on)
    assert not accepted("word_limit", None, "Which month has Valentine's Day?", "The month with Valentine's Day is December.")
    assert accepted("word_limit", None, "Which month has Valentine's Day?", "Valentine's Day is in February.")
    # only the asked-for phrase, or the phrase over and over
    assert not accepted("end_phrase", "That is all.", "What do bees make?", "That is all.")
    assert not accepted("start_phrase", "In short:", "Describe a forest.", "In short: In short: In short: In short:")
    assert not accepted("bullets", None, "Describe a forest.", "- Trees are tall and trees are tall and trees are tall and green.")
    # an open question has no one right answer: any answer that says something passes
    assert accepted("start_phrase", "In short:", "Describe a forest.", "In short: a forest is full of old trees.")
    # the one-word and number kinds need one word: the right one
    assert accepted("one_word", None, "What do bees make?", "Honey.")
    assert not accepted("one_word", None, "What do bees make?", "Milk")
    assert accepted("only_number", None, "How many days are in a week?", "7")


def test_the_training_set_fits_one_round_of_at_most_200_rows_with_no_prompt_twice() -> None:
    prompts = read_prompts(FILES / "train.jsonl")
    assert len(prompts) <= 200
    assert len({p.text for p in prompts}) == len(prompts)
    by_kind = Counter(p.meta["kind"] for p in prompts)
    assert by_kind == Counter(instruction_sets.TRAIN_COUNTS)
    # the case kinds, the hardest to learn, get the most rows
    assert {kind for kind, _ in by_kind.most_common(2)} == {"uppercase", "lowercase"}
    # lowercase takes every training question that spells a name with a capital letter (the held-out
    # failures kept the capital of a name the question spelled: "Earth")
    lowercase = {p.meta["question"] for p in prompts if p.meta["kind"] == "lowercase"}
    named = {q.text for q in instruction_sets.TRAIN_WORDS + instruction_sets.TRAIN_OPEN
             if instruction_sets.spells_a_name(q.text)}
    assert len(named) >= 10 and named <= lowercase
    assert instruction_sets.spells_a_name("What day comes after Friday?")
    assert not instruction_sets.spells_a_name("What animal says moo?")


def test_only_a_number_checks_the_form_of_the_answer_not_its_arithmetic() -> None:
    prompt = next(p for p in read_prompts(FILES / "heldout.jsonl") if p.meta["kind"] == "only_number")
    assert run_checks(prompt.checks, "41").passed and run_checks(prompt.checks, " 7 ").passed
    assert not run_checks(prompt.checks, "The answer is 41.").passed


def test_a_general_knowledge_number_passes_in_digits_or_words_and_only_as_a_whole_number() -> None:
    by_text = {p.text: p for p in read_prompts(FILES / "general.jsonl")}
    hexagon, bones = by_text["How many sides does a hexagon have?"], by_text["How many bones does an adult human have?"]
    for answer in ("A hexagon has 6 sides.", "A hexagon has six sides.", "SIX"):
        assert run_checks(hexagon.checks, answer).passed, answer
    for answer in ("A hexagon has 16 sides.", "A hexagon has sixteen sides.", "It has 60 sides."):
        assert not run_checks(hexagon.checks, answer).passed, answer
    assert run_checks(bones.checks, "An adult has two hundred and six bones.").passed
    assert run_checks(bones.checks, "An adult has 206 bones.").passed
    assert not run_checks(bones.checks, "An adult has 2060 bones.").passed
    assert instruction_sets.number_words(42) == "forty[- ]two" and instruction_sets.number_words(100) == "one hundred"


def test_the_case_kinds_train_on_answers_that_hold_names() -> None:
    """Held out, the tuned student lowercased everything but "Earth" and "Antarctica": everyday
    questions whose answers name a day, a month or a holiday show that names change case too."""
    named = {q.text for q in instruction_sets.TRAIN_NAMED}
    prompts = read_prompts(FILES / "train.jsonl")
    for kind in ("lowercase", "uppercase"):
        assert sum(p.meta["question"] in named for p in prompts if p.meta["kind"] == kind) >= 4, kind
    for q in instruction_sets.TRAIN_NAMED:
        assert q.short in q.sentence, (q.short, q.sentence)  # the name, capitalised, wherever it stands


def test_a_prompt_that_names_its_bullet_marker_is_checked_for_that_marker() -> None:
    named = [p for name in ("train.jsonl", "heldout.jsonl", "demo-train.jsonl", "demo-heldout.jsonl")
             for p in read_prompts(FILES / name) if 'starting with "- "' in p.text]
    assert len(named) >= 8
    for p in named:
        n = p.meta["n"]
        assert run_checks(p.checks, "\n".join(f"- point {i}" for i in range(n))).passed, p.id
        # the demo's first training row once was a '*' list marked verified
        assert not run_checks(p.checks, "\n".join(f"* point {i}" for i in range(n))).passed, p.id
    example = [p for p in read_prompts(FILES / "heldout.jsonl") if "* This is point 1." in p.text]
    assert example and all(run_checks(p.checks, "- a\n- b\n- c\n- d"[: 4 * p.meta["n"] - 1]).passed for p in example)


def test_the_end_phrase_trains_on_each_phrase_that_is_all_first_and_half_on_open_questions() -> None:
    """The confirmation set's end-phrase misses were all open questions ending in "That is all.", the phrase
    a random draw had given 2 of 10 training prompts, and the training prompts 1 open question of 10."""
    prompts = [p for p in read_prompts(FILES / "train.jsonl") if p.meta["kind"] == "end_phrase"]
    phrases = Counter(p.meta["phrase"] for p in prompts)
    assert phrases["That is all."] == max(phrases.values()) and max(phrases.values()) - min(phrases.values()) <= 1
    assert set(phrases) == set(instruction_sets.END_PHRASES)
    open_ = {q.text for q in instruction_sets.TRAIN_OPEN + instruction_sets.TRAIN_OPEN_MORE}
    assert sum(p.meta["question"] in open_ for p in prompts) == len(prompts) // 2


def test_several_draws_show_each_kinds_mean_and_range_and_how_many_draws_reached_80_percent(tmp_path) -> None:
    import learning

    def draw(name: str, upper: int, bullets: int) -> learning.Draw:
        held = {"bullets": {"n": 16, "current": 4, "new": bullets}, "uppercase": {"n": 16, "current": 0, "new": upper}}
        confirm = {"bullets": {"n": 16, "current": 4, "new": 14}, "uppercase": {"n": 16, "current": 0, "new": 14}}
        return learning.Draw(tmp_path / name, held, confirm, general_base=47, general_tuned=46)

    table = learning.draws_table([draw("a-seed0", 10, 16), draw("a-seed1", 13, 12)])
    assert "| uppercase | 72% (62%-81%) | 88% |" in table
    assert "| bullets | 88% (75%-100%) | 88% |" in table
    assert "| a-seed0 | 81.2% | uppercase 10/16 | 87.5% | none | 46 (47) |" in table
    assert "| a-seed1 | 78.1% | bullets 12/16 | 87.5% | none | 46 (47) |" in table
    assert table.endswith("every kind at 80% or more: held out in 0 of 2 draws, on the confirmation set in 2 of 2")


def test_a_summary_of_an_unfinished_run_says_which_run_and_what_to_do(tmp_path) -> None:
    import learning

    with pytest.raises(SystemExit, match="has no confirm.json: the benchmark has not finished that run"):
        learning.read_draw(tmp_path / "learning-seed2")

"""Near-duplicate prompts and self-consistency agreement."""

from __future__ import annotations

import random

from distill.checks.similarity import near_duplicates, near_identical
from distill.stages.consistency import agreement, answer_key, choose


def test_near_duplicates_keep_the_first_of_each_group() -> None:
    texts = ["What is the capital of France?", "Name a prime number above ten.",
             "what is the capital of  France", "What is the capital of Spain?",
             "WHAT IS THE CAPITAL OF FRANCE?!"]
    assert near_duplicates(texts) == {2: 0, 4: 0}


def test_near_duplicates_scale_and_find_a_planted_pair() -> None:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choices(vocab, k=14)) for _ in range(5000)]
    texts.append(texts[1234] + " please")
    assert near_duplicates(texts) == {5000: 1234}


def test_near_duplicates_compare_whole_conversations() -> None:
    question = {"role": "user", "content": "Is that right? Explain why in one sentence."}
    prime = [{"role": "user", "content": "Is 7 a prime number?"}, {"role": "assistant", "content": "Yes, 7 is prime."}]
    conversations = [
        [*prime, question],
        [{"role": "user", "content": "Is Paris in Italy?"}, {"role": "assistant", "content": "Yes, it is."}, question],
        [{"role": "system", "content": "Answer in French."}, question],
        [question],
        [{"role": "user", "content": "is 7 a prime number"}, {"role": "assistant", "content": "Yes, 7 is prime!"},
         question],
        [{"role": "assistant", "content": "Is 7 a prime number?"}, prime[1], question],  # other roles
    ]
    assert near_duplicates(conversations) == {4: 0}


def test_prompts_without_words_compare_by_exact_text() -> None:
    assert near_duplicates(["???", "!!!", ":-)", "???", "What?", "", "   ", ""]) == {3: 0, 7: 5}


def test_near_identical() -> None:
    assert near_identical("The answer is 42.", "the answer is 42")
    assert not near_identical("The answer is 41.", "Six times seven is forty-two.")


def test_agreement_compares_final_numbers_then_text() -> None:
    assert answer_key("so 6*7 = 42.") == answer_key("The answer: 42") == "number:42"
    found = agreement(["It is 42", "42!", "I get 41", "Answer 42"])
    assert (found.fraction, found.majority, found.chosen) == (0.75, "number:42", 0)
    assert agreement(["Paris.", "paris", "Lyon"]).fraction == 2 / 3


def test_choose_picks_the_first_majority_sample_per_prompt() -> None:
    rows = [{"id": f"a{k}", "prompt_id": "q", "sample": k, "answer": text}
            for k, text in enumerate(["41", "42", "42"])]
    (row, found), = choose(rows).values()
    assert row["id"] == "a1" and round(found.fraction, 2) == 0.67

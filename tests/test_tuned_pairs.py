"""`distill.stages.tuned_pairs`: the SFT adapter's failing samples against the verified answer.

The rule: a prompt is sampled only when it has a reference and a training answer that passes it; each
distinct failing sample (not one the student stopped early, finish_reason "failed") is the rejected
side, that answer the chosen one; a passing sample gives nothing.
"""

from __future__ import annotations

from distill.records.prompts import Prompt
from distill.stages.tuned_pairs import tuned_pairs, verified_answers
from distill.training.examples import Example


def _prompt(pid: str, text: str, reference: object = None) -> Prompt:
    from distill.checks.reference import parse_reference

    return Prompt(id=pid, messages=({"role": "user", "content": text},), reference=reference,
                  checks=parse_reference(reference) if reference is not None else ())


def _example(text: str, completion: str) -> Example:
    return Example(id=f"e-{text}-{completion}", prompt=({"role": "user", "content": text},), completion=completion)


def _sample(pid: str, text: str, k: int, answer: str, finish: str = "stop") -> dict:
    return {"id": f"a-{pid}-{k}", "prompt_id": pid, "sample": k, "messages": [{"role": "user", "content": text}],
            "answer": answer, "finish_reason": finish, "round": 1}


UPPER = {"type": "uppercase"}


def test_only_prompts_with_a_reference_and_a_passing_training_answer_are_verified() -> None:
    prompts = [_prompt("up", "Describe the sea in capitals.", UPPER),
               _prompt("plain", "Describe the sea."),  # no reference: nothing decides a pair
               _prompt("wrong", "Describe a cat in capitals.", UPPER),  # its only training answer fails the check
               _prompt("none", "Describe a dog in capitals.", UPPER)]  # no training answer at all
    examples = [_example("Describe the sea in capitals.", "The sea is big."),
                _example("Describe the sea in capitals.", "THE SEA IS BIG."),
                _example("Describe the sea.", "The sea is big."),
                _example("Describe a cat in capitals.", "A cat purrs.")]
    verified = verified_answers(prompts, examples)
    assert list(verified) == ["up"]
    assert verified["up"][1] == "THE SEA IS BIG."  # the answer that passes, not the first one


def test_each_distinct_failing_sample_is_rejected_against_the_verified_answer() -> None:
    text = "Describe the sea in capitals."
    verified = verified_answers([_prompt("up", text, UPPER)], [_example(text, "THE SEA IS BIG.")])
    samples = [_sample("up", text, 0, "THE SEA IS BIG AND BLUE."),  # passes: no pair
               _sample("up", text, 1, "The sea is big."),
               _sample("up", text, 2, "The  sea is big. "),  # the same failure, spaced differently
               _sample("up", text, 3, "THE SEA is", finish="length"),  # cut at the token limit: still a failure
               _sample("up", text, 4, "The", finish="failed"),  # stopped early: a prefix, never rejected
               _sample("other", "Something else?", 0, "no")]  # not a verified prompt
    found = tuned_pairs(samples, verified)
    assert found.summary() == {"prompts": 1, "samples": 5, "pairs": 2}
    rows = [p.to_row() for p in found.pairs]
    assert [r["rejected"][0]["content"] for r in rows] == ["The sea is big.", "THE SEA is"]
    assert {r["chosen"][0]["content"] for r in rows} == {"THE SEA IS BIG."}
    assert rows[0]["prompt"] == [{"role": "user", "content": text}]
    assert rows[0]["meta"] == {"prompt_id": "up", "rejected_answer_id": "a-up-1", "round": 1, "source": "tuned",
                               "rejected_fails": rows[0]["meta"]["rejected_fails"]}
    assert rows[0]["meta"]["rejected_fails"] and len({r["id"] for r in rows}) == 2


def test_a_tuned_student_that_passes_every_sample_gives_no_pair() -> None:
    text = "Describe the sea in capitals."
    verified = verified_answers([_prompt("up", text, UPPER)], [_example(text, "THE SEA IS BIG.")])
    found = tuned_pairs([_sample("up", text, k, "THE SEA.") for k in range(3)], verified)
    assert found.summary() == {"prompts": 1, "samples": 3, "pairs": 0}

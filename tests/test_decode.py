"""Continuous batching decodes each prompt exactly as `generate` does on its own.

A tiny random Llama (fixed seed, a 64-token vocabulary, weights wide enough that its greedy
answers vary) answers prompts of different lengths. A random model has no end-of-turn token, so
the tests name as end tokens a few tokens it says at different steps in different rows: rows end
at different times, and the loop refills them. The reference is transformers' `generate` on one prompt at a time. A counting
wrapper around the model (the seam `stream` calls) shows how many rows each forward pass had.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from distill.student.decode import Sampling, decode, stream  # noqa: E402

PROMPTS = [[3, 4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [17, 18, 19], [20, 21, 22, 23, 24, 25],
           [26, 27, 28, 29, 30], [31, 32, 33, 34, 35, 36, 37, 38, 39], [40]]
STEPS = 12
PAD = 0


@pytest.fixture(scope="module")
def tiny() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.5, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


class Counting:
    """The model, recording (rows, input positions, mask width) of every forward pass."""

    def __init__(self, model: Any):
        self.model, self.device, self.config, self.calls = model, model.device, model.config, []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append((*kwargs["input_ids"].shape, kwargs["attention_mask"].shape[1]))
        return self.model(**kwargs)


def alone(model: Any, ids: list[int], eos: list[int], steps: int = STEPS) -> list[int]:
    """`generate`'s greedy tokens for one prompt, up to and including its first end token."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=steps, do_sample=False, pad_token_id=PAD, eos_token_id=eos or None)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             generation_config=config)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def ends(tiny: Any) -> list[int]:
    """End tokens that make rows end at different steps: tokens the model says mid-answer, and in
    no row before that step's answer of the row they were taken from."""
    free = [alone(tiny, ids, []) for ids in PROMPTS]
    picked: list[int] = []
    for row, step in zip(free, (2, 5, 8, 3)):
        if row[step] not in row[:step]:
            picked.append(row[step])
    return sorted(set(picked))


def test_each_answer_is_the_one_generate_gives_alone(tiny: Any, ends: list[int]) -> None:
    counting = Counting(tiny)
    with torch.inference_mode():
        got = decode(counting, PROMPTS, slots=3, max_new_tokens=STEPS, eos_ids=ends, pad_id=PAD, trim_columns=4)
    expected = [alone(tiny, ids, ends) for ids in PROMPTS]
    assert got == expected
    lengths = [len(row) for row in expected]
    assert len(set(lengths)) > 2 and min(lengths) < STEPS  # rows did end at different steps
    assert max(rows for rows, _, _ in counting.calls) == 3  # never more than `slots` rows
    prefills = [c for c in counting.calls if c[1] == c[2]]  # a fresh cache: the mask is as wide as the input
    assert len(prefills) > 1 and sum(rows for rows, _, _ in prefills) == len(PROMPTS)  # ended rows were refilled
    steps = [width for rows, new, width in counting.calls if new != width]
    assert any(later < earlier for earlier, later in zip(steps, steps[1:]))  # masked-out columns were trimmed


def test_a_longer_prompt_later_widens_the_batch_and_answers_come_as_they_end(tiny: Any, ends: list[int]) -> None:
    prompts = sorted(PROMPTS, key=len)  # the long prompts arrive after the short ones
    with torch.inference_mode():
        order = list(stream(tiny, prompts, slots=2, max_new_tokens=STEPS, eos_ids=ends, pad_id=PAD))
    assert sorted(i for i, _ in order) == list(range(len(prompts)))
    assert [ids for _, ids in sorted(order)] == [alone(tiny, ids, ends) for ids in prompts]


def test_sampling_is_reproducible_under_a_seed(tiny: Any) -> None:
    def sample(seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        with torch.inference_mode():
            return decode(tiny, PROMPTS[:4], slots=2, max_new_tokens=6, eos_ids=[], pad_id=PAD,
                          sampling=Sampling(temperature=1.0, top_p=0.9))

    first = sample(3)
    assert first == sample(3) and first != sample(4)
    assert all(len(row) == 6 for row in first)


def test_a_sliding_window_model_decodes_in_whole_batches() -> None:
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    model = MistralForCausalLM(config).eval()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    counting = Counting(model)
    with torch.inference_mode():
        got = decode(counting, prompts, slots=2, max_new_tokens=5, eos_ids=[], pad_id=0)
        expected = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                   generation_config=GenerationConfig(max_new_tokens=5, do_sample=False,
                                                                      pad_token_id=0))[0, len(p):].tolist()
                    for p in prompts]
    assert got == expected
    assert [rows for rows, new, width in counting.calls if new == width] == [2, 2]  # no refill: a new batch when one ends



def test_samples_of_one_prompt_are_prefilled_once_and_drawn_apart(tiny: Any, ends: list[int]) -> None:
    prompts = [PROMPTS[1], PROMPTS[1], PROMPTS[2], PROMPTS[1]]
    counting = Counting(tiny)
    with torch.inference_mode():
        greedy = decode(counting, prompts, slots=4, max_new_tokens=STEPS, eos_ids=ends, pad_id=PAD)
    assert greedy == [alone(tiny, ids, ends) for ids in prompts]
    assert [rows for rows, new, width in counting.calls if new == width] == [2]  # two distinct prompts computed
    torch.manual_seed(0)
    with torch.inference_mode():
        sampled = decode(tiny, prompts, slots=4, max_new_tokens=8, eos_ids=[], pad_id=PAD, sampling=Sampling(1.0))
    assert len({tuple(row) for row in (sampled[0], sampled[1], sampled[3])}) == 3  # each sample draws its own tokens


class Arrivals:
    """A `Feed` whose prompts arrive while the loop decodes: prompt k becomes available after the
    loop has taken `at[k]` tokens in all (counted by `Ending`, the rules)."""

    def __init__(self, prompts: list[list[int]], at: list[int]):
        self.prompts, self.at, self.next, self.tokens = prompts, at, 0, 0

    def waiting(self) -> int:
        return sum(1 for k in range(self.next, len(self.prompts)) if self.at[k] <= self.tokens)

    def take(self, n: int) -> list[tuple[Any, list[int]]]:
        taken = []
        while len(taken) < min(n, self.waiting()):
            taken.append((f"p{self.next}", self.prompts[self.next]))
            self.next += 1
        return taken


class Ending:
    """Rules that decode greedily and end a row at one of `ends`, counting tokens for `Arrivals`."""

    def __init__(self, ends: list[int], feed: Arrivals):
        self.ends, self.feed, self.seen = set(ends), feed, []

    def pick(self, owners: Any, logits: Any) -> Any:
        self.seen.append(list(owners))
        return logits.argmax(dim=-1)

    def ended(self, owner: Any, token: int) -> bool:
        self.feed.tokens += 1
        return token in self.ends


def test_prompts_that_arrive_while_rows_decode_join_the_running_batch(tiny: Any, ends: list[int]) -> None:
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[3], PROMPTS[4]]  # the first answer is the longest
    expected = {f"p{k}": alone(tiny, ids, ends) for k, ids in enumerate(prompts)}
    assert len(expected["p0"]) > 4
    feed = Arrivals(prompts, at=[0, 1, 2, 3, 4])
    rules = Ending(ends, feed)
    counting = Counting(tiny)
    with torch.inference_mode():
        done = dict(stream(counting, feed, slots=4, max_new_tokens=STEPS, eos_ids=[], pad_id=PAD, rules=rules))
    assert done == expected
    assert max(len(owners) for owners in rules.seen) > 1  # several prompts decoded in one step
    prefills = [c for c in counting.calls if c[1] == c[2]]
    assert len(prefills) >= 3  # later arrivals were prefilled on their own and placed into the batch
    assert max(rows for rows, _, _ in counting.calls) <= 4  # never more than `slots` rows


def test_a_prefix_every_prompt_shares_is_computed_once_and_the_answers_stay_the_same(tiny: Any, ends: list[int]) -> None:
    """A chat template starts every prompt with the same system turn: the first prefill computes it
    for one row, then every prompt's own tokens after it, and each answer is still `generate`'s."""
    shared = [1, 2, 7, 9, 11, 13, 2, 5, 8, 6]
    prompts = [shared + ids for ids in PROMPTS]
    counting = Counting(tiny)
    with torch.inference_mode():
        got = decode(counting, prompts, slots=4, max_new_tokens=STEPS, eos_ids=ends, pad_id=PAD, trim_columns=4)
    assert got == [alone(tiny, ids, ends) for ids in prompts]
    own = max(len(ids) for ids in PROMPTS[:4])
    assert counting.calls[:2] == [(1, len(shared), len(shared)), (4, own, len(shared) + own)]

"""The in-place KV cache gives the very numbers of transformers' own cache, at every step.

A tiny random Llama (fixed seed) decodes a left-padded batch greedily, once with transformers'
`DynamicCache` and once with `GrowingCache`, past more than one `CHUNK` of positions, so the buffers
regrow mid-generation: the tokens and every step's logits are equal, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from distill.student import kv_cache  # noqa: E402
from distill.student.model import Student  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Student:
    return Student.load(tiny_model_dir, device="cpu", dtype="float32")


def decode(student: Student, cache, steps: int):  # type: ignore[no-untyped-def]
    from transformers import GenerationConfig

    enc = student.tokenizer(["Hi", "A much longer prompt than the first one, padded on the left"],
                            return_tensors="pt", padding=True)
    config = GenerationConfig(max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                              pad_token_id=student.tokenizer.pad_token_id, output_scores=True,
                              return_dict_in_generate=True)
    with torch.inference_mode():
        return student.model.generate(**enc, generation_config=config, cache=cache)


def test_growing_cache_decodes_exactly_like_the_dynamic_cache(tiny: Student) -> None:
    from transformers import DynamicCache

    steps = kv_cache.CHUNK + 20  # the prompt fills part of the first buffer: it regrows at least once
    expected = decode(tiny, DynamicCache(), steps)
    cache = kv_cache.growing_cache(tiny.model)
    got = decode(tiny, cache, steps)
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, expected.scores))
    layer = cache.layers[0]
    assert isinstance(layer, kv_cache.GrowingLayer)
    assert layer.keys.shape[-2] == expected.sequences.shape[1] - 1  # the last token is never fed back
    assert layer.keys.data_ptr() == layer._buffers[0].data_ptr()  # a view of the buffer, not a copy


def test_a_layer_whose_tensors_were_replaced_rebuilds_its_buffer() -> None:
    layer = kv_cache.GrowingLayer()
    first = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    layer.update(first, first + 100)
    layer.batch_select_indices(torch.tensor([1]))  # transformers replaces the tensors: a row kept
    step = torch.full((1, 1, 1, 4), -1.0)
    keys, values = layer.update(step, step)
    assert torch.equal(keys, torch.cat([first[1:], step], dim=-2))
    assert torch.equal(values, torch.cat([first[1:] + 100, step], dim=-2))


def test_sliding_window_models_keep_transformers_cache() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    assert kv_cache.growing_cache(MistralForCausalLM(config)) is None


def test_selecting_rows_after_the_tensors_were_replaced_selects_the_replaced_tensors() -> None:
    """A decoding loop that widens or grows a batch replaces the layer's tensors; dropping rows
    before the next update must drop them from those tensors, not from the stale buffers."""
    layer = kv_cache.GrowingLayer()
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)
    layer.update(keys, keys.clone())
    widened = torch.cat([torch.zeros(2, 1, 2, 2), layer.keys], dim=2)  # two masked-out columns on the left
    grown = torch.cat([widened, torch.full((1, 1, 5, 2), 7.0)])  # and a third row
    layer.keys, layer.values = grown, grown.clone()
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, grown[[2, 0]]) and torch.equal(layer.values, grown[[2, 0]])
    step = torch.ones(2, 1, 1, 2)
    keys_now, _ = layer.update(step, step.clone())
    assert torch.equal(keys_now, torch.cat([grown[[2, 0]], step], dim=2))

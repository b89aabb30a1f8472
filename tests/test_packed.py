"""Packed linear layers compute what `nn.Linear` computes, never with a stale copy, and never in training.

The packed copy of a weight is oneDNN's blocked layout of the same numbers: its products differ
from MKL's only in the order of the sums (a few float32 ulps). These tests hold it to that, and to
its rules: gradients flow as through a plain linear, a weight changed in place or replaced is
packed again, views over the shared weights use one copy, a read for merging is not packed,
`DISTILL_PACKED=0` packs nothing, and a student on a CPU answers the same greedy tokens with and
without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from distill.student import packed  # noqa: E402
from distill.student.model import Student  # noqa: E402
from distill.student.weights import SharedWeights  # noqa: E402

if not torch.backends.mkldnn.is_available():  # pragma: no cover (every x86 and arm64 wheel has it)
    pytest.skip("this torch has no oneDNN", allow_module_level=True)


def packed_pair(in_features: int = 48, out_features: int = 80, bias: bool = True):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    plain = torch.nn.Linear(in_features, out_features, bias=bias)
    twin = torch.nn.Linear(in_features, out_features, bias=bias)
    twin.load_state_dict(plain.state_dict())
    assert packed.pack(twin) == 1
    return plain, twin


@pytest.mark.parametrize("rows", [1, 8, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_layer_computes_the_linear_product(rows: int, bias: bool) -> None:
    plain, twin = packed_pair(bias=bias)
    x = torch.randn(rows, 5, 48)  # a batch of sequences, as a decoder layer sees it
    with torch.inference_mode():
        expected, got = plain(x), twin(x)
    assert isinstance(twin, torch.nn.Linear) and type(twin) is packed.PackedLinear
    assert twin.state_dict().keys() == plain.state_dict().keys()  # saved and loaded as before
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert getattr(twin.weight, packed.HELD) is not None  # the packed copy was used and kept


def test_training_uses_the_plain_linear_and_gradients_flow() -> None:
    plain, twin = packed_pair()
    x = torch.randn(4, 48, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_(True)
    plain(x).square().sum().backward()
    twin(x_twin).square().sum().backward()
    assert not hasattr(twin.weight, packed.HELD)  # nothing packed while gradients are recorded
    assert torch.equal(x.grad, x_twin.grad)
    assert torch.equal(plain.weight.grad, twin.weight.grad)


def test_a_weight_changed_in_place_is_packed_again() -> None:
    plain, twin = packed_pair()
    x = torch.randn(3, 48)
    with torch.no_grad():
        twin(x)
        first = getattr(twin.weight, packed.HELD)[1]
        for layer in (plain, twin):
            layer.weight.mul_(-2.0)  # as merging an adapter rewrites the base weights
        torch.testing.assert_close(twin(x), plain(x), rtol=1e-5, atol=1e-5)
    assert getattr(twin.weight, packed.HELD)[1] is not first


def test_a_weight_whose_storage_was_replaced_is_packed_again() -> None:
    plain, twin = packed_pair()
    x = torch.randn(3, 48)
    with torch.no_grad():
        twin(x)
        for layer in (plain, twin):
            layer.weight.data = layer.weight.data * 3.0  # as PEFT's safe merge swaps in the merged weights
        torch.testing.assert_close(twin(x), plain(x), rtol=1e-5, atol=1e-5)


def test_inputs_of_another_dtype_use_the_plain_linear() -> None:
    plain, twin = packed_pair()
    plain, twin = plain.to(torch.float64), twin.to(torch.float64)
    x = torch.randn(2, 48, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(twin(x), plain(x))
    assert not hasattr(twin.weight, packed.HELD)


def test_autocast_computes_the_plain_linear_in_its_own_dtype() -> None:
    plain, twin = packed_pair()
    x = torch.randn(2, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = plain(x), twin(x)
    assert got.dtype == expected.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_bfloat16_weights_stay_plain_where_the_cpu_lacks_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "cpu_bf16", lambda: False)
    plain, twin = (layer.to(torch.bfloat16) for layer in packed_pair())
    x = torch.randn(3, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(twin(x), plain(x))
    assert not hasattr(twin.weight, packed.HELD)


@pytest.mark.skipif(not packed.cpu_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX")
@pytest.mark.parametrize("rows", [1, 8, 33])
def test_a_packed_bfloat16_layer_computes_the_linear_product(rows: int) -> None:
    """Where the CPU has bfloat16 instructions, bfloat16 weights are packed too; the product is the
    float32 product of the same bfloat16 numbers, rounded to bfloat16."""
    plain, twin = (layer.to(torch.bfloat16) for layer in packed_pair())
    x = torch.randn(rows, 5, 48, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = torch.nn.functional.linear(x.float(), plain.weight.float(), plain.bias.float())
        got = twin(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)  # bfloat16 keeps 8 bits of mantissa
    assert getattr(twin.weight, packed.HELD)[1].dtype == torch.bfloat16


def test_packing_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(packed.ENV, "0")
    layer = torch.nn.Linear(4, 4)
    assert packed.pack(layer) == 0 and type(layer) is torch.nn.Linear


def test_views_over_the_shared_weights_share_one_packed_copy(tiny_model_dir: Path) -> None:
    from distill.student.weights import read_weights

    shared = SharedWeights(read_weights)
    first = shared.view(tiny_model_dir, "sha", torch.float32, "cpu")
    second = shared.view(tiny_model_dir, "sha", torch.float32, "cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        first(input_ids=ids)
        second(input_ids=ids)
    up = [m.mlp.up_proj for m in (first.model.layers[0], second.model.layers[0])]
    assert all(type(u) is packed.PackedLinear for u in up)
    assert up[0].weight is up[1].weight
    assert getattr(up[0].weight, packed.HELD)[1] is getattr(up[1].weight, packed.HELD)[1]


def test_a_read_of_its_own_for_merging_stays_plain(tiny_model_dir: Path) -> None:
    from distill.student.weights import read_weights

    private = SharedWeights(read_weights).read(tiny_model_dir, torch.float32, "cpu")
    assert not any(type(m) is packed.PackedLinear for m in private.modules())


def test_a_student_answers_the_same_greedy_tokens_packed_or_not(tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.student.decode import decode

    answers = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(packed.ENV, setting)
        Student.release()
        student = Student.load(tiny_model_dir, device="cpu", dtype="float32")
        kinds = {type(m).__name__ for m in student.model.modules() if isinstance(m, torch.nn.Linear)}
        assert kinds == ({"PackedLinear"} if setting == "1" else {"Linear"})
        prompts = [student.tokenizer(text)["input_ids"] for text in
                   ("Hi", "Name three rivers of Europe", "What is the capital of France? Answer briefly.")]
        with torch.inference_mode():
            answers[setting] = decode(student.model, prompts, slots=2, max_new_tokens=24,
                                      eos_ids=student.eos_ids, pad_id=student.tokenizer.pad_token_id)
    Student.release()
    assert answers["1"] == answers["0"]

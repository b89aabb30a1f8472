"""Linear layers that multiply by a oneDNN-packed copy of their weight wherever no gradient is recorded.

Why: decoding multiplies a few rows (1 to 64) by every weight matrix at each step. PyTorch's
float32 `linear` on a CPU hands that to MKL's sgemm on the weight as stored, and at these shapes
it runs far below the machine's speed: 80% of a SmolLM2-135M decoding step was `mm`. oneDNN's
linear on a weight reordered once into its own blocked layout (what `torch.compile`'s CPU backend
does when it freezes weights) took a step at 8 rows in 113 ms instead of 163 on a 2-core EPYC, and
the greedy answers stayed the same (bench/generate.py, `distill` against `distill-unpacked`).

`pack(model)` turns every `nn.Linear` of a model into a `PackedLinear`. It is still an `nn.Linear`:
PEFT wraps it as before, and its state dict is unchanged. The packed copy is made on the first
forward pass without gradients and kept on the weight tensor itself, so every view over the same
shared weights (`weights.SHARED_WEIGHTS`, the only models packed) uses one copy, and it goes when
the weight goes. It is made again when the weight was replaced or changed in place through the
tensor (its storage or version counter moved). A change through `weight.data` (PEFT's merge) moves
neither, which is why only the shared weights, never changed in place, are packed; a student
loaded to be merged (`private=True`) is read plain. The packed copy is never used while gradients
are recorded (training), under autocast (which computes a plain linear in its own dtype), nor for
inputs of another device or dtype: there the layer is a plain linear. `DISTILL_PACKED=0` turns
packing off (for comparisons, and as a way out should a CPU's oneDNN misbehave).

bfloat16 weights (a student loaded with `dtype="bfloat16"`, as `distill serve --dtype bfloat16`
does) are packed too where the CPU has bfloat16 instructions (`cpu_bf16()`: AVX512-BF16 or AMX).
On a 2-core Xeon with AMX, one decoding step's 211 linear layers of SmolLM2-135M took 16-21 ms
packed in bfloat16 at 1 to 64 rows, against 21-56 ms in float32 (plain or packed) and 25-28 ms for
PyTorch's own bfloat16 linear: half the bytes of weight to read, and AMX tiles for the arithmetic.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

ENV = "DISTILL_PACKED"
HELD = "_distill_packed"  # the attribute on a weight tensor: ((its storage, its version) when packed, the copy)
# The batch oneDNN chooses its layout for. float32: of 1, 8 and 64, 8 decoded fastest at both 8 and
# 64 rows. bfloat16: of 1, 8 and 32, 32 was fastest or level at 1, 8, 32 and 64 rows (AMX Xeon).
HINT_ROWS = {torch.float32: 8, torch.bfloat16: 32}


@lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated,
    several times slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but long-standing torch.cpu helpers
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def enabled() -> bool:
    """Whether `pack` packs: oneDNN is built in and `$DISTILL_PACKED` is not 0."""
    return os.environ.get(ENV, "1").strip() != "0" and torch.backends.mkldnn.is_available()


class PackedLinear(torch.nn.Linear):
    """An `nn.Linear` whose inference passes on a CPU (float32, or bfloat16 where `cpu_bf16()`) use
    the packed copy of its weight."""

    def forward(self, x: Any) -> Any:
        packed = packed_weight(self.weight, x)
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


def packed_weight(weight: Any, x: Any) -> Any:
    """The packed copy of `weight` (made or remade here), or None where the plain linear must run."""
    if (torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or x.device.type != "cpu"
            or x.dtype != weight.dtype or not packable(weight.dtype) or weight.device.type != "cpu"):
        return None
    try:
        stamp = (weight.data_ptr(), weight._version)
    except RuntimeError:  # an inference-mode tensor keeps no version: it cannot be told apart from a changed one
        return None
    held = getattr(weight, HELD, None)
    if held is None or held[0] != stamp:
        held = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), HINT_ROWS[weight.dtype]))
        setattr(weight, HELD, held)
    return held[1]


def packable(dtype: Any) -> bool:
    """Whether weights of `dtype` are packed: float32, and bfloat16 where the CPU has it natively."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_bf16())


def pack(model: Any) -> int:
    """Make every plain `nn.Linear` of `model` a `PackedLinear` (when `enabled()`); returns how many."""
    if not enabled():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = PackedLinear
            count += 1
    return count

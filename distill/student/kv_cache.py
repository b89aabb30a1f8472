"""A key/value cache that grows in place: generation writes each new position, it never copies the cache.

transformers' default `DynamicCache` appends every decoded position with `torch.cat`, which
allocates and copies each layer's whole keys and values at every step: at batch 64 after 200
tokens that is about 0.6 GB of copying per step for SmolLM2-135M, on a CPU a large share of the
step. `GrowingCache` keeps each layer's keys and values in a buffer with room for `CHUNK` more
positions; a step copies only its new position into the buffer, and attention reads a view of the
filled part. The numbers are the same as `DynamicCache`'s (the same values, in the same order), so
greedy answers do not change.

Dropping finished rows (`batch_select_indices`, `distill.student.decode`) selects the rows of the
buffers, room and all. Anything else that replaces a layer's tensors (beam reordering, a decoding
loop adding columns or rows) is noticed at the next update or selection: the buffer is rebuilt
from the replaced tensors.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer

CHUNK = 128  # positions of room added whenever a buffer is full


class GrowingLayer(DynamicLayer):
    """One layer's keys and values: views of the filled part of buffers that grow by `CHUNK` positions."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._buffers: tuple[Any, Any] | None = None

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled = self.get_seq_length()
        wanted = filled + key_states.shape[-2]
        if not self._fits(key_states, wanted):
            self._regrow(key_states, value_states, filled, wanted + CHUNK)
        keys, values = self._buffers  # type: ignore[misc]
        keys[:, :, filled:wanted].copy_(key_states)
        values[:, :, filled:wanted].copy_(value_states)
        self.keys, self.values = keys[:, :, :wanted], values[:, :, :wanted]
        return self.keys, self.values

    def reset(self) -> None:
        self._buffers = None
        super().reset()

    def batch_select_indices(self, indices: Any) -> None:
        """Keep only the rows `indices` (a decoding loop dropping finished rows): the buffers keep their room."""
        if not self._backs_tensors():  # the tensors were replaced (a batch widened or grew): select them
            self._buffers = None
            super().batch_select_indices(indices)
            return
        filled = self.get_seq_length()
        keys, values = (buffer[indices] for buffer in self._buffers)
        self._buffers = (keys, values)
        self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]

    def _backs_tensors(self) -> bool:
        """Whether the buffers still hold the layer's tensors (nothing replaced them)."""
        if self._buffers is None:
            return False
        keys = self._buffers[0]
        return keys.shape[:2] == self.keys.shape[:2] and (self.keys.numel() == 0 or self.keys.data_ptr() == keys.data_ptr())

    def _fits(self, key_states: Any, wanted: int) -> bool:
        """Whether the buffers still back the layer's tensors and have room for `wanted` positions."""
        return (self._backs_tensors() and self._buffers[0].shape[-2] >= wanted  # type: ignore[index]
                and self._buffers[0].shape[:2] == key_states.shape[:2])  # type: ignore[index]

    def _regrow(self, key_states: Any, value_states: Any, filled: int, capacity: int) -> None:
        import torch

        batch, heads, _, dim = key_states.shape
        keys = torch.empty(batch, heads, capacity, dim, dtype=key_states.dtype, device=key_states.device)
        values = torch.empty(batch, heads, capacity, value_states.shape[-1], dtype=value_states.dtype,
                             device=value_states.device)
        if filled:
            keys[:, :, :filled].copy_(self.keys)
            values[:, :, :filled].copy_(self.values)
        self._buffers = (keys, values)


class GrowingCache(DynamicCache):
    """A `DynamicCache` whose layers grow in place (`GrowingLayer`); pass it to `generate` as
    `cache`. For models whose layers all use full attention (Llama, SmolLM2)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer


def growing_cache(model: Any) -> GrowingCache | None:
    """A `GrowingCache` for `model`, or None where its layers are not all full attention (a sliding
    window or linear attention layer keeps transformers' own cache)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None)
    if getattr(config, "sliding_window", None) or (layer_types and set(layer_types) != {"full_attention"}):
        return None
    return GrowingCache()

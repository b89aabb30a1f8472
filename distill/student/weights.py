"""The process's student base weights: read from disk once, shared by every Student over them.

A round answers, trains, evaluates (two Students at once) and may run a local teacher on the same
model; each used to read the weights from disk again (4-6 reads a round). `SHARED_WEIGHTS` reads
them once per (model directory, weights hash, device, dtype) and hands out views: a copy of the
module tree (config, buffers, modules) whose parameters are the shared tensors, frozen. PEFT
injects LoRA layers into a view's own modules, so an adapter or a training run on one view leaves
the others as they were. It holds the most recent key only, so a long-lived process that moves to
another student (or calls `release()`) does not keep the old weights. On a CPU the shared base's
linear layers multiply by oneDNN-packed weights where no gradient is recorded
(`distill.student.packed`); a read of its own (`read`, for code that changes the weights in place,
as merging does) is left plain.

Why views and not PEFT's several adapters on one model: evaluation holds the current and the new
student at once and calls their modules directly, and a local teacher generates in a worker
thread; a view needs no adapter switching. Measured on SmolLM2-135M (2 busy CPU cores, best of 3):
a view 0.6 s, a read from disk 1.6 s, a full `copy.deepcopy` 4.3 s (and twice the memory),
`from_config` on the meta device + `load_state_dict(assign=True)` 1.6 s.
"""

from __future__ import annotations

import copy
import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from distill.errors import ModelError

log = logging.getLogger(__name__)


def read_weights(directory: Path, torch_dtype: Any, device: str) -> Any:
    """Read a model's weights from disk onto `device`, frozen and in eval mode."""
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
    except Exception as exc:  # safetensors, OSError, ValueError... all mean "cannot load"
        raise ModelError(f"{directory}: cannot load the model ({type(exc).__name__}: {exc}); the weights "
                         "may be corrupt or incomplete (for the embedded default run `distill convert --force`)") from None
    model.requires_grad_(False)
    log.info("read the student weights from %s in %.2fs", directory, time.monotonic() - started)
    return model.to(device).eval()


class SharedWeights:
    """The base weights of the most recently loaded student, read once and shared by every view.

    `reader` is the one place weights come from disk (`read_weights`); `reads` counts its calls.
    Holding one key only bounds the memory: loading another model, device or dtype drops the old
    base (Students still alive keep their tensors until they go).
    """

    def __init__(self, reader: Callable[[Path, Any, str], Any] = read_weights):
        self.reader = reader
        self.reads = 0
        self._key: tuple[str, ...] | None = None
        self._base: Any = None
        self._lock = threading.Lock()

    def read(self, directory: Path, torch_dtype: Any, device: str) -> Any:
        """Weights straight from disk, not shared (counted as a read)."""
        self.reads += 1
        return self.reader(directory, torch_dtype, device)

    def view(self, directory: Path, sha256: str, torch_dtype: Any, device: str) -> Any:
        """A module tree of its own over the shared tensors of this model (read first if not held)."""
        key = (str(directory.resolve()), sha256, device, str(torch_dtype))
        with self._lock:
            if self._key != key:
                self._drop()
                self._base, self._key = self.read(directory, torch_dtype, device), key
                if device == "cpu":  # shared weights never change in place, so a packed copy cannot go stale
                    from distill.student.packed import pack

                    pack(self._base)
            base = self._base
            shared = {id(p): p for p in base.parameters()}
            return copy.deepcopy(base, shared)  # modules, config and buffers copied; parameters shared

    def release(self) -> None:
        """Forget the held base weights, so that memory goes once the last Student over them does."""
        with self._lock:
            self._drop()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _drop(self) -> None:
        self._base = self._key = None


SHARED_WEIGHTS = SharedWeights()

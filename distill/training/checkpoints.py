"""Training checkpoints: adapter, optimizer, scheduler and RNG state, written every `save_every` steps.

A checkpoint is written to a temporary directory and renamed into place, so it is complete or
absent. Its state file is read with torch's weights-only unpickler (tensors and plain containers,
nothing callable), so a `state.pt` planted in an output directory cannot run code; one that does
not load that way is refused before anything else is read. A checkpoint resumes only the run that
wrote it: same data, base model, options and number of processes (its fingerprint).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, ModelError
from distill.records.files import fsync_dir, fsync_files

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state file exists)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(output_dir: Path, step: int, peft_model: Any, optimizer: Any, scheduler: Any,
                    fingerprint: str, keep: int) -> Path:
    """Write adapter + optimizer + scheduler state for `step`, atomically; prune old checkpoints."""
    import torch

    root = output_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    torch.save({"step": step, "fingerprint": fingerprint, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, tmp / STATE_FILE)
    fsync_files(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, peft_model: Any, optimizer: Any, scheduler: Any) -> int:
    """Restore adapter, optimizer and scheduler from a checkpoint; returns its step."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_state(path)
    weights = load_file(path / "adapter_model.safetensors", device=str(next(peft_model.parameters()).device))
    set_peft_model_state_dict(peft_model, weights)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's state (step, fingerprint, optimizer, scheduler, RNG), read weights-only: the
    unpickler builds tensors and plain containers and refuses everything else, so a planted file
    cannot run code. ModelError naming the file if it does not load that way."""
    import torch

    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused by the weights-only unpickler, truncated, not a torch file
        raise ModelError(f"{path}: not a checkpoint state distill wrote ({type(exc).__name__}); it was not loaded. "
                         f"Delete {checkpoint}, or pass --restart (restart=True) to start over") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a checkpoint state (a dict), got {type(state).__name__}; delete "
                         f"{checkpoint}, or pass --restart (restart=True) to start over")
    return state


def resume_point(output_dir: Path, fingerprint: str) -> Path | None:
    """The newest checkpoint of this very run, None if none; ConfigError if it belongs to another run."""
    found = checkpoints(output_dir)
    if not found:
        return None
    state = read_state(found[-1])
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{found[-1]}: this checkpoint is from a run with other data, base model or options; "
                          "re-run with the same ones to resume, or pass --restart (restart=True) to start over")
    return found[-1]


def last_checkpoint_step(output_dir: Path) -> int:
    found = checkpoints(output_dir)
    return int(found[-1].name.split("-")[1]) if found else 0

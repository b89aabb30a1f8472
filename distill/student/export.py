"""Exporting the student, base + LoRA adapter or the base alone, for other runtimes.

Formats (`FORMATS`):
- `merged`: the adapter folded into the weights, saved as an ordinary transformers model directory
  (safetensors, config, tokenizer): transformers, vLLM, TGI or `--student DIR` load it without PEFT.
- `gguf`: the merged model as one GGUF file (`model.gguf`, f16, q8_0 or f32) with the tokenizer and
  chat template inside, for llama.cpp, llama-server, LM Studio, Ollama.
- `gguf-lora`: the adapter alone as a llama.cpp LoRA GGUF (`adapter.gguf`), for
  `llama-server -m BASE.gguf --lora adapter.gguf` on the base model's GGUF.
- `ollama`: a folder `ollama create NAME -f DIR/Modelfile` accepts: the merged GGUF and a Modelfile
  (FROM, TEMPLATE, PARAMETER stop); with `lora`, the base GGUF plus the adapter GGUF (ADAPTER).

Every export is written to a temporary folder beside the output and renamed into place, so a crash
never leaves half an export under the output path; a non-empty output is replaced only with `force`.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from distill.config import student_source
from distill.errors import ConfigError, ModelError
from distill.student import gguf_file, modelfile
from distill.student.gguf_file import GGUF_TYPES

FORMATS = ("merged", "gguf", "gguf-lora", "ollama")
MODEL_GGUF = "model.gguf"
ADAPTER_GGUF = "adapter.gguf"
MERGE_RECORD = "distill-merge.json"    # what a merged model directory was made from
EXPORT_RECORD = "distill-export.json"  # the same for the GGUF formats


def export(fmt: str, output: Path, *, adapter: Path | None = None, student: str | None = None,
           gguf_type: str = "f16", dtype: str = "float32", lora: bool = False, force: bool = False) -> Path:
    """Write the student (base `student` + `adapter`, or the base alone when `adapter` is None) to
    `output` in format `fmt`; returns `output`. `gguf_type` is the GGUF precision, `dtype` the merged
    weights' dtype, `lora` makes the Ollama export use the adapter as an ADAPTER over the base GGUF."""
    _check_request(fmt, adapter, gguf_type, lora)
    student = base_of(adapter, student)
    with output_dir(output, force) as folder:
        if fmt == "merged":
            _write_merged(folder, adapter, student, dtype)
        elif fmt == "gguf":
            _write_gguf(folder, adapter, student, gguf_type)
        elif fmt == "gguf-lora":
            _write_lora(folder, adapter, student, gguf_type)
        else:
            _write_ollama(folder, adapter, student, gguf_type, lora)
    return output


def merge(adapter: Path, output: Path, *, student: str | None = None, dtype: str = "float32",
          force: bool = False) -> Path:
    """Merge `adapter` into the base model and save base + adapter to `output` as one transformers model."""
    return export("merged", output, adapter=adapter, student=student, dtype=dtype, force=force)


def _check_request(fmt: str, adapter: Path | None, gguf_type: str, lora: bool) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    if fmt == "gguf-lora" and adapter is None:
        raise ConfigError("--format gguf-lora writes an adapter alone, and none was given: name the adapter "
                          "directory (or a run folder with a promoted adapter), or export the base with --format gguf")
    if lora and (fmt != "ollama" or adapter is None):
        raise ConfigError("--lora belongs to --format ollama with an adapter (the Modelfile's ADAPTER line); "
                          "drop --lora or export --format ollama ADAPTER --lora")


def base_of(adapter: Path | None, student: str | None) -> str | None:
    """The base model to load: `student` when given, else $DISTILL_STUDENT when set; else the base
    recorded in the adapter's training.json when that directory still exists; else None (the embedded
    default). The adapter's recorded weights hash is checked on load either way."""
    if student is not None or adapter is None or student_source() is not None:
        return student
    try:
        recorded = json.loads((adapter / "training.json").read_text(encoding="utf-8"))["base_model"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recorded if Path(recorded).is_dir() else None


@contextmanager
def output_dir(output: Path, force: bool) -> Iterator[Path]:
    """A fresh temporary folder beside `output`, renamed to `output` when the block succeeds."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise ConfigError(f"{output}: already exists and is not empty; pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    os.replace(tmp, output)


# ---------------------------------------------------------------- the formats

def _load(student: str | None, adapter: Path | None, dtype: str = "float32") -> tuple[Any, Any]:
    """(the loaded Student, its plain transformers model with the LoRA update folded in)."""
    from distill.student.model import Student

    loaded = Student.load(student, adapter=adapter, device="cpu", dtype=dtype, private=True)  # merging rewrites them
    model = loaded.model
    return loaded, model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _write_merged(folder: Path, adapter: Path | None, student: str | None, dtype: str) -> None:
    loaded, model = _load(student, adapter, dtype)
    model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    _record(folder / MERGE_RECORD, {"merged_from": loaded.identity.to_dict()})


def _write_gguf(folder: Path, adapter: Path | None, student: str | None, gguf_type: str) -> tuple[Any, Any]:
    """model.gguf of base + adapter; returns the loaded Student and its merged model."""
    loaded, model = _load(student, adapter)
    gguf_file.write_model(folder / MODEL_GGUF, model.state_dict(), model.config, loaded.tokenizer,
                          gguf_type=gguf_type, name=loaded.identity.name)
    _record(folder / EXPORT_RECORD, {"format": "gguf", "gguf_type": gguf_type, "files": [MODEL_GGUF],
                                     "exported_from": loaded.identity.to_dict()})
    return loaded, model


def _write_lora(folder: Path, adapter: Path | None, student: str | None, gguf_type: str) -> None:
    from transformers import AutoConfig

    from distill.student.model import model_identity

    assert adapter is not None  # _check_request
    directory, identity = model_identity(student, adapter)
    try:
        config = AutoConfig.from_pretrained(directory)
    except Exception as exc:  # a broken or missing config.json
        raise ModelError(f"{directory}: cannot read the base model's config ({type(exc).__name__}: {exc})") from None
    gguf_file.write_lora(folder / ADAPTER_GGUF, adapter, config, gguf_type=gguf_type, name=f"{identity.name}-lora")
    _record(folder / EXPORT_RECORD, {"format": "gguf-lora", "gguf_type": gguf_type, "files": [ADAPTER_GGUF],
                                     "exported_from": identity.to_dict()})


def _write_ollama(folder: Path, adapter: Path | None, student: str | None, gguf_type: str, lora: bool) -> None:
    loaded, model = _write_gguf(folder, None if lora else adapter, student, gguf_type)
    if lora:
        _write_lora(folder, adapter, student, gguf_type)
    template = modelfile.chatml_template(loaded.tokenizer)
    stops = modelfile.stop_words(loaded.tokenizer, model.config, getattr(model, "generation_config", None))
    text = modelfile.modelfile(MODEL_GGUF, template=template, stops=stops, adapter_file=ADAPTER_GGUF if lora else None)
    (folder / modelfile.MODELFILE).write_text(text, encoding="utf-8")
    files = [MODEL_GGUF, *([ADAPTER_GGUF] if lora else []), modelfile.MODELFILE]
    identity = loaded.identity.to_dict() if not lora else _identity_with(adapter, student)
    _record(folder / EXPORT_RECORD, {"format": "ollama", "gguf_type": gguf_type, "files": files,
                                     "template": "chatml" if template else "from the GGUF", "exported_from": identity})


def _identity_with(adapter: Path | None, student: str | None) -> dict[str, Any]:
    from distill.student.model import model_identity

    return model_identity(student, adapter)[1].to_dict()


def _record(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

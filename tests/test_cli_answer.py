"""`distill answer` end to end through the real CLI entry point, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main


def write_prompts(path: Path, n: int = 4) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say the number {i}."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_answer_writes_one_row_per_prompt_in_input_order(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    code = main(["answer", str(write_prompts(tmp_path / "p.jsonl")), "-o", str(out),
                 "--student", str(tiny_model_dir), "--max-new-tokens", "4", "--batch-size", "3"])
    assert code == 0
    rows = read_rows(out)
    assert [r["prompt_id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert all(r["generation"]["max_new_tokens"] == 4 and r["model"]["weights_sha256"] for r in rows)
    assert not (tmp_path / "answers.jsonl.partial").exists()


def test_bad_input_fails_before_any_model_loads_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "ok"}\n{"id": "a", "prompt": "dup"}\n{"oops"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    # a student that cannot load: if it were loaded first, the error would be about the model
    monkeypatch.setenv("DISTILL_STUDENT", str(tmp_path / "no-such-model"))
    assert main(["answer", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: duplicate id 'a'" in err and f"{bad}:3: invalid JSON" in err
    assert "no-such-model" not in err
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()


def test_resume_keeps_done_rows_and_generates_only_the_rest(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", n=5)
    out = tmp_path / "a.jsonl"
    args = ["answer", str(prompts), "-o", str(out), "--student", str(tiny_model_dir), "--max-new-tokens", "3"]
    assert main(args) == 0
    full = read_rows(out)
    # simulate a run killed after two answers: a partial file with two rows (marked) and a torn third
    marked = [dict(r, marker="kept") for r in full[:2]]
    out.unlink()
    partial = tmp_path / "a.jsonl.partial"
    partial.write_text("".join(json.dumps(r) + "\n" for r in marked) + '{"id": "torn', encoding="utf-8")
    assert main(args) == 0
    rows = read_rows(out)
    assert [r["prompt_id"] for r in rows] == [f"q{i}" for i in range(5)]
    assert [r.get("marker") for r in rows] == ["kept", "kept", None, None, None]
    assert [r["answer"] for r in rows] == [r["answer"] for r in full]


def test_help_explains_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "distill", "answer", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--max-new-tokens", "--temperature", "--top-p", "--samples", "--seed", "--batch-size", "resume"):
        assert flag in result.stdout


def test_unreadable_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["answer", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--samples", "3"], "temperature above 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_flags_are_clear_errors(tiny_model_dir: Path, tmp_path: Path, capsys, flags, message) -> None:
    code = main(["answer", str(write_prompts(tmp_path / "p.jsonl")), "-o", str(tmp_path / "o.jsonl"),
                 "--student", str(tiny_model_dir), *flags])
    assert code == 2 and message in capsys.readouterr().err

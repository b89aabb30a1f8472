"""State files survive a crash or a power loss: written beside, fsynced, renamed, directory fsynced.

`os.fsync` is the seam: a recorder wraps the real call and notes which inode each flush reached
(a file's content, or a directory's entries). A file written durably is one whose final inode was
flushed and whose directory was flushed after the rename; a file written in place is neither.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from distill.records.files import write_atomic, write_jsonl
from fakes import ScriptedTeacher, critique_reply


@pytest.fixture
def flushed(monkeypatch: pytest.MonkeyPatch) -> set[tuple[int, bool]]:
    """(inode, is a directory) of every fsync in the test; the real fsync still runs."""
    seen: set[tuple[int, bool]] = set()
    real = os.fsync

    def recording(fd: int) -> None:
        info = os.fstat(fd)
        seen.add((info.st_ino, stat.S_ISDIR(info.st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return seen


def assert_durable(path: Path, flushed: set[tuple[int, bool]]) -> None:
    assert (path.stat().st_ino, False) in flushed, f"{path}: its content was never flushed to disk"
    assert (path.parent.stat().st_ino, True) in flushed, f"{path}: its directory (the rename) was never flushed"
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_atomic_replaces_a_file_durably(tmp_path: Path, flushed) -> None:
    path = tmp_path / "state.json"
    path.write_text("old\n")
    before = path.stat().st_ino
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and path.stat().st_ino != before  # renamed over, not rewritten
    assert_durable(path, flushed)
    write_jsonl(tmp_path / "rows.jsonl", [{"id": 1}])
    assert_durable(tmp_path / "rows.jsonl", flushed)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": 1}])

    def broken():
        yield {"id": 2}
        raise RuntimeError("crash while producing rows")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == '{"id": 1}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_the_cache_commits_with_synchronous_full(tmp_path: Path) -> None:
    from distill.teachers.cache.store import CacheStore

    store = CacheStore(tmp_path / "teacher-calls.sqlite")
    try:
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: survives a power loss
    finally:
        store.close()


def test_the_manifest_is_written_durably(tmp_path: Path, flushed) -> None:
    from distill.stages.round import RunConfig, critique_answers

    answers = [{"id": "a1", "prompt_id": "q1", "sample": 0, "answer": "41",
                "messages": [{"role": "user", "content": "What is 6 times 7?"}]}]
    config = RunConfig(name="r", runs_dir=tmp_path, stages=("facts",), filters=("acceptable",))
    for _ in range(2):  # written, then rewritten by a re-run
        critique_answers(config, answers, teacher=ScriptedTeacher(lambda r: critique_reply("42")))
        assert_durable(config.run_dir / "manifest.json", flushed)


def test_rounds_state_is_written_durably(tmp_path: Path, flushed) -> None:
    from distill.evaluation.state import load_state, save_state

    for n in range(2):
        save_state(tmp_path, {"rounds": [{"round": n}]})
        assert_durable(tmp_path / "rounds.json", flushed)
    assert load_state(tmp_path) == {"rounds": [{"round": 1}]}


def test_training_and_evaluation_results_are_written_durably(tiny_model_dir: Path, tmp_path: Path, flushed) -> None:
    from distill.cli import main
    from distill.evaluation.rounds import RoundsConfig, _evaluate
    from distill.records.prompts import Prompt
    from distill.stages.round import RunConfig
    from distill.training.config import TrainConfig
    from distill.training.examples import Example
    from distill.training.sft import train

    examples = [Example(id=f"e{i}", prompt=({"role": "user", "content": f"Say {w}."},), completion=w, source="train")
                for i, w in enumerate(["apple", "river", "stone", "cloud"])]
    adapter = tmp_path / "adapter"
    train(examples, adapter, TrainConfig(max_steps=2, save_every=1, batch_size=2, warmup_ratio=0.0),
          student=tiny_model_dir)
    assert_durable(adapter / "training.json", flushed)
    assert_durable(adapter / "adapter_model.safetensors", flushed)  # before training.json marks it finished

    heldout = [Prompt.from_text("Say apple.", id="h1"), Prompt.from_text("Say river.", id="h2")]
    rounds = RoundsConfig(run=RunConfig(name="r", runs_dir=tmp_path, student=str(tiny_model_dir)), rounds=1,
                          heldout=tmp_path / "heldout.jsonl", eval_max_new_tokens=3, judge=False)
    _evaluate(rounds, 1, None, adapter, heldout, [], [], tmp_path)
    assert_durable(tmp_path / "eval.json", flushed)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p.to_row()) + "\n" for p in heldout), encoding="utf-8")
    out = tmp_path / "cli" / "eval.json"
    assert main(["eval", str(prompts), "--adapter", str(adapter), "--student", str(tiny_model_dir), "--no-judge",
                 "--max-new-tokens", "3", "-o", str(out)]) == 0
    assert_durable(out, flushed)

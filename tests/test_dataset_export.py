"""`distill dataset`: a run's rows as a Hugging Face dataset (save_to_disk or Parquet) with a card, in the
formats TRL's trainers load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.stages.round import RunConfig, critique_answers
from distill.testing import ScriptedTeacher, critique_reply, quoted_answer


def make_run(runs: Path) -> Path:
    answers = [{"id": f"a-{i}", "prompt_id": f"p{i}", "sample": 0, "answer": f"answer {i}",
                "messages": [{"role": "user", "content": f"Question {i}?"}]} for i in range(3)]
    cfg = RunConfig(name="data", runs_dir=runs, stages=("facts",), concurrency=1, filters=("acceptable",))
    critique_answers(cfg, answers, teacher=ScriptedTeacher(lambda r: critique_reply(quoted_answer(r) + " (fixed)")))
    return cfg.run_dir


@pytest.mark.parametrize("fmt", ["hf", "parquet"])
def test_a_run_becomes_a_dataset_trl_loads_with_a_card(tmp_path: Path, fmt: str, smollm_tokenizer) -> None:
    import datasets
    from trl.data_utils import apply_chat_template, is_conversational

    make_run(tmp_path / "runs")
    out = tmp_path / "ds"
    assert main(["dataset", "data", "--runs-dir", str(tmp_path / "runs"), "--format", fmt, "-o", str(out),
                 "--license", "apache-2.0"]) == 0
    if fmt == "hf":
        loaded = datasets.load_from_disk(str(out))
    else:
        # the card's configs, one per split, as the Hub reads them
        loaded = {s: datasets.load_dataset(str(out), s, split="train") for s in ("sft", "prefs")}
    assert {name: len(split) for name, split in loaded.items()} == {"sft": 3, "prefs": 3}
    sft, prefs = loaded["sft"][0], loaded["prefs"][0]
    assert is_conversational(sft) and is_conversational(prefs)
    assert sft["completion"] == [{"role": "assistant", "content": "answer 0 (fixed)"}]
    rendered = apply_chat_template({"prompt": sft["prompt"], "completion": sft["completion"]}, smollm_tokenizer)
    assert "Question 0?" in rendered["prompt"] and rendered["completion"].startswith("answer 0 (fixed)")
    pair = apply_chat_template({k: prefs[k] for k in ("prompt", "chosen", "rejected")}, smollm_tokenizer)
    assert pair["chosen"].startswith("answer 0 (fixed)") and pair["rejected"].startswith("answer 0")
    assert json.loads(sft["meta"])["source"] == "revision"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n") and "| sft | 3 |" in card and "| prefs | 3 |" in card
    assert "- teacher: scripted:" in card or "- teacher: scripted" in card
    assert "- filters, in order: acceptable" in card and "teacher calls: 3" in card


def test_a_run_without_rows_or_without_a_manifest_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    assert main(["dataset", "empty", "--runs-dir", str(tmp_path / "runs"), "-o", str(tmp_path / "x")]) != 0
    assert "no manifest.json and no round-K folders" in capsys.readouterr().err

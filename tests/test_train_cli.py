"""`distill train` and `distill merge` through the real CLI entry point, and training on two processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

from distill.cli import main
from distill.training.losslog import read_loss_log

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle"]
FAST_FLAGS = ["--batch-size", "4", "--lr", "0.01"]


def write_run(run: Path, words: list[str] = WORDS, replay: bool = True) -> Path:
    """A run directory as the pipeline leaves it: sft.jsonl (+ replay.jsonl)."""
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"r-{w}", "prompt": [{"role": "user", "content": f"Say {w} three times."}],
             "completion": [{"role": "assistant", "content": f"{w} {w} {w}"}], "meta": {"prompt_id": w}}
            for w in words]
    (run / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if replay:
        chats = [{"id": f"rp-{i}", "messages": [{"role": "user", "content": f"Count to {i}."},
                                                {"role": "assistant", "content": " ".join(map(str, range(1, i + 1)))}]}
                 for i in range(2, 10)]
        (run / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats), encoding="utf-8")
    return run


def test_train_a_run_directory_with_its_replay_set(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "runs" / "r1")
    args = ["train", str(run), "--student", str(tiny_model_dir), "--max-steps", "2", *FAST_FLAGS]
    assert main(args) == 0
    adapter = run / "adapter"
    summary = json.loads((adapter / "training.json").read_text())
    assert summary["data"]["path"] == str(run / "sft.jsonl") and len(summary["data"]["sha256"]) == 64
    assert summary["data"]["replay_path"] == str(run / "replay.jsonl") and summary["replay"]["per_epoch"] == 3
    assert summary["config"]["max_steps"] == 2 and summary["config"]["batch_size"] == 4
    assert [r["step"] for r in read_loss_log(adapter)] == [1, 2]
    assert "adapter written to" in capsys.readouterr().err
    assert main(args) == 2  # finished: not trained twice by accident
    assert "already holds a finished adapter" in capsys.readouterr().err
    assert main(args + ["--restart", "--no-replay"]) == 0
    assert json.loads((adapter / "training.json").read_text())["replay"]["per_epoch"] == 0


def test_reviewed_trains_on_the_rows_a_person_kept(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", replay=False)
    args = ["train", str(run), "--reviewed", "--student", str(tiny_model_dir), "--max-steps", "1", *FAST_FLAGS]
    assert main(args) == 2
    assert "without sft.reviewed.jsonl; run `distill review" in capsys.readouterr().err
    kept = (run / "sft.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    (run / "sft.reviewed.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    assert main(args) == 0
    data = json.loads((run / "adapter" / "training.json").read_text())["data"]
    assert data["path"] == str(run / "sft.reviewed.jsonl") and data["trained"] == 3


def test_config_file_then_flags(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_run(tmp_path / "run", replay=False) / "sft.jsonl"
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"max_steps": 1, "rank": 4, "seed": 3}), encoding="utf-8")
    assert main(["train", str(data), "--config", str(config), "--rank", "8", "--student", str(tiny_model_dir)]) == 0
    summary = json.loads((tmp_path / "run" / "sft-adapter" / "training.json").read_text())
    assert (summary["config"]["rank"], summary["config"]["seed"], summary["config"]["max_steps"]) == (8, 3, 1)


def test_bad_dataset_fails_before_any_model_loads(tmp_path: Path, capsys, monkeypatch) -> None:
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "Hi", "completion": "Hello"}\n{"messages": [{"role": "user", "content": "x"}]}\n',
                   encoding="utf-8")
    monkeypatch.setenv("DISTILL_STUDENT", str(tmp_path / "no-such-model"))
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'messages'" in err and "no-such-model" not in err
    assert not (tmp_path / "sft-adapter").exists()
    assert main(["train", str(tmp_path / "missing")]) == 2
    assert "no such run directory or dataset file" in capsys.readouterr().err


def test_merge_writes_a_model_plain_transformers_loads_with_the_adapters_logits(tiny_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = write_run(tmp_path / "run", replay=False)
    assert main(["train", str(run), "--student", str(tiny_model_dir), "--max-steps", "3", *FAST_FLAGS]) == 0
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(run / "adapter"), "-o", str(merged_dir), "--student", str(tiny_model_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # plain transformers, no PEFT
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter")
    ids = torch.tensor([[1, 200, 3000, 42, 7, 99]])
    with torch.no_grad():
        expected, got = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        base = with_adapter.get_base_model()
        with with_adapter.disable_adapter():
            plain = base(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, plain, atol=1e-5)
    identity = json.loads((merged_dir / "distill-merge.json").read_text())["merged_from"]
    assert identity["adapter"] == str(run / "adapter") and "+lora@" in identity["key"]
    assert main(["merge", str(run / "adapter"), "-o", str(merged_dir), "--student", str(tiny_model_dir)]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_gloo_end_with_the_same_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes (DDP on gloo): each rank hashes its own adapter."""
    run = write_run(tmp_path / "run")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    # --multi_gpu selects accelerate's torchrun launcher; without a GPU the processes run DDP on gloo
    # (accelerate's --cpu launcher would need MPI to start more than one process)
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "distill", "train", str(run), "--student", str(tiny_model_dir), "--max-steps", "3", *FAST_FLAGS]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "adapter" / "training.json").read_text())
    assert summary["processes"] == 2
    shas = summary["rank_adapter_sha256"]
    assert len(shas) == 2 and shas[0] == shas[1] and summary["ranks_agree"]
    # each rank saw its own half of every batch list: twice the tokens of one process per step
    assert summary["throughput"]["tokens"] == sum(r["tokens"] for r in read_loss_log(run / "adapter"))

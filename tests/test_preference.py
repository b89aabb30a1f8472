"""Preference training (DPO, IPO, length-normalised DPO, KTO): the losses against hand computations,
the data readers, runs on the tiny random Llama (learning, reference, resume after a crash), the
command line; one slow test on the real embedded student."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.errors import ConfigError, InputError
from distill.student.model import Student
from distill.training.config import TrainConfig
from distill.training.losslog import read_loss_log
from distill.training.pairs import Labelled, Pair, kto_rows, read_pairs
from distill.training.preference import dpo_losses, kto_losses, kto_weights, preference_margins, train_preferences
from distill.training.sft import train

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle"]
FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0)
FAST_FLAGS = ["--batch-size", "4", "--lr", "0.01", "--warmup-ratio", "0"]


def word_pairs(words: list[str] = WORDS) -> list[Pair]:
    return [Pair(id=f"p-{w}", prompt=({"role": "user", "content": f"Say the word {w}."},), chosen=f"{w} {w} {w}",
                 rejected=f"I will not say {w}.") for w in words]


def pair_row(p: Pair) -> dict:
    return {"id": p.id, "prompt": [dict(m) for m in p.prompt], "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}], "meta": {"prompt_id": p.id}}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------- the losses

def test_sigmoid_dpo_loss_is_the_papers_formula() -> None:
    beta = 0.1
    losses, chosen, rejected = dpo_losses(t(-10.0, -4.0), t(-12.0, -3.0), t(-11.0, -5.0), t(-11.0, -5.0),
                                          t(5, 2), t(6, 3), beta)
    # pair 1: log-ratios +1 and -1, margin 2 -> -log sigmoid(0.2); pair 2: +1 and +2 -> -log sigmoid(-0.1)
    expected = [-math.log(1 / (1 + math.exp(-0.2))), -math.log(1 / (1 + math.exp(0.1)))]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.1]) and rejected.tolist() == pytest.approx([-0.1, 0.2])


def test_ipo_and_length_normalised_losses_average_the_log_ratios_per_token() -> None:
    beta = 0.25
    args = (t(-10.0), t(-12.0), t(-14.0), t(-11.0), t(4), t(2), beta)
    # log-ratios: chosen +4 over 4 tokens (1 per token), rejected -1 over 2 tokens (-0.5 per token): delta 1.5
    ipo, chosen, rejected = dpo_losses(*args, loss_type="ipo")
    assert ipo.item() == pytest.approx((1.5 - 1 / (2 * beta)) ** 2)
    norm, _, _ = dpo_losses(*args, loss_type="sigmoid_norm")
    assert norm.item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * 1.5))))
    assert (chosen.item(), rejected.item()) == pytest.approx((1.0, -0.25))  # rewards stay summed
    with pytest.raises(ConfigError, match="loss_type"):
        dpo_losses(*args, loss_type="hinge")


def test_kto_loss_is_the_papers_formula_with_the_kl_reference_point() -> None:
    losses, rewards = kto_losses(t(-5.0, -5.0), t(-6.0, -4.0), torch.tensor([True, False]), torch.tensor(0.5),
                                 beta=0.5, desirable_weight=2.0, undesirable_weight=1.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # desirable: ratio +1 -> 2 * (1 - sigmoid(0.5 * (1 - 0.5))); undesirable: ratio -1 -> 1 - sigmoid(0.5 * (0.5 + 1))
    assert losses.tolist() == pytest.approx([2 * (1 - sigmoid(0.25)), 1 - sigmoid(0.75)])
    assert rewards.tolist() == pytest.approx([0.5, -0.5])


def test_kto_weights_put_the_class_balance_in_the_papers_range() -> None:
    def balance(n_d: int, n_u: int, w: tuple[float, float]) -> float:
        return w[0] * n_d / (w[1] * n_u)

    assert kto_weights(10, 10) == (1.0, 1.0)  # balanced: the paper's default weights
    assert kto_weights(12, 10) == (1.0, 1.0)  # 1.2 is inside [1, 4/3]
    few_good = kto_weights(10, 100)  # desirable is scarce: it is weighted up, undesirable stays 1
    assert few_good[1] == 1.0 and balance(10, 100, few_good) == pytest.approx(1.0)
    many_good = kto_weights(100, 10)  # desirable abounds: weighted down to the top of the range
    assert many_good[1] == 1.0 and balance(100, 10, many_good) == pytest.approx(4 / 3)
    given = kto_weights(10, 100, undesirable=0.5)  # a given weight is kept, the other one fits it
    assert given[1] == 0.5 and 1 <= balance(10, 100, given) <= 4 / 3
    given = kto_weights(10, 100, desirable=2.0)
    assert given[0] == 2.0 and 1 <= balance(10, 100, given) <= 4 / 3 + 1e-9
    assert kto_weights(10, 100, 3.0, 4.0) == (3.0, 4.0) and kto_weights(5, 0) == (1.0, 1.0)


# ---------------------------------------------------------------- data

def test_prefs_rows_are_read_and_bad_rows_reported_by_line(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "prefs.jsonl", [pair_row(p) for p in word_pairs()[:2]])
    assert read_pairs(good) == word_pairs()[:2]
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair_row(word_pairs()[0]), {"prompt": "Hi", "chosen": "Hello"},
                                               {"prompt": "Hi", "chosen": "a", "rejected": [{"role": "user",
                                                                                             "content": "b"}]}])
    with pytest.raises(InputError) as err:
        read_pairs(bad)
    assert f"{bad}:2: field 'rejected': missing" in str(err.value)
    assert f"{bad}:3: field 'rejected[0].role': expected 'assistant'" in str(err.value)
    for path, word in ((tmp_path / "none.jsonl", "no such file"), (write_jsonl(tmp_path / "empty.jsonl", []), "empty")):
        with pytest.raises(InputError, match=f"{word}; preference training needs pairs: a round writes prefs.jsonl"):
            read_pairs(path)


def test_kto_takes_prefs_check_failures_and_review_decisions(tmp_path: Path) -> None:
    run = tmp_path / "run"
    pairs = word_pairs()[:2]
    write_jsonl(run / "prefs.jsonl", [pair_row(p) for p in pairs])
    prompt = [{"role": "user", "content": "What is 2+2? Answer with a number."}]
    write_jsonl(run / "revisions.jsonl", [
        {"id": "v1", "status": "ok", "messages": prompt, "original": "5", "revision": "four"},
        {"id": "v2", "status": "ok", "messages": prompt, "original": "5", "revision": "too long"}])
    write_jsonl(run / "rejected.jsonl", [
        {"stage": "filter", "filter": "reference", "reason": "not a number", "revision_id": "v1", "id": "x1"},
        {"stage": "filter", "filter": "judge", "reason": "not preferred", "revision_id": "v2", "id": "x2"}])
    sft = [{"id": f"s{i}", "prompt": [{"role": "user", "content": f"q{i}"}],
            "completion": [{"role": "assistant", "content": f"answer {i}"}], "meta": {}} for i in range(3)]
    write_jsonl(run / "sft.jsonl", sft)
    sheet = write_jsonl(tmp_path / "review.csv", [])
    sheet.write_text("id,decision,edited\ns0,accept,\ns1,reject,\ns2,edit,better answer 2\n", encoding="utf-8")
    assert main(["review", str(run), "--import", str(sheet)]) == 0
    rows = kto_rows(run)
    got = {(r.completion, r.desirable, r.origin) for r in rows}
    assert got == {(pairs[0].chosen, True, "prefs"), (pairs[0].rejected, False, "prefs"),
                   (pairs[1].chosen, True, "prefs"), (pairs[1].rejected, False, "prefs"),
                   ("four", False, "reference_check"),  # the text comes from revisions.jsonl; the judge's drop is not used
                   ("answer 0", True, "review_accept"), ("better answer 2", True, "review_accept"),
                   ("answer 1", False, "review_reject")}
    with pytest.raises(InputError, match="no labelled answers for KTO"):
        kto_rows(tmp_path / "empty-run")


# ---------------------------------------------------------------- runs on the tiny model

@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One short DPO run shared by the tests that only inspect its result."""
    out = tmp_path_factory.mktemp("dpo")
    return train_preferences(word_pairs(), out, TrainConfig(method="dpo", epochs=4, save_every=2, **FAST),
                             student=tiny_model_dir)


def test_dpo_raises_the_chosen_over_rejected_margin(dpo_run, tiny_model_dir: Path) -> None:
    rows = read_loss_log(dpo_run.output_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy", "pairs", "tokens_per_s"):
        assert key in rows[0]
    # the reference is the starting policy: the first step's rewards are zero, its loss log(2)
    assert abs(rows[0]["chosen_reward"]) < 1e-4 and abs(rows[0]["margin"]) < 1e-4
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[-1]["margin"] > rows[0]["margin"] + 0.05 and rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    # measured on the model: log p(chosen) - log p(rejected) rose on every training pair
    before = preference_margins(Student.load(tiny_model_dir), word_pairs())
    after = preference_margins(Student.load(tiny_model_dir, adapter=dpo_run.output_dir), word_pairs())
    assert all(a > b for a, b in zip(after, before))
    summary = json.loads((dpo_run.output_dir / "training.json").read_text())
    assert summary["method"] == "dpo" and summary["config"]["beta"] == 0.1 and summary["init_adapter"] == {}
    assert summary["last_step"]["margin"] == rows[-1]["margin"] and summary["data"]["trained"] == 8


class Crash(Exception):
    """Stands in for kill -9: the run stops at once, with nothing saved beyond the periodic checkpoints."""


def crash_at(step: int):
    def on_step(row: dict) -> None:
        if row["step"] == step:
            raise Crash

    return on_step


def test_a_crashed_dpo_run_resumes_to_the_adapter_of_an_unbroken_one(dpo_run, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = TrainConfig(method="dpo", epochs=4, save_every=2, **FAST)
    with pytest.raises(Crash):
        train_preferences(word_pairs(), out, config, student=tiny_model_dir, on_step=crash_at(5))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    result = train_preferences(word_pairs(), out, config, student=tiny_model_dir)
    assert result.resumed_from == 4
    assert result.summary["adapter_sha256"] == dpo_run.summary["adapter_sha256"]
    assert [r["loss"] for r in read_loss_log(out)] == [r["loss"] for r in read_loss_log(dpo_run.output_dir)]


def test_dpo_from_an_sft_adapter_uses_it_as_the_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    from distill.training.examples import Example

    sft = [Example(p.id, p.prompt, p.rejected) for p in word_pairs()]  # an SFT adapter that likes the rejected
    train(sft, tmp_path / "sft", TrainConfig(max_steps=3, **FAST), student=tiny_model_dir)
    result = train_preferences(word_pairs(), tmp_path / "dpo", TrainConfig(method="dpo", max_steps=2,
                                                                           loss_type="ipo", **FAST),
                               student=tiny_model_dir, init_adapter=tmp_path / "sft")
    rows = read_loss_log(tmp_path / "dpo")
    assert abs(rows[0]["margin"]) < 1e-4  # the SFT adapter is the reference: no reward at the start
    assert result.summary["init_adapter"]["path"] == str(tmp_path / "sft")
    assert result.summary["config"]["loss_type"] == "ipo"


def test_kto_trains_with_replay_and_logs_the_kl_and_rewards(tiny_model_dir: Path, tmp_path: Path) -> None:
    from distill.training.examples import Example

    rows = [Labelled(f"l-{w}", ({"role": "user", "content": f"Say {w}."},), f"{w} {w}" if i % 3 else f"no {w}",
                     desirable=bool(i % 3), origin="test") for i, w in enumerate(WORDS)]
    replay = [Example(f"r{i}", ({"role": "user", "content": f"Count to {i}."},),
                      " ".join(map(str, range(1, i + 1))), source="replay") for i in range(2, 6)]
    result = train_preferences(rows, tmp_path / "kto", TrainConfig(method="kto", epochs=3, replay_fraction=0.25,
                                                                   **FAST), student=tiny_model_dir, replay=replay)
    log = read_loss_log(tmp_path / "kto")
    assert {"kl", "desirable_reward", "undesirable_reward"} <= set(log[0])
    assert sum(r.get("replay", 0) for r in log) == 3 * 3  # 3 replay rows an epoch: 8 * 0.25 / 0.75
    assert all(r["replay_nll"] > 0 for r in log if r.get("replay"))
    assert abs(log[0]["desirable_reward"]) < 1e-4 and log[0]["kl"] == pytest.approx(0, abs=1e-4)
    assert log[-1]["desirable_reward"] - log[-1]["undesirable_reward"] > log[0]["desirable_reward"] - \
        log[0]["undesirable_reward"]
    data = result.summary["data"]
    assert (data["desirable"], data["undesirable"]) == (5, 3)  # 5/3 is above 4/3: desirable weighted down
    assert data["desirable_weight"] * 5 / (data["undesirable_weight"] * 3) == pytest.approx(4 / 3)


def test_the_sft_trainer_refuses_a_preference_method(tiny_model_dir: Path, tmp_path: Path) -> None:
    from distill.training.examples import Example

    with pytest.raises(ConfigError, match="method='dpo'.*--method dpo"):
        train([Example("a", ({"role": "user", "content": "Hi"},), "Hello")], tmp_path / "x",
              TrainConfig(method="dpo"), student=tiny_model_dir)


# ---------------------------------------------------------------- the command line

def test_distill_train_method_dpo_starts_from_the_runs_adapter(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    write_jsonl(run / "prefs.jsonl", [pair_row(p) for p in word_pairs()])
    write_jsonl(run / "sft.jsonl", [{"id": p.id, "prompt": [dict(m) for m in p.prompt],
                                     "completion": [{"role": "assistant", "content": p.chosen}]} for p in word_pairs()])
    common = ["--student", str(tiny_model_dir), "--max-steps", "2", *FAST_FLAGS]
    assert main(["train", str(run), "--method", "dpo", *common]) == 0  # no RUN/adapter yet: from the base
    first = json.loads((run / "adapter-dpo" / "training.json").read_text())
    assert first["init_adapter"] == {} and first["data"]["path"] == str(run / "prefs.jsonl")
    assert "from the base student" in capsys.readouterr().err
    assert main(["train", str(run), *common]) == 0  # SFT, unchanged: RUN/adapter
    assert main(["train", str(run), "--method", "dpo", "--beta", "0.2", "--restart", *common]) == 0
    summary = json.loads((run / "adapter-dpo" / "training.json").read_text())
    assert summary["init_adapter"]["path"] == str(run / "adapter") and summary["config"]["beta"] == 0.2
    rows = read_loss_log(run / "adapter-dpo")
    assert [r["step"] for r in rows] == [1, 2]
    assert {"chosen_reward", "rejected_reward", "margin", "accuracy"} <= set(rows[-1])
    assert (run / "adapter-dpo" / "adapter_model.safetensors").is_file()
    assert "last step: loss" in capsys.readouterr().err


def test_distill_train_method_dpo_without_pairs_says_how_to_get_them(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    write_jsonl(run / "sft.jsonl", [])
    assert main(["train", str(run), "--method", "dpo"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'prefs.jsonl'}: no such file; preference training needs pairs" in err
    write_jsonl(run / "prefs.jsonl", [])
    assert main(["train", str(run), "--method", "dpo"]) == 2
    assert f"{run / 'prefs.jsonl'}: empty" in capsys.readouterr().err
    assert main(["train", str(run), "--method", "kto"]) == 2
    assert "no labelled answers for KTO" in capsys.readouterr().err
    assert main(["train", str(run), "--init-adapter", str(tmp_path)]) == 2  # SFT does not take one
    assert "--init-adapter is for --method dpo or kto" in capsys.readouterr().err
    assert main(["train", str(run), "--method", "dpo", "--beta", "0"]) == 2
    assert "beta: expected a positive number" in capsys.readouterr().err


# ---------------------------------------------------------------- the real student

HELD_OUT = ["seven", "twelve", "forty", "ninety"]


def number_pairs(words: list[str]) -> list[Pair]:
    """Chosen: the number in digits-free words as asked; rejected: a refusal. The held-out pairs are of the same kind."""
    return [Pair(f"n-{w}", ({"role": "user", "content": f"Write the word '{w}' and nothing else."},), w,
                 "I'm sorry, but I can't help with that request.") for w in words]


@pytest.mark.slow
def test_dpo_moves_the_held_out_preference_of_the_embedded_student(student: Student, embedded_dir: Path,
                                                                     tmp_path: Path) -> None:
    train_words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle"]
    before = preference_margins(student, number_pairs(HELD_OUT))
    config = TrainConfig(method="dpo", epochs=2, batch_size=4, learning_rate=5e-4, precision="float32")
    result = train_preferences(number_pairs(train_words), tmp_path / "dpo", config, student=embedded_dir)
    after = preference_margins(Student.load(embedded_dir, adapter=result.output_dir), number_pairs(HELD_OUT))
    assert sum(after) / len(after) > sum(before) / len(before)
    assert sum(a > b for a, b in zip(after, before)) >= 3


def test_kto_on_two_processes_ends_with_the_same_adapter_on_both(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes (DDP on gloo), as for SFT (tests/test_train_cli.py)."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    write_jsonl(run / "prefs.jsonl", [pair_row(p) for p in word_pairs()])
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           "-m", "distill", "train", str(run), "--method", "kto", "--student", str(tiny_model_dir),
           "--max-steps", "2", *FAST_FLAGS]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "adapter-kto" / "training.json").read_text())
    shas = summary["rank_adapter_sha256"]
    assert summary["processes"] == 2 and len(shas) == 2 and summary["ranks_agree"]
    assert [r["step"] for r in read_loss_log(run / "adapter-kto")] == [1, 2]

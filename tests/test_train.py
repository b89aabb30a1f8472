"""The LoRA trainer on the tiny random Llama (real SmolLM2 tokenizer): data, labels, LoRA, resume, layout.

The learning test on the real embedded student is in test_train_learning.py (slow); the
command line, `distill merge` and multi-process training are in test_train_cli.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import ConfigError, InputError, ModelError
from distill.student.model import Student
from distill.training.batching import epoch_batches, replay_count, split_by_tokens
from distill.training.config import TrainConfig
from distill.training.examples import (IGNORE, Example, collate, completion_losses, completion_nll, encode,
                                       parse_example, read_examples, read_replay, replay_examples)
from distill.training.losslog import read_loss_log
from distill.training.sft import train

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle"]
FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0)


def word_examples(words: list[str] = WORDS, source: str = "train") -> list[Example]:
    return [Example(id=f"{source}-{w}", prompt=({"role": "user", "content": f"Say the word {w} three times."},),
                    completion=f"{w} {w} {w}", source=source) for w in words]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Student:
    return Student.load(tiny_model_dir)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One short run shared by the tests that only inspect its result."""
    out = tmp_path_factory.mktemp("adapter")
    return train(word_examples(), out, TrainConfig(epochs=2, **FAST), student=tiny_model_dir)


# ---------------------------------------------------------------- reading datasets

def test_reads_prompt_completion_and_messages_rows(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "sft.jsonl", [
        {"id": "a", "prompt": [{"role": "user", "content": "Hi"}],
         "completion": [{"role": "assistant", "content": "Hello!"}], "meta": {"from": "revision"}},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"id": 7, "prompt": "Name a color.", "completion": "Blue."},
    ])
    a, b, c = read_examples(path)
    assert (a.id, a.prompt, a.completion) == ("a", ({"role": "user", "content": "Hi"},), "Hello!")
    assert b.prompt[0]["role"] == "system" and b.prompt[-1]["content"] == "2+2?" and b.completion == "4"
    assert b.id.startswith("x-") and read_examples(path)[1].id == b.id  # a stable id for rows without one
    assert (c.id, c.prompt[-1]["content"], c.completion) == ("7", "Name a color.", "Blue.")


def test_every_bad_row_is_reported_as_file_and_line(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "bad.jsonl", [
        {"id": "ok", "prompt": "Hi", "completion": "Hello"},
        {"id": "ok", "prompt": "Hi again", "completion": "Hello"},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "x"}]},
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"prompt": [{"role": "robot", "content": "Hi"}], "completion": "x"},
        {"prompt": "Hi", "completion": "   "},
        "{not json",
    ])
    with pytest.raises(InputError) as err:
        read_examples(path)
    text = str(err.value)
    assert "6 bad line(s)" in text
    for line, reason in [(2, "duplicate id 'ok'"), (3, "completion[0].role"), (4, "assistant's reply"),
                         (5, "field 'prompt[0].role'"), (6, "completion[0].content"), (7, "invalid JSON")]:
        assert f"{path}:{line}: " in text and reason in text


def test_replay_file_may_hold_examples_and_prompts_to_answer(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "replay.jsonl", [
        {"id": "r1", "prompt": "Give me a tip.", "completion": "Sleep well."},
        {"id": "r2", "prompt": "Describe the sea."},
        {"id": "r3", "messages": [{"role": "user", "content": "Describe a forest."}]},
    ])
    examples, prompts = read_replay(path)
    assert [e.id for e in examples] == ["r1"] and examples[0].source == "replay"
    assert [p.id for p in prompts] == ["r2", "r3"]


# ---------------------------------------------------------------- rendering and labels

def test_rendering_is_the_inference_prompt_and_the_end_of_turn_is_labelled(tiny: Student) -> None:
    example = word_examples()[0]
    encoded = encode(example, tiny)
    prompt_ids = tiny.tokenizer(tiny.render(example.prompt), add_special_tokens=False)["input_ids"]
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tiny.tokenizer.pad_token_id == im_end  # the trap: pad = EOS = end of turn
    assert list(encoded.input_ids[:len(prompt_ids)]) == prompt_ids
    assert all(label == IGNORE for label in encoded.labels[:len(prompt_ids)])
    completion = list(encoded.labels[len(prompt_ids):])
    assert completion[-1] == im_end and encoded.input_ids[-1] == im_end  # trained to stop, nothing after
    assert tiny.tokenizer.decode(completion) == "apple apple apple<|im_end|>"


def test_a_replay_answer_cut_off_at_the_token_limit_is_trained_without_an_end_of_turn(tiny: Student) -> None:
    """The base student's cut-off answers stay in replay (dropping them left only its short answers, so
    replay taught brevity), but the place where they were cut must not teach the model to stop."""
    prompt = ({"role": "user", "content": "Tell me about apples."},)
    whole, cut = replay_examples([("r1", prompt, "apple apple apple", "stop"), ("r2", prompt, "apple apple", "length"),
                                  ("r3", prompt, "  ", "length")])
    assert (whole.ends, cut.ends) == (True, False)  # the blank one is dropped
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = [t for t in encode(cut, tiny).labels if t != IGNORE]
    assert im_end not in labels and tiny.tokenizer.decode(labels) == "apple apple"
    assert encode(cut, tiny).input_ids[-1] != im_end  # nothing after the cut either
    assert encode(whole, tiny).labels[-1] == im_end
    row = cut.to_row()
    assert row["ends"] is False and "ends" not in whole.to_row()
    assert parse_example(json.loads(json.dumps(row)), "replay") == cut  # replay.jsonl keeps it
    with pytest.raises(ValueError, match="field 'ends': expected true or false, got 'no'"):
        parse_example({**row, "ends": "no"})


def test_padding_is_masked_by_position_so_the_end_of_turn_keeps_its_label(tiny: Student) -> None:
    short, long = encode(word_examples(["a"])[0], tiny), encode(word_examples(["an elephant in a hat"])[0], tiny)
    batch = collate([short, long], tiny.tokenizer.pad_token_id)
    im_end = tiny.tokenizer.pad_token_id
    row, n = batch["labels"][0], len(short)
    assert batch["input_ids"][0, n:].eq(im_end).all()  # padded with the pad (= end-of-turn) id...
    assert row[n - 1] == im_end  # ...yet the real end of turn is a label
    assert row[n:].eq(IGNORE).all() and batch["attention_mask"][0, n:].eq(0).all()
    assert batch["labels"][1, -1] == im_end


def test_a_batch_is_cut_into_forward_passes_within_the_token_budget(tiny: Student) -> None:
    batch = [encode(e, tiny) for e in word_examples()]
    width = max(len(e) for e in batch)
    pieces = split_by_tokens(batch, budget=3 * width)
    assert sorted(e.id for p in pieces for e in p) == sorted(e.id for e in batch)
    assert all(len(p) * max(len(e) for e in p) <= 3 * width for p in pieces) and len(pieces) == 3


def test_over_length_examples_are_dropped_and_counted(tiny_model_dir: Path, tmp_path: Path) -> None:
    long = Example(id="long", prompt=({"role": "user", "content": "word " * 80},), completion="ok")
    result = train(word_examples()[:4] + [long], tmp_path / "out", TrainConfig(max_length=60, max_steps=1, **FAST),
                   student=tiny_model_dir)
    assert result.dropped == ["long"] and result.examples == 4
    data = json.loads((tmp_path / "out" / "training.json").read_text())["data"]
    assert (data["examples"], data["trained"], data["dropped_over_length"], data["dropped_ids"]) == (5, 4, 1, ["long"])
    with pytest.raises(InputError, match="all 1 training examples are longer than max_length=60"):
        train([long], tmp_path / "none", TrainConfig(max_length=60), student=tiny_model_dir)


# ---------------------------------------------------------------- what training changes

def test_lora_weights_change_and_base_weights_do_not(trained, tiny_model_dir: Path) -> None:
    base = load_file(tiny_model_dir / "model.safetensors")
    lora_b = 0
    for name, param in trained.model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
            if "lora_B" in name:  # initialised to zero: any non-zero value was learned
                lora_b += 1
                assert param.abs().sum() > 0, name
        else:
            assert not param.requires_grad
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base[original]), name
    assert lora_b == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)


def test_loss_falls_on_a_small_fixed_dataset(tiny_model_dir: Path, tmp_path: Path) -> None:
    train(word_examples(), tmp_path / "out", TrainConfig(epochs=6, **FAST), student=tiny_model_dir)
    losses = [row["loss"] for row in read_loss_log(tmp_path / "out")]
    assert len(losses) == 12
    # a random 64-wide model with tied random embeddings cannot get far below ln(49152) = 10.8;
    # the real model's loss is checked in test_train_learning.py
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2


def test_training_is_deterministic_for_a_seed(trained, tiny_model_dir: Path, tmp_path: Path) -> None:
    again = train(word_examples(), tmp_path / "again", TrainConfig(epochs=2, **FAST), student=tiny_model_dir)
    assert again.summary["adapter_sha256"] == trained.summary["adapter_sha256"]
    other = train(word_examples(), tmp_path / "other", TrainConfig(epochs=2, seed=1, **FAST), student=tiny_model_dir)
    assert other.summary["adapter_sha256"] != trained.summary["adapter_sha256"]


def test_kl_penalty_is_zero_at_the_start_and_logged(tiny_model_dir: Path, tmp_path: Path) -> None:
    train(word_examples(), tmp_path / "out", TrainConfig(max_steps=3, kl_weight=0.5, **FAST), student=tiny_model_dir)
    rows = read_loss_log(tmp_path / "out")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: adapter == base
    assert rows[-1]["kl"] > 0


def test_both_precisions_train_one_after_the_other_in_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    for precision in ("float32", "bfloat16", "float32"):
        result = train(word_examples(), tmp_path / precision, TrainConfig(max_steps=1, precision=precision, **FAST),
                       student=tiny_model_dir, restart=True)
        assert result.summary["precision"] == precision and result.final_loss > 0
    assert TrainConfig().precision == "auto"


def test_precision_auto_is_what_the_probe_decides(tiny_model_dir: Path, tmp_path: Path) -> None:
    from distill.training.run import bf16_speedup, native_bf16

    speedup = bf16_speedup(repeats=2)
    assert 0 < speedup < float("inf")
    result = train(word_examples(), tmp_path / "auto", TrainConfig(max_steps=1, **FAST), student=tiny_model_dir)
    assert result.summary["precision"] == ("bfloat16" if native_bf16() else "float32")


def test_the_output_head_runs_in_float32_under_bf16_autocast(tiny: Student) -> None:
    """bfloat16 logits are only known to 1/8 near 20: the KL and DPO losses need float32 ones."""
    from distill.student.model import head_logits

    ids = tiny.tokenizer(["a short example text"], return_tensors="pt")["input_ids"]
    picked = torch.ones((1, ids.shape[1] - 1), dtype=torch.bool)
    with torch.no_grad():
        exact = tiny.model(input_ids=ids).logits[0, :-1].float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head_logits(tiny.model, ids, torch.ones_like(ids), picked)
            hidden = tiny.model.model(input_ids=ids).last_hidden_state[0, :-1]
            rounded = tiny.model.lm_head(hidden).float()  # the projection autocast would run in bfloat16
    assert logits.dtype == torch.float32 and rounded.dtype == torch.float32
    assert (logits - exact).abs().max() < (rounded - exact).abs().max()


# ---------------------------------------------------------------- measuring (held-out NLL, KL)

def test_completion_losses_match_full_logits_and_do_not_depend_on_batch_size(tiny: Student) -> None:
    examples = word_examples() + [Example(id="long", prompt=({"role": "user", "content": "Count to ten."},),
                                          completion="one two three four five six seven eight nine ten")]
    by_one, by_four = completion_losses(tiny, examples, batch_size=1), completion_losses(tiny, examples, batch_size=4)
    for (a, n), (b, m), e in zip(by_one, by_four, examples):
        enc = encode(e, tiny)
        ids = torch.tensor([enc.input_ids])
        with torch.inference_mode():
            logits = tiny.model(input_ids=ids).logits[0, :-1]
        targets = torch.tensor(enc.labels[1:])
        keep = targets != IGNORE
        reference = float(torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum"))
        assert n == m == int(keep.sum()) == enc.completion_tokens
        assert a == pytest.approx(reference, rel=1e-4) and b == pytest.approx(reference, rel=1e-4), e.id
    assert completion_nll(tiny, examples) == pytest.approx(sum(a for a, _ in by_one) / sum(n for _, n in by_one))
    # batches go by length (the long example first here), and each value comes back in its example's place
    backwards = completion_losses(tiny, examples[::-1], batch_size=4)[::-1]
    assert [n for _, n in backwards] == [n for _, n in by_one]
    assert [a for a, _ in backwards] == pytest.approx([a for a, _ in by_one], rel=1e-4)


def test_mean_kl_is_zero_against_itself_and_positive_against_a_trained_adapter(tiny: Student, trained,
                                                                                tiny_model_dir: Path) -> None:
    from distill.evaluation.evaluate import mean_kl

    tuned = Student.load(tiny_model_dir, adapter=trained.output_dir)
    examples = word_examples()
    assert mean_kl(tiny, tiny, examples) == pytest.approx(0.0, abs=1e-6)
    assert mean_kl(tiny, tuned, examples) > 1e-3  # 2 epochs at lr 1e-2 on these very examples
    assert mean_kl(tiny, tuned, examples, batch_size=1) == pytest.approx(mean_kl(tiny, tuned, examples), rel=1e-3)


# ---------------------------------------------------------------- replay

def test_replay_is_a_fraction_of_each_epoch_with_a_fresh_sample(tiny: Student) -> None:
    train_set = [encode(e, tiny) for e in word_examples()]
    replay = [encode(e, tiny) for e in word_examples([f"w{i}" for i in range(20)], source="replay")]
    config = TrainConfig(replay_fraction=0.2, batch_size=3)
    assert replay_count(8, 20, 0.2) == 2 and replay_count(8, 1, 0.5) == 1 and replay_count(8, 20, 0.0) == 0
    epochs = [[e for batch in epoch_batches(train_set, replay, config, epoch) for e in batch] for epoch in range(4)]
    for items in epochs:
        assert sorted(e.id for e in items if e.source == "train") == sorted(e.id for e in train_set)
        assert sum(e.source == "replay" for e in items) == 2
    samples = {tuple(sorted(e.id for e in items if e.source == "replay")) for items in epochs}
    assert len(samples) > 1  # each epoch draws its own replay sample
    again = [[e.id for batch in epoch_batches(train_set, replay, config, 2) for e in batch]]
    assert again == [[e.id for e in epochs[2]]]  # a pure function of (data, config, epoch): resumable


def test_replay_examples_are_trained_and_recorded(tiny_model_dir: Path, tmp_path: Path) -> None:
    replay = word_examples([f"w{i}" for i in range(8)], source="replay")
    result = train(word_examples(), tmp_path / "out", TrainConfig(max_steps=2, replay_fraction=0.5, **FAST),
                   student=tiny_model_dir, replay=replay)
    assert result.summary["replay"] == {"examples": 8, "available": 8, "dropped_over_length": 0, "per_epoch": 8}
    assert result.summary["steps_per_epoch"] == 4  # (8 train + 8 replay) / batch 4


# ---------------------------------------------------------------- checkpoints and resume

class Interrupt:
    """Stands in for Ctrl-C: raises KeyboardInterrupt once step `at` is done."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, row: dict) -> None:
        if row["step"] == self.at:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_where_it_stopped(trained, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = TrainConfig(epochs=2, save_every=2, **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(word_examples(), out, config, student=tiny_model_dir, on_step=Interrupt(at=3))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert [r["step"] for r in read_loss_log(out)] == [1, 2, 3]
    with (out / "loss.jsonl").open("a") as fh:
        fh.write('{"step": 4, "loss": 99.0}\n{"step": 5, "lo')  # rows written after the checkpoint, one torn
    seen: list[int] = []
    result = train(word_examples(), out, config, student=tiny_model_dir, on_step=lambda row: seen.append(row["step"]))
    assert result.resumed_from == 3 and seen == [4]
    rows = read_loss_log(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and 99.0 not in [r["loss"] for r in rows]
    assert not (out / "checkpoints").exists()
    # the resumed run ends exactly where the unbroken run (same data, config, seed) ended
    assert result.summary["adapter_sha256"] == trained.summary["adapter_sha256"]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_loss_log(trained.output_dir)]


def test_a_checkpoint_of_another_run_or_a_finished_adapter_is_not_silently_reused(tiny_model_dir: Path,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        train(word_examples(), out, TrainConfig(max_steps=4, save_every=1, **FAST), student=tiny_model_dir,
              on_step=Interrupt(at=1))
    changed = TrainConfig(max_steps=4, save_every=1, **{**FAST, "learning_rate": 2e-3})
    with pytest.raises(ConfigError, match=r"step-000001: this checkpoint is from a run with other .*--restart"):
        train(word_examples(), out, changed, student=tiny_model_dir)
    train(word_examples(), out, changed, student=tiny_model_dir, restart=True)
    with pytest.raises(ConfigError, match="already holds a finished adapter"):
        train(word_examples(), out, changed, student=tiny_model_dir)


class PlantedPayload:
    """Unpickling this object calls `open(path, "w")`: it creates a file. A pickle that runs code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_a_planted_checkpoint_state_is_refused_without_running_its_code(tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    out, marker = tmp_path / "out", tmp_path / "written-by-the-pickle"
    planted = out / "checkpoints" / "step-000001"
    planted.mkdir(parents=True)
    torch.save({"step": 1, "fingerprint": "whatever", "payload": PlantedPayload(marker)}, planted / "state.pt")
    with pytest.raises(ModelError, match=r"step-000001/state.pt: not a checkpoint state distill wrote.*--restart"):
        train(word_examples(), out, TrainConfig(max_steps=2, **FAST), student=tiny_model_dir)
    assert not marker.exists()


def test_no_module_unpickles_files() -> None:
    """Run directories come from elsewhere: nothing in distill may unpickle what it reads."""
    root = Path(__file__).resolve().parent.parent / "distill"
    found = [f"{path.relative_to(root.parent)}:{n}" for path in sorted(root.rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if re.search(r"weights_only\s*=\s*False|pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)",
                          line)]
    assert found == []


# ---------------------------------------------------------------- the adapter's layout

def test_adapter_loads_with_peft_and_has_the_layout_vllm_serves(trained, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = trained.output_dir
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(config["target_modules"]) == targets
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["peft_type"] == "LORA"
    assert not config.get("modules_to_save") and config["bias"] == "none"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_modules = dict(base.named_modules())
    pattern = re.compile(r"^base_model\.model\.(.+)\.lora_[AB]\.weight$")
    for key in load_file(out / "adapter_model.safetensors"):
        module = pattern.match(key)
        assert module and module.group(1) in base_modules, key  # named as in the base model
        assert module.group(1).rsplit(".", 1)[-1] in targets
    model = PeftModel.from_pretrained(base, out)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=ids).logits
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)
    summary = json.loads((out / "training.json").read_text())
    assert summary["base_model"]["weights_sha256"] == Student.load(tiny_model_dir).identity.weights_sha256
    assert summary["config"]["learning_rate"] == FAST["learning_rate"] and summary["ranks_agree"]


def test_student_loads_the_adapter_and_records_it(trained, tiny_model_dir: Path) -> None:
    student = Student.load(tiny_model_dir, adapter=trained.output_dir)
    assert student.identity.adapter == str(trained.output_dir)
    assert student.identity.adapter_sha256 == trained.summary["adapter_sha256"]
    assert student.identity.key.endswith("+lora@" + trained.summary["adapter_sha256"][:12])


def test_an_adapter_is_refused_on_other_weights_of_the_same_shape(trained, tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        other.model.norm.weight.mul_(2)  # same architecture and shapes, other weights
    other.save_pretrained(tmp_path / "other")
    Student.load(tiny_model_dir).tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelError, match=r"the adapter was trained on tiny-llama\d*@\w+ \(.*\), not on other@"):
        Student.load(tmp_path / "other", adapter=trained.output_dir)


def test_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"cfg.json: unknown training option\(s\) 'lr'"):
        TrainConfig.from_mapping({"lr": 1e-4}, source="cfg.json")
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=3.0)
    with pytest.raises(ConfigError, match="replay_fraction"):
        TrainConfig(replay_fraction=1.0)
    # a number written as a string (a TOML or JSON file, the Python API) names its option, not a TypeError
    with pytest.raises(ConfigError, match=r"cfg.json: training option learning_rate: expected a number, got '8e-4'"):
        TrainConfig.from_mapping({"learning_rate": "8e-4"}, source="cfg.json")
    with pytest.raises(ConfigError, match=r"training option kl_weight: expected a number, got True"):
        TrainConfig(kl_weight=True)
    assert TrainConfig.from_mapping({"target_modules": ["q_proj"]}).target_modules == ("q_proj",)

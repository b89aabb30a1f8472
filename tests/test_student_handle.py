"""One student handle per process: the base weights are read from disk once and shared by every
Student (answering, training, evaluation, a local teacher), without one changing what another sees.

Reads are counted by `SHARED_WEIGHTS.reads`, the counter of the one function that reads weights
from disk. The tiny random Llama from conftest stands in for the student; the adapters are LoRAs
with random non-zero B weights saved with PEFT.
"""

from __future__ import annotations

import gc
import hashlib
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import run_all

from distill.records.prompts import Prompt
from distill.student.model import Student
from distill.student.weights import SHARED_WEIGHTS
from distill.teachers.base import Completion, Request
from distill.teachers.resolve import resolve_settings
from distill.teachers.stack import live_teacher
from distill.training.config import TrainConfig
from distill.training.examples import Example
from distill.training.sft import train

PROMPTS = [Prompt.from_text(t) for t in ("Name a colour.", "What is two plus two?", "Say hello in French.")]


def save_lora(base_dir: Path, out: Path, **config: Any) -> Path:
    """A LoRA on q/v/o/down with random B (so it changes the answers), saved by PEFT into `out`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = Student.load(base_dir, private=True).model
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                                                  **config))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1.0)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(autouse=True)
def _fresh_shared_weights() -> Any:
    """Each test starts and ends with nothing held."""
    Student.release()
    yield
    Student.release()


def greedy_ids(student: Student, max_new_tokens: int = 12) -> list[list[int]]:
    """The greedy token ids `student` generates for PROMPTS, one prompt at a time."""
    out = []
    for prompt in PROMPTS:
        enc = student.tokenizer(student.render(prompt.messages), return_tensors="pt",
                                add_special_tokens=False).to(student.device)
        with torch.inference_mode():
            ids = student.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=student.tokenizer.pad_token_id)
        out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out


def base_tensors(student: Student) -> dict[str, torch.Tensor]:
    """The base model's parameters (LoRA ones left out), cloned."""
    return {n: p.detach().clone() for n, p in student.model.named_parameters() if "lora_" not in n}


def weights_digest(student: Student) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(student.model.named_parameters()):
        if "lora_" not in name:
            digest.update(name.encode() + param.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def test_two_loads_read_the_weights_from_disk_once(tiny_model_dir: Path, adapter: Path) -> None:
    before = SHARED_WEIGHTS.reads
    plain = Student.load(tiny_model_dir)
    tuned = Student.load(tiny_model_dir, adapter=adapter)
    again = Student.load(tiny_model_dir)
    assert SHARED_WEIGHTS.reads == before + 1
    embedding = plain.model.get_input_embeddings().weight
    assert tuned.model.get_input_embeddings().weight is embedding is again.model.get_input_embeddings().weight
    assert plain.model is not again.model  # each Student has its own module tree
    fresh = Student.load(tiny_model_dir, adapter=adapter, private=True)
    assert SHARED_WEIGHTS.reads == before + 2
    assert tuned.identity == fresh.identity and plain.identity == Student.load(tiny_model_dir, private=True).identity


def test_shared_base_and_adapter_answer_like_fresh_loads_interleaved(tiny_model_dir: Path, adapter: Path) -> None:
    fresh_base = greedy_ids(Student.load(tiny_model_dir, private=True))
    fresh_tuned = greedy_ids(Student.load(tiny_model_dir, adapter=adapter, private=True))
    assert fresh_base != fresh_tuned  # the adapter changes the answers, so the comparison means something
    base = Student.load(tiny_model_dir)
    tuned = Student.load(tiny_model_dir, adapter=adapter)
    assert greedy_ids(base) == fresh_base
    assert greedy_ids(tuned) == fresh_tuned
    assert greedy_ids(base) == fresh_base
    late_base = Student.load(tiny_model_dir)  # a view made after the adapter was applied to another one
    assert greedy_ids(late_base) == fresh_base and greedy_ids(tuned) == fresh_tuned
    answers = base.answer(PROMPTS)
    assert [a.text for a in answers] == [a.text for a in Student.load(tiny_model_dir, private=True).answer(PROMPTS)]


def test_training_reuses_the_shared_base_and_leaves_it_unchanged(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = Student.load(tiny_model_dir)
    tensors, digest, answers = base_tensors(base), weights_digest(base), greedy_ids(base)
    reads = SHARED_WEIGHTS.reads
    examples = [Example(id=f"w-{w}", prompt=({"role": "user", "content": f"Say {w} twice."},),
                        completion=f"{w} {w}", source="train") for w in ("apple", "river", "stone", "cloud")]
    result = train(examples, tmp_path / "adapter", TrainConfig(epochs=2, batch_size=2, learning_rate=1e-2,
                                                                warmup_ratio=0.0), student=tiny_model_dir)
    assert SHARED_WEIGHTS.reads == reads  # the trainer's base is a view over the weights already held
    assert result.final_loss is not None
    assert not any("lora_" in name for name, _ in base.model.named_modules())
    assert weights_digest(base) == digest
    assert all(torch.equal(p, tensors[n]) for n, p in base.model.named_parameters())
    assert greedy_ids(base) == answers == greedy_ids(Student.load(tiny_model_dir))
    tuned = Student.load(tiny_model_dir, adapter=tmp_path / "adapter")
    assert tuned.identity.weights_sha256 == base.identity.weights_sha256


def test_an_adapter_that_rewrites_the_base_gets_weights_of_its_own(tiny_model_dir: Path, tmp_path: Path) -> None:
    pissa = save_lora(tiny_model_dir, tmp_path / "pissa", init_lora_weights="pissa")
    base = Student.load(tiny_model_dir)
    tensors, reads = base_tensors(base), SHARED_WEIGHTS.reads
    tuned = Student.load(tiny_model_dir, adapter=pissa)
    assert SHARED_WEIGHTS.reads == reads + 1
    assert all(torch.equal(p, tensors[n]) for n, p in base.model.named_parameters())
    assert greedy_ids(tuned) == greedy_ids(Student.load(tiny_model_dir, adapter=pissa, private=True))


def test_release_frees_the_weights_and_a_new_model_replaces_the_old(tiny_model_dir: Path,
                                                                     peaked_model_dir: Path) -> None:
    student = Student.load(tiny_model_dir)
    held = weakref.ref(student.model.get_input_embeddings().weight)
    del student
    gc.collect()
    assert held() is not None  # kept for the next load
    Student.release()
    assert held() is None
    reads = SHARED_WEIGHTS.reads
    Student.load(tiny_model_dir)
    assert SHARED_WEIGHTS.reads == reads + 1  # read again after the release

    tiny = weakref.ref(Student.load(tiny_model_dir).model.get_input_embeddings().weight)
    Student.load(peaked_model_dir)  # another model: the old one is dropped, at most one is held
    gc.collect()
    assert tiny() is None
    Student.load(peaked_model_dir)
    assert SHARED_WEIGHTS.reads == reads + 2


def test_a_local_teacher_on_the_student_model_reuses_its_weights(tiny_model_dir: Path) -> None:
    student = Student.load(tiny_model_dir)
    reads = SHARED_WEIGHTS.reads
    teacher = live_teacher(resolve_settings(env={"DISTILL_TEACHER": f"local:{tiny_model_dir}"}))
    results = run_all(teacher, [Request(messages=({"role": "user", "content": "Hi"},), max_tokens=3)])
    assert isinstance(results[0], Completion)
    assert SHARED_WEIGHTS.reads == reads
    assert greedy_ids(student) == greedy_ids(Student.load(tiny_model_dir, private=True))

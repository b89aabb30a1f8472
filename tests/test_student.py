"""The Student on a tiny random Llama with the real SmolLM2 tokenizer: loading, batching, identity."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distill.errors import ConfigError, InputError, ModelError
from distill.records.prompts import Prompt
from distill.student.model import GenerationParams, Student, answer_id

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea, and keep it short please.",
    "2+2?",
    "Explain, step by step, how to boil an egg so that the yolk stays soft.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Student:
    return Student.load(tiny_model_dir)


def test_answers_carry_ids_identity_params_and_token_counts(tiny: Student) -> None:
    params = GenerationParams(max_new_tokens=8)
    answers = tiny.answer(PROMPTS, params, batch_size=2)
    assert [a.prompt.text for a in answers] == PROMPTS
    row = answers[0].to_row()
    for key in ("id", "prompt_id", "prompt", "answer", "model", "generation", "tokens", "finish_reason"):
        assert key in row
    assert row["model"]["weights_sha256"] == tiny.identity.weights_sha256 and len(tiny.identity.weights_sha256) == 64
    assert row["generation"]["max_new_tokens"] == 8
    assert 0 < row["tokens"]["completion"] <= 8 and row["tokens"]["prompt"] > 10
    assert row["id"] == answer_id(answers[0].prompt.id, tiny.identity, params, 0)


def test_batched_and_one_by_one_greedy_are_identical(tiny: Student) -> None:
    params = GenerationParams(max_new_tokens=12)
    batched = [a.text for a in tiny.answer(PROMPTS, params, batch_size=8)]
    single = [tiny.answer([p], params)[0].text for p in PROMPTS]
    assert batched == single


def test_left_padding_and_length_sorting(tiny: Student) -> None:
    assert tiny.tokenizer.padding_side == "left"
    seen: list[int] = []
    for batch in tiny.iter_answers([Prompt.from_text(p) for p in PROMPTS], GenerationParams(max_new_tokens=2),
                                   batch_size=1):
        seen.append(batch[0].prompt_tokens)
    assert seen == sorted(seen, reverse=True)


def test_each_prompt_is_tokenised_once_however_many_samples(tiny_model_dir: Path) -> None:
    student = Student.load(tiny_model_dir)
    tokenizer, texts = student.tokenizer, []

    class Counting:
        """The tokenizer, recording every text it is asked to tokenise."""

        def __call__(self, text, **kwargs):  # type: ignore[no-untyped-def]
            texts.extend([text] if isinstance(text, str) else text)
            return tokenizer(text, **kwargs)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(tokenizer, name)

    student.tokenizer = Counting()
    answers = student.answer(PROMPTS[:2], GenerationParams(max_new_tokens=3, temperature=1.0, samples=3, seed=1))
    assert len(answers) == 6 and len(texts) == 2


def test_sampling_is_seeded_and_gives_one_row_per_sample(tiny: Student) -> None:
    params = GenerationParams(max_new_tokens=6, temperature=1.0, samples=3, seed=5)
    first = tiny.answer(PROMPTS[:2], params)
    again = tiny.answer(PROMPTS[:2], params)
    assert [(a.prompt.text, a.sample) for a in first] == [(p, k) for p in PROMPTS[:2] for k in range(3)]
    assert [a.text for a in first] == [a.text for a in again]
    assert len({a.id for a in first}) == 6
    other = tiny.answer(PROMPTS[:2], GenerationParams(max_new_tokens=6, temperature=1.0, samples=3, seed=6))
    assert [a.text for a in other] != [a.text for a in first]


def test_skip_resumes_without_redoing(tiny: Student) -> None:
    prompts = [Prompt.from_text(p) for p in PROMPTS]
    done = frozenset({(prompts[0].id, 0), (prompts[3].id, 0)})
    got = [a.prompt.id for b in tiny.iter_answers(prompts, GenerationParams(max_new_tokens=2), skip=done) for a in b]
    assert sorted(got) == sorted(p.id for i, p in enumerate(prompts) if i not in (0, 3))


def test_prompt_longer_than_context_is_a_clear_error(tiny: Student) -> None:
    long = Prompt(id="too-long", messages=({"role": "user", "content": "word " * 600},))
    with pytest.raises(InputError, match=r"context window of 512 .*too-long \(\d+ tokens\)"):
        tiny.answer([long, Prompt.from_text("short")], GenerationParams(max_new_tokens=8))


@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 2}, "temperature above 0"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"top_p": 0}, "top_p"),
    ({"temperature": -1}, "temperature"),
])
def test_bad_generation_params(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GenerationParams(**kwargs)


def test_identity_hash_follows_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    same = Student.load(copy).identity.weights_sha256
    assert same == Student.load(tiny_model_dir).identity.weights_sha256
    import torch
    from safetensors.torch import load_file, save_file

    weights = copy / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert Student.load(copy).identity.weights_sha256 != same
    assert isinstance(torch.__version__, str)


def test_missing_and_corrupt_weights_are_clear_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    shutil.copytree(tiny_model_dir, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=f"{missing}: no weights file"):
        Student.load(missing)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=f"{corrupt}: cannot load the model"):
        Student.load(corrupt)


def test_unknown_student_source_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_STUDENT", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="no such directory"):
        Student.load()


def test_public_api_import() -> None:
    import distill

    assert distill.Student is Student and distill.GenerationParams is GenerationParams

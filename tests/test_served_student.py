"""`--engine server`: the student's answers from an OpenAI-compatible server (the loopback test server
standing in for vLLM, llama.cpp or `distill serve`), through `distill answer`, `run` and `eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import ModelError
from distill.records.prompts import read_prompts
from distill.stages.answer import answer_to_file
from distill.student.model import GenerationParams, answer_id, model_identity
from distill.teachers.served_student import Server, connect, sample_seed
from loopback_server import Fault, LoopbackRequest, within_max_tokens
from test_cli_answer import read_rows, write_prompts
from test_export import random_adapter
from test_round_e2e import PROMPTS, teacher_script

STUDENT = "smol"


def student_reply(request: LoopbackRequest):  # type: ignore[no-untyped-def]
    """A scripted student: q0 answers in two words, every other prompt at length (cut at max_tokens)."""
    if request.prompt.endswith("0."):
        return within_max_tokens("Zero, certainly.", request)
    return within_max_tokens(f"The answer to '{request.prompt}' takes many words to say here", request)


def chat_requests(server) -> list[dict]:  # type: ignore[no-untyped-def]
    return [s.body for s in server.requests if s.endpoint == "openai"]


@pytest.fixture
def student_server(loopback):
    loopback.serve_models([{"id": STUDENT}])
    loopback.script(student_reply)
    return loopback


def serve_args(server, *more: str) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--engine", "server", "--student-url", server.openai_url, *more]


def test_answer_through_a_server_writes_the_local_students_row_shape(student_server, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl")
    local, served = tmp_path / "local.jsonl", tmp_path / "served.jsonl"
    assert main(["answer", str(prompts), "-o", str(local), "--student", str(tiny_model_dir),
                 "--max-new-tokens", "4"]) == 0
    assert main(["answer", str(prompts), "-o", str(served), "--max-new-tokens", "4", *serve_args(student_server)]) == 0
    local_rows, rows = read_rows(local), read_rows(served)
    assert [set(r) for r in rows] == [set(r) for r in local_rows]
    assert [set(r["model"]) for r in rows] == [set(r["model"]) for r in local_rows]
    assert [r["prompt_id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert rows[0]["answer"] == "Zero, certainly." and rows[0]["finish_reason"] == "stop"
    assert rows[0]["tokens"]["completion"] == 2
    assert all(r["finish_reason"] == "length" and r["tokens"]["completion"] == 4 for r in rows[1:])
    assert rows[1]["answer"] == "The answer to 'Say"
    model = rows[0]["model"]
    assert model["name"] == STUDENT and model["weights_sha256"] == f"unverified:{STUDENT}"
    assert model["path"] == f"{student_server.openai_url}#{STUDENT}"
    params = GenerationParams(max_new_tokens=4)
    identity = connect(Server(student_server.openai_url)).identity
    assert [r["id"] for r in rows] == [answer_id(f"q{i}", identity, params, 0) for i in range(4)]
    bodies = chat_requests(student_server)
    assert len(bodies) == 4 and all(b["model"] == STUDENT and b["max_tokens"] == 4 and b["temperature"] == 0
                                    and "seed" not in b for b in bodies)


def test_resume_asks_the_server_only_for_the_answers_not_yet_written(student_server, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", n=5)
    out = tmp_path / "a.jsonl"
    args = ["answer", str(prompts), "-o", str(out), "--max-new-tokens", "3", *serve_args(student_server)]
    assert main(args) == 0
    full = read_rows(out)
    out.unlink()
    (tmp_path / "a.jsonl.partial").write_text("".join(json.dumps(dict(r, marker="kept")) + "\n" for r in full[:2]),
                                              encoding="utf-8")
    student_server.reset()
    assert main(args) == 0
    rows = read_rows(out)
    assert [r.get("marker") for r in rows] == ["kept", "kept", None, None, None]
    assert [r["answer"] for r in rows] == [r["answer"] for r in full]
    asked = [b["messages"][-1]["content"] for b in chat_requests(student_server)]
    assert sorted(asked) == [f"Say the number {i}." for i in (2, 3, 4)]


def test_samples_carry_distinct_seeds_derived_from_the_seed_prompt_and_sample(student_server, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", n=2)
    flags = ["--max-new-tokens", "3", "--temperature", "0.7", "--top-p", "0.9", "--samples", "3", "--seed", "5"]
    assert main(["answer", str(prompts), "-o", str(tmp_path / "a.jsonl"), *flags, *serve_args(student_server)]) == 0
    first = {(b["messages"][-1]["content"][-2], b["seed"]) for b in chat_requests(student_server)}
    expected = {(str(i), sample_seed(5, f"q{i}", k)) for i in range(2) for k in range(3)}
    assert first == expected and len({seed for _, seed in first}) == 6
    assert all(b["temperature"] == 0.7 and b["top_p"] == 0.9 for b in chat_requests(student_server))
    rows = read_rows(tmp_path / "a.jsonl")
    assert sorted((r["prompt_id"], r["sample"]) for r in rows) == [(f"q{i}", k) for i in range(2) for k in range(3)]
    student_server.reset()
    assert main(["answer", str(prompts), "-o", str(tmp_path / "b.jsonl"), *flags, *serve_args(student_server)]) == 0
    assert {(b["messages"][-1]["content"][-2], b["seed"]) for b in chat_requests(student_server)} == first
    student_server.reset()
    other = [f if f != "5" else "6" for f in flags]
    assert main(["answer", str(prompts), "-o", str(tmp_path / "c.jsonl"), *other, *serve_args(student_server)]) == 0
    assert not {seed for _, seed in first} & {b["seed"] for b in chat_requests(student_server)}


def test_a_model_the_server_does_not_serve_is_refused_naming_what_it_serves(loopback, tmp_path: Path, capsys) -> None:
    loopback.serve_models([{"id": "base"}, {"id": "lora-a"}])
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "a.jsonl"
    assert main(["answer", str(prompts), "-o", str(out), *serve_args(loopback, "--student-model", "lora-b")]) == 1
    err = capsys.readouterr().err
    assert "does not serve 'lora-b'" in err and "'base', 'lora-a'" in err and "--student-model" in err
    assert main(["answer", str(prompts), "-o", str(out), *serve_args(loopback)]) == 1
    assert "serves 'base', 'lora-a'; name the student's model with --student-model" in capsys.readouterr().err
    assert loopback.count("openai") == 0 and not out.exists() and not (tmp_path / "a.jsonl.partial").exists()


def test_weights_of_another_model_are_refused_naming_both_hashes(loopback, tiny_model_dir: Path, tmp_path: Path,
                                                                 capsys) -> None:
    other = "ab" * 32
    loopback.serve_models([{"id": STUDENT, "distill_weights_sha256": other}])
    expected = model_identity(tiny_model_dir)[1].weights_sha256
    out = tmp_path / "a.jsonl"
    code = main(["answer", str(write_prompts(tmp_path / "p.jsonl")), "-o", str(out), "--student", str(tiny_model_dir),
                 *serve_args(loopback)])
    err = capsys.readouterr().err
    assert code == 1 and other in err and expected in err and "weights sha256" in err
    assert loopback.count("openai") == 0 and not out.exists()


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("served-adapter") / "adapter", scale=0.2)


def test_a_server_with_hashes_is_the_local_student_and_its_adapter_is_checked(loopback, tiny_model_dir: Path,
                                                                              adapter: Path, tmp_path: Path) -> None:
    base = model_identity(tiny_model_dir)[1]
    tuned = model_identity(tiny_model_dir, adapter)[1]
    loopback.serve_models([{"id": "base", "distill_weights_sha256": base.weights_sha256},
                           {"id": "tuned", "distill_weights_sha256": base.weights_sha256,
                            "distill_adapter_sha256": tuned.adapter_sha256}])
    server = Server(loopback.openai_url)
    served = connect(server, tiny_model_dir, adapter)  # chosen by its hashes among two
    assert served.settings.model == "tuned" and served.identity.key == tuned.key
    assert served.identity.path == f"{loopback.openai_url}#tuned"
    assert connect(server, tiny_model_dir).settings.model == "base"
    with pytest.raises(ModelError, match=f"adapter sha256 {tuned.adapter_sha256}.*no --adapter was given"):
        connect(Server(loopback.openai_url, "tuned"), tiny_model_dir)
    with pytest.raises(ModelError, match=f"adapter sha256 none, but --adapter {adapter} has adapter sha256 "
                                         f"{tuned.adapter_sha256}"):
        connect(Server(loopback.openai_url, "base"), tiny_model_dir, adapter)


def test_an_adapter_a_run_trained_must_be_shown_by_hashes_not_by_name(student_server, tiny_model_dir: Path,
                                                                      adapter: Path, tmp_path: Path) -> None:
    prompts = read_prompts(write_prompts(tmp_path / "p.jsonl"))
    with pytest.raises(ModelError, match="does not report the weight hashes of 'smol'.*distill serve"):
        answer_to_file(prompts, tmp_path / "a.jsonl", GenerationParams(max_new_tokens=3), source=str(tiny_model_dir),
                       adapter=str(adapter), server=Server(student_server.openai_url), require_verified=True)
    assert student_server.count("openai") == 0


def test_engine_flags_that_cannot_be_meant_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl")
    assert main(["answer", str(prompts), "-o", str(tmp_path / "a.jsonl"), "--engine", "server"]) == 2
    assert "--engine server needs --student-url URL" in capsys.readouterr().err
    assert main(["answer", str(prompts), "-o", str(tmp_path / "a.jsonl"), "--student-url", "http://x/v1"]) == 2
    assert "read only with --engine server" in capsys.readouterr().err


def both_sides(request: LoopbackRequest):  # type: ignore[no-untyped-def]
    """The student (model `smol`) answers in a sentence; the teacher is the round tests' scripted one."""
    if request.model == STUDENT:
        return within_max_tokens("I think 12 plus 30 is 41, and Paris is in France.", request)
    return teacher_script(request)


def test_a_round_takes_its_answers_from_the_server(loopback_teacher, tmp_path: Path) -> None:
    loopback_teacher.serve_models([{"id": STUDENT}])
    loopback_teacher.script(both_sides)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS[:3]), encoding="utf-8")
    runs = tmp_path / "runs"
    code = main(["run", str(prompts), "--name", "served", "--runs-dir", str(runs), "--chain", "quick",
                 "--max-new-tokens", "16", *serve_args(loopback_teacher)])
    assert code == 0
    answers = read_rows(runs / "served" / "answers.jsonl")
    assert [a["answer"] for a in answers] == ["I think 12 plus 30 is 41, and Paris is in France."] * 3
    assert all(a["model"]["name"] == STUDENT for a in answers)
    manifest = json.loads((runs / "served" / "manifest.json").read_text())
    assert manifest["models"]["student"]["weights_sha256"] == f"unverified:{STUDENT}"
    assert manifest["config"]["engine"] == "server"
    sft = read_rows(runs / "served" / "sft.jsonl")
    assert any("42" in row["completion"][-1]["content"] for row in sft)  # the teacher fixed the served answer
    student_calls = [b for b in chat_requests(loopback_teacher) if b["model"] == STUDENT]
    assert len(student_calls) == 3


def test_eval_answers_through_the_server_and_scores_what_it_served(loopback, tiny_model_dir: Path, adapter: Path,
                                                                   tmp_path: Path) -> None:
    base = model_identity(tiny_model_dir)[1]
    tuned = model_identity(tiny_model_dir, adapter)[1]
    loopback.serve_models([{"id": "base", "distill_weights_sha256": base.weights_sha256},
                           {"id": "tuned", "distill_weights_sha256": base.weights_sha256,
                            "distill_adapter_sha256": tuned.adapter_sha256}])
    loopback.script(lambda r: within_max_tokens("It is 42." if r.model == "tuned" else "It is 41.", r))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"What is {i} plus {42 - i}?",
                                           "reference": {"type": "numeric", "value": 42}}) + "\n" for i in range(4)),
                       encoding="utf-8")
    out = tmp_path / "eval.json"
    code = main(["eval", str(heldout), "--adapter", str(adapter), "--student", str(tiny_model_dir), "--no-judge",
                 "-o", str(out), *serve_args(loopback)])
    assert code == 0
    checks = json.loads(out.read_text())["metrics"]["checks"]
    assert checks["current_pass_rate"] == 0.0 and checks["new_pass_rate"] == 1.0
    assert sorted(b["model"] for b in chat_requests(loopback)) == ["base"] * 4 + ["tuned"] * 4


def test_a_request_that_fails_for_good_stops_keeping_the_answers_before_it(student_server, tmp_path: Path,
                                                                           capsys) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "a.jsonl"
    student_server.script(lambda r: Fault(400) if r.prompt.endswith("2.") else student_reply(r))
    args = ["answer", str(prompts), "-o", str(out), "--max-new-tokens", "3", "--batch-size", "1",
            *serve_args(student_server)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "student server" in err and "HTTP 400" in err and "run the same command again to resume" in err
    assert not out.exists()
    kept = read_rows(tmp_path / "a.jsonl.partial")
    assert [r["prompt_id"] for r in kept] == ["q0", "q1"]  # one request in flight: in order, q2 failed
    student_server.script(student_reply)
    student_server.reset()
    assert main(args) == 0
    assert [r["prompt_id"] for r in read_rows(out)] == ["q0", "q1", "q2", "q3"]
    assert sorted(b["messages"][-1]["content"] for b in chat_requests(student_server)) == \
        ["Say the number 2.", "Say the number 3."]


def test_an_adapter_named_on_a_server_without_hashes_is_recorded_unverified(student_server, tiny_model_dir: Path,
                                                                            adapter: Path) -> None:
    served = connect(Server(student_server.openai_url, STUDENT), tiny_model_dir, adapter)
    assert served.identity.weights_sha256 == served.identity.adapter_sha256 == f"unverified:{STUDENT}"
    assert served.identity.adapter == str(adapter)
    assert served.identity.key != model_identity(tiny_model_dir, adapter)[1].key  # never reused as the local one's


def test_eval_refuses_one_served_model_for_both_students(student_server, tiny_model_dir: Path, adapter: Path,
                                                         tmp_path: Path, capsys) -> None:
    heldout = write_prompts(tmp_path / "h.jsonl")
    code = main(["eval", str(heldout), "--adapter", str(adapter), "--student", str(tiny_model_dir), "--no-judge",
                 *serve_args(student_server)])
    assert code == 2 and "would both be answered by 'smol'" in capsys.readouterr().err
    assert student_server.count("openai") == 0


def test_the_current_students_mismatch_names_the_against_flags(loopback, tiny_model_dir: Path, adapter: Path) -> None:
    """In `distill eval --engine server` the current student is named by --against-model and --against:
    its errors say so, not --student-model and --adapter."""
    from distill.teachers.served_student import connect_pair

    loopback.serve_models([{"id": "base"}, {"id": "tuned"}])
    with pytest.raises(ModelError, match="name the student's model with --against-model"):
        connect_pair(Server(loopback.openai_url, "tuned"), tiny_model_dir, None, adapter)
    tuned = model_identity(tiny_model_dir, adapter)[1]
    base = model_identity(tiny_model_dir)[1]
    loopback.serve_models([{"id": "base", "distill_weights_sha256": base.weights_sha256},
                           {"id": "tuned", "distill_weights_sha256": base.weights_sha256,
                            "distill_adapter_sha256": tuned.adapter_sha256}])
    with pytest.raises(ModelError, match="but no --against was given.*pass that adapter with --against"):
        connect_pair(Server(loopback.openai_url, "tuned"), tiny_model_dir, None, adapter, against_model="tuned")


def test_credentials_in_the_student_url_are_masked_in_the_manifest_and_in_distill_config(
        tmp_path: Path, monkeypatch, capsys) -> None:
    from distill.stages.config import RunConfig

    url = "https://user:s3cret-token@gpu.example:8000/v1?key=abc123"
    recorded = RunConfig(name="r", engine="server", student_url=url).to_dict()["student_url"]
    assert recorded == "https://***@gpu.example:8000/v1?key=***"
    toml = tmp_path / "distill.toml"
    toml.write_text(f'[run]\nengine = "server"\nstudent_url = "{url}"\n', encoding="utf-8")
    assert main(["config", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "gpu.example:8000" in out and "s3cret-token" not in out and "abc123" not in out

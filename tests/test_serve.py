"""`distill serve`: the OpenAI-compatible server over the real embedded student, spoken to by the
official `openai` SDK over real HTTP (a uvicorn server on a free port in a thread), and used as the
teacher of another distill run. Generation is kept short (a few tokens) so the tests stay quick.

The text helpers of the batcher (stop strings, nucleus) and the vLLM command line are tested
without a model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from distill.cli import main
from distill.errors import ConfigError
from distill.serving import vllm
from distill.student.generation import first_stop, nucleus, stop_prefix
from distill.serving.models import AdapterSpec, parse_adapters

PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Say hello in French.",
           "What is two plus two?"]
KEY = "sk-serve-test-key-0123456789"


# ---------------------------------------------------------------- no model

def test_stop_strings_cut_and_hold_back_a_possible_start() -> None:
    assert first_stop("Paris. The end", ("The", ".")) == 5
    assert first_stop("Paris", ("x",)) is None
    assert stop_prefix("Paris. Th", ("The end",)) == 2
    assert stop_prefix("Paris. T", ("The end", ". Tx")) == 3
    assert stop_prefix("Paris", ("The",)) == 0


def test_nucleus_keeps_the_smallest_set_reaching_top_p() -> None:
    import torch

    kept = nucleus(torch.tensor([0.1, 0.5, 0.3, 0.1]), 0.7)
    assert kept.tolist() == pytest.approx([0.0, 0.5 / 0.8, 0.3 / 0.8, 0.0])


def test_adapter_names_come_from_the_directory_or_name_equals_dir(tmp_path: Path) -> None:
    assert parse_adapters([str(tmp_path / "a1"), f"b={tmp_path / 'x'}"]) == [
        AdapterSpec("a1", tmp_path / "a1"), AdapterSpec("b", tmp_path / "x")]
    with pytest.raises(ConfigError, match="'student' is the base student's"):
        parse_adapters([f"student={tmp_path}"])
    with pytest.raises(ConfigError, match="'a1' is given twice"):
        parse_adapters([str(tmp_path / "a1"), f"a1={tmp_path / 'y'}"])


def test_vllm_command_serves_the_base_and_every_adapter_under_the_same_names(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    for directory, rank in ((small, 8), (big, 40)):
        directory.mkdir()
        (directory / "adapter_config.json").write_text(json.dumps({"r": rank}))
    argv = vllm.command(tmp_path / "base", [AdapterSpec("s", small), AdapterSpec("b", big)], "127.0.0.1", 8123)
    assert argv == ["vllm", "serve", str(tmp_path / "base"), "--served-model-name", "student",
                    "--host", "127.0.0.1", "--port", "8123", "--enable-lora", "--lora-modules",
                    f"s={small}", f"b={big}", "--max-lora-rank", "64"]
    assert vllm.command(tmp_path / "base", [], "::1", 80)[-4:] == ["--host", "::1", "--port", "80"]


def test_engine_vllm_without_vllm_is_a_clear_error(capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["serve", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "vLLM is not installed" in err and "pip install vllm" in err and "leave out --engine vllm" in err


# ---------------------------------------------------------------- the real student over HTTP

def save_lora(base_dir: Path, out: Path) -> Path:
    """A LoRA on q/v/o/down with random B (so it changes the answers), saved by PEFT into `out`."""
    import torch
    from peft import LoraConfig, get_peft_model

    from distill.student.model import Student

    torch.manual_seed(1)
    model = Student.load(base_dir, private=True).model
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lora(embedded_dir, tmp_path_factory.mktemp("lora") / "tuned")


@pytest.fixture(scope="module")
def students(embedded_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    from distill.serving.models import load_students

    return load_students(embedded_dir, [AdapterSpec("tuned", adapter_dir)])


@pytest.fixture(scope="module")
def server(students):
    from distill.serving.api import StudentServer

    with StudentServer(students, port=0) as running:
        yield running


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def chat(client, prompt: str, model: str = "student", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          **({"max_tokens": 12} | kwargs))


def streamed(client, prompt: str, model: str = "student", **kwargs: Any) -> tuple[str, Any, Any]:
    """(concatenated deltas, finish reason, usage) of a streamed chat completion."""
    parts, finish, usage = [], None, None
    for chunk in chat(client, prompt, model, stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish, usage


@pytest.mark.slow
def test_greedy_chat_is_the_students_own_answer(client, students) -> None:
    from distill.student.model import GenerationParams

    expected = students["student"].answer(PROMPTS[:2], GenerationParams(max_new_tokens=12), batch_size=1)
    for prompt, answer in zip(PROMPTS[:2], expected):
        reply = chat(client, prompt)
        assert reply.choices[0].message.content == answer.text
        assert reply.choices[0].finish_reason == answer.finish_reason
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (answer.prompt_tokens,
                                                                              answer.completion_tokens)
        assert reply.model == "student" and reply.object == "chat.completion"


@pytest.mark.slow
def test_streamed_deltas_concatenate_to_the_non_streamed_answer(client) -> None:
    for prompt in PROMPTS[:2]:
        whole = chat(client, prompt)
        text, finish, usage = streamed(client, prompt)
        assert text == whole.choices[0].message.content and text
        assert finish == whole.choices[0].finish_reason
        assert usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.slow
def test_stop_strings_end_the_answer_before_them_streamed_or_not(client) -> None:
    whole = chat(client, PROMPTS[0], max_tokens=16).choices[0].message.content
    word = whole.split()[3]  # "The capital of France is Paris." -> stop at "France"
    stopped = chat(client, PROMPTS[0], max_tokens=16, stop=[word])
    assert stopped.choices[0].message.content == whole[:whole.index(word)].strip()
    assert stopped.choices[0].finish_reason == "stop"
    text, finish, _ = streamed(client, PROMPTS[0], max_tokens=16, stop=[word])
    assert (text, finish) == (stopped.choices[0].message.content, "stop")


@pytest.mark.slow
def test_max_tokens_ends_with_length(client) -> None:
    reply = chat(client, "Write a long story about a dragon.", max_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


@pytest.mark.slow
def test_seeded_sampling_repeats_and_the_seed_matters(client) -> None:
    settings = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12}
    first = [chat(client, "Tell me a fact.", seed=s, **settings).choices[0].message.content for s in (1, 2, 3)]
    again = [chat(client, "Tell me a fact.", seed=s, **settings).choices[0].message.content for s in (1, 2, 3)]
    assert first == again and len(set(first)) > 1


@pytest.mark.slow
def test_completions_take_raw_prompts_streamed_or_not(client) -> None:
    reply = client.completions.create(model="student", prompt=["The capital of France is", "One, two,"],
                                      max_tokens=6)
    texts = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
    assert reply.object == "text_completion" and len(texts) == 2 and all(texts)
    assert reply.usage.completion_tokens == 12 or all(c.finish_reason in ("stop", "length") for c in reply.choices)
    parts: dict[int, str] = {0: "", 1: ""}
    for chunk in client.completions.create(model="student", prompt=["The capital of France is", "One, two,"],
                                           max_tokens=6, stream=True):
        for choice in chunk.choices:
            parts[choice.index] += choice.text
    assert [parts[0], parts[1]] == texts


@pytest.mark.slow
def test_a_json_schema_response_format_gives_json_that_follows_it(client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    for max_tokens in (40, 4):  # 4: cut short, the JSON is closed anyway
        reply = chat(client, "Give the capital of France and its population as JSON.", max_tokens=max_tokens,
                     response_format=fmt)
        value = json.loads(reply.choices[0].message.content)
        assert set(value) == {"city", "population"} and isinstance(value["population"], int)
    assert reply.choices[0].finish_reason == "length"
    text, _, _ = streamed(client, "Give the capital of France and its population as JSON.", max_tokens=40,
                          response_format=fmt)
    assert set(json.loads(text)) == {"city", "population"}


@pytest.mark.slow
def test_models_name_the_base_and_the_adapter_with_their_hashes(client, students) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(cards) == {"student", "tuned"}
    base, tuned = students["student"].identity, students["tuned"].identity
    assert cards["student"]["distill_weights_sha256"] == base.weights_sha256
    assert cards["student"]["distill_adapter_sha256"] is None
    assert cards["tuned"]["distill_weights_sha256"] == base.weights_sha256
    assert cards["tuned"]["distill_adapter_sha256"] == tuned.adapter_sha256 and len(tuned.adapter_sha256) == 64
    assert all(c["owned_by"] == "distill" and c["object"] == "model" and c["created"] > 0 for c in cards.values())


@pytest.mark.slow
def test_the_model_name_chooses_the_adapter(client, students) -> None:
    from distill.student.model import GenerationParams

    base = chat(client, PROMPTS[1]).choices[0].message.content
    tuned = chat(client, PROMPTS[1], model="tuned").choices[0].message.content
    assert tuned != base
    own = students["tuned"].answer([PROMPTS[1]], GenerationParams(max_new_tokens=12))[0].text
    assert tuned == own


@pytest.mark.slow
def test_requests_that_arrive_together_are_generated_together(server, students) -> None:
    """The generation lock is held while four requests arrive: the first batch waits on it and the
    others queue, so at least one batch holds several requests; batched answers are still greedy's."""
    import openai

    from distill.student.model import GenerationParams

    batcher = server.app.batcher
    before = len(batcher.batches)

    async def ask_all() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        replies = await asyncio.gather(*(aclient.chat.completions.create(
            model="student", messages=[{"role": "user", "content": p}], max_tokens=8) for p in PROMPTS))
        await aclient.close()
        return [r.choices[0].message.content for r in replies]

    results: list[list[str]] = []
    with batcher._lock:
        thread = threading.Thread(target=lambda: results.append(asyncio.run(ask_all())))
        thread.start()
        while sum(n for _, n in batcher.batches[before:]) + batcher.pending() < 4:
            thread.join(0.05)
    thread.join(120)
    sizes = [n for _, n in batcher.batches[before:]]
    assert sum(sizes) == 4 and max(sizes) > 1
    expected = students["student"].answer(PROMPTS, GenerationParams(max_new_tokens=8), batch_size=4)
    assert results == [[a.text for a in expected]]


@pytest.mark.slow
def test_a_request_sent_while_another_decodes_joins_its_batch(server, students) -> None:
    """A long streamed answer is decoding when a short request arrives: the short one is prefilled
    into the running batch (continuous batching) instead of waiting for the long one to end, and
    both answers are still greedy's own."""
    import openai

    from distill.student.model import GenerationParams

    batcher = server.app.batcher
    joined = batcher.joined
    story = "Write a short story about a cat who learns to fly."
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    chunks = iter(client.chat.completions.create(model="student", messages=[{"role": "user", "content": story}],
                                                 max_tokens=48, stream=True))
    text = ""
    while not text:  # the long answer has begun
        text = next(chunks).choices[0].delta.content or ""
    short = chat(client, PROMPTS[3], max_tokens=6).choices[0].message.content
    long = text + "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert batcher.joined == joined + 1
    assert long == students["student"].answer([story], GenerationParams(max_new_tokens=48))[0].text
    assert short == students["student"].answer([PROMPTS[3]], GenerationParams(max_new_tokens=6))[0].text


def post(server, path: str, body: Any, key: str | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(server.url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_bad_requests_are_clear_openai_errors(server) -> None:
    user = [{"role": "user", "content": "Hi"}]
    cases = {
        b"{not json": (400, None, "not valid JSON"),
        json.dumps({"model": "nope", "messages": user}).encode(): (404, "model", "served models: student, tuned"),
        json.dumps({"model": "student", "messages": []}).encode(): (400, "messages", "non-empty list"),
        json.dumps({"model": "student", "messages": user, "temperature": "hot"}).encode():
            (400, "temperature", "from 0 to 2, got 'hot'"),
        json.dumps({"model": "student", "messages": user, "n": 2}).encode(): (400, "n", "send n=1"),
        json.dumps({"model": "student", "messages": user, "max_tokens": 0}).encode(): (400, "max_tokens", "at least 1"),
        json.dumps({"model": "student", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode():
            (400, "messages[0].content", "only text parts"),
        json.dumps({"model": "student", "messages": user, "response_format": {"type": "yaml"}}).encode():
            (400, "response_format", "expected {'type': 'text'}"),
    }
    for raw, (status, param, words) in cases.items():
        code, body = post(server, "/chat/completions", raw)
        assert code == status, body
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["param"] == param
        assert words in body["error"]["message"]


@pytest.mark.slow
def test_a_seed_torch_cannot_take_is_a_400_and_the_completions_overflow_names_prompt(server) -> None:
    status, body = post(server, "/chat/completions", {"model": "student", "max_tokens": 2, "seed": 2**70,
                                                      "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and body["error"]["param"] == "seed" and str(2**70) in body["error"]["message"]
    status, body = post(server, "/completions", {"model": "student", "prompt": "word " * 9000})  # no room at all
    assert status == 400 and body["error"]["param"] == "prompt" and body["error"]["code"] == "context_length_exceeded"


@pytest.mark.slow
def test_a_prompt_that_overflows_the_context_is_a_400_naming_both_numbers(client, students) -> None:
    import openai

    window = students["student"].context_window
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "Hi", max_tokens=window)
    error = raised.value.body
    assert raised.value.status_code == 400 and error["code"] == "context_length_exceeded"
    assert f"max_tokens is {window}" in error["message"] and f"context window of student, {window} tokens" in error["message"]
    assert "the prompt is 2" in error["message"] or "the prompt is 3" in error["message"]
    with pytest.raises(openai.BadRequestError, match="leaves no room for an answer"):
        chat(client, "word " * window, max_tokens=None)


@pytest.mark.slow
def test_an_api_key_is_required_when_given(students) -> None:
    import openai

    from distill.serving.api import StudentServer

    with StudentServer(students, port=0, api_key=KEY) as keyed:
        for wrong in ("", "sk-wrong"):
            code, body = post(keyed, "/chat/completions", {"model": "student", "messages": []}, key=wrong or None)
            assert code == 401 and body["error"]["code"] == "invalid_api_key" and KEY not in json.dumps(body)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url, api_key="sk-wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=keyed.url, api_key=KEY, max_retries=0)
        assert [m.id for m in good.models.list().data] == ["student", "tuned"]


@pytest.mark.slow
def test_stopping_the_server_ends_a_running_answer_and_its_engine(students) -> None:
    """Ctrl-C while an answer decodes: when `stop` returns, the engine thread has ended (a process must
    not exit with it inside the model) and the caller has its outcome, not a wait."""
    import httpx
    import openai

    from distill.serving.api import StudentServer

    outcome: dict[str, Any] = {}

    def ask(client: Any) -> None:
        try:
            outcome["answer"] = streamed(client, "Tell a long story about a dragon and a king.", max_tokens=2000)
        except (openai.APIError, httpx.HTTPError) as exc:
            outcome["error"] = exc

    with StudentServer(students, port=0) as running:
        asker = threading.Thread(target=ask, args=(openai.OpenAI(base_url=running.url, api_key="unused",
                                                                 max_retries=0),))
        asker.start()
        while running.app.batcher.running() == 0 and asker.is_alive():
            time.sleep(0.05)
        assert running.app.batcher.alive  # decoding when the server stops
    assert not running.app.batcher.alive
    asker.join(60)
    assert not asker.is_alive()
    assert "shutting down" in str(outcome.get("error")), outcome  # told so, not cut off silently


@pytest.mark.slow
def test_a_distill_run_uses_the_served_student_as_its_teacher(students, embedded_dir: Path, tmp_path: Path,
                                                             monkeypatch, caplog) -> None:
    """`openai:student` at the server's base URL is the teacher of a tiny run: every critique goes to it,
    with the run's JSON schema as response_format, and comes back parseable."""
    from distill.serving.api import StudentServer

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:2])))
    with StudentServer(students, port=0, api_key=KEY) as served:
        monkeypatch.setenv("DISTILL_TEACHER", "openai:student")
        monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", served.url)
        monkeypatch.setenv("DISTILL_TEACHER_API_KEY", KEY)
        monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
        code = main(["run", str(prompts), "--name", "taught", "--runs-dir", str(tmp_path / "runs"),
                     "--student", str(embedded_dir), "--max-new-tokens", "8", "--chain", "quick", "--teacher-max-tokens", "16"])
        served_batches = sum(n for _, n in served.app.batcher.batches)
    assert code == 0
    run = tmp_path / "runs" / "taught"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["teacher"]["model"] == "student"
    assert served_batches >= 2  # at least one critique per answer reached the server
    critiques = [json.loads(line) for line in (run / "critiques.jsonl").read_text().splitlines()]
    revisions = [json.loads(line) for line in (run / "revisions.jsonl").read_text().splitlines()]
    # the JSON schema was honoured: every reply parsed at once, with no repair request and no step-down
    assert [r["status"] for r in revisions] == ["ok", "ok"]
    assert [(c["teacher"], c["repaired"]) for c in critiques] == [("openai:student", False)] * 2
    assert "rejected response_format" not in caplog.text


@pytest.mark.slow
def test_the_cli_serves_the_student_and_its_adapter_until_ctrl_c(embedded_dir: Path, adapter_dir: Path) -> None:
    """`distill serve --port 0 --adapter NAME=DIR`, the key from $DISTILL_SERVE_API_KEY (never in the process
    list): it prints the base URL, serves both models to the SDK with the key, and Ctrl-C stops it."""
    import openai

    root = str(Path(__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "DISTILL_SERVE_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "distill", "serve", "--student", str(embedded_dir), "--port", "0",
                             "--adapter", f"mine={adapter_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env,
                            # Ctrl-C as in a terminal, even where this test runs as a background job
                            # (which starts with SIGINT ignored, and a child inherits that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["student", "mine"]
        reply = chat(client, "Say hello.", model="mine", max_tokens=4)
        assert reply.model == "mine" and reply.usage.completion_tokens <= 4
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "serving models student, mine" in err and KEY not in err


@pytest.mark.slow
def test_bfloat16_serves_the_base_and_the_adapter_over_bfloat16_weights(embedded_dir: Path, adapter_dir: Path) -> None:
    """`distill serve --dtype bfloat16`: every served model computes with the base weights in bfloat16
    (packed where the CPU has bfloat16 instructions) and answers as the student does."""
    import openai
    import torch

    from distill.serving.api import StudentServer
    from distill.serving.models import load_students
    from distill.student import packed

    students16 = load_students(embedded_dir, [AdapterSpec("tuned", adapter_dir)], dtype="bfloat16")
    for student in students16.values():
        base = student.model.get_base_model() if hasattr(student.model, "get_base_model") else student.model
        assert base.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
        assert base.lm_head.weight.dtype == torch.bfloat16
    with StudentServer(students16, port=0) as running:
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        reply = chat(client, "What is the capital of France?", max_tokens=12)
        assert "Paris" in reply.choices[0].message.content
        assert chat(client, "Say hello.", model="tuned", max_tokens=4).usage.completion_tokens <= 4
    down = students16["student"].model.model.layers[0].mlp.down_proj.weight
    assert hasattr(down, packed.HELD) == packed.cpu_bf16()  # packed exactly where bfloat16 is native


@pytest.mark.slow
def test_answer_with_engine_server_against_distill_serve_matches_the_local_student(server, embedded_dir: Path,
                                                                                  adapter_dir: Path,
                                                                                  tmp_path: Path) -> None:
    """`distill answer --engine server` pointed at `distill serve`: the server reports its weight and
    adapter hashes, so `--adapter DIR` picks the served adapter by hash (no --student-model), and
    greedy answers are the local student's with that adapter, word for word, in the same row shape."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    local, served = tmp_path / "local.jsonl", tmp_path / "served.jsonl"
    common = ["--student", str(embedded_dir), "--adapter", str(adapter_dir), "--max-new-tokens", "12"]
    assert main(["answer", str(prompts), "-o", str(local), *common]) == 0
    before = len(server.app.batcher.batches)
    assert main(["answer", str(prompts), "-o", str(served), *common, "--engine", "server",
                 "--student-url", server.url]) == 0
    local_rows, rows = ([json.loads(line) for line in path.read_text().splitlines()] for path in (local, served))
    assert [r["answer"] for r in rows] == [r["answer"] for r in local_rows]
    assert [r["finish_reason"] for r in rows] == [r["finish_reason"] for r in local_rows]
    assert {m for m, _ in server.app.batcher.batches[before:]} == {"tuned"}  # the adapter, chosen by its hashes
    model, local_model = rows[0]["model"], local_rows[0]["model"]
    assert model["weights_sha256"] == local_model["weights_sha256"]
    assert model["adapter_sha256"] == local_model["adapter_sha256"]
    assert model["path"] == f"{server.url}#tuned"

"""End to end through the CLI: a real student, the real openai SDK, a scripted teacher on a
loopback HTTP server; an offline replay from the cache; a run killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from distill.cli import main
from fakes import between, critique_reply, judge_reply
from loopback_server import LoopbackRequest

PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France?", "reference": "Paris"},
    {"id": "sum", "prompt": "What is 12 plus 30? End with the number.", "reference": {"type": "numeric", "value": 42}},
    {"id": "worse", "prompt": "What is 9 times 9? End with the number.", "reference": {"type": "numeric", "value": 81}},
    {"id": "colour", "prompt": "Name a primary colour."},
    {"id": "sea", "prompt": "Write one sentence about the sea."},
    {"id": "fruits", "prompt": "Answer in lowercase only: name two fruits.", "reference": {"type": "lowercase"}},
    {"id": "capital-again", "prompt": "what is the capital of france"},
    {"id": "sleep", "prompt": "Give one tip for sleeping well."},
]


def teacher_script(request: LoopbackRequest) -> str:
    """Deterministic critiques: some fix, one accepts, one makes it worse, some malformed."""
    user = next(m["content"] for m in request.messages if m["role"] == "user")
    if "winner" in json.dumps(request.schema or {}):
        a, b = between(user, "A"), between(user, "B")
        return judge_reply("A" if "(revised)" in a else "B" if "(revised)" in b else "tie", reason="scripted")
    question, answer = between(user, "USER"), between(user, "ANSWER")
    repaired = any(m["role"] == "assistant" for m in request.messages)

    def revise(text: str) -> str:
        return critique_reply(text, critique="Needs work.", issues=("wrong",))

    if "capital" in question:
        return critique_reply(answer, verdict="acceptable", critique="Correct.", issues=())
    if "12 plus 30" in question:
        return revise("12 + 30 = 42 (revised)")
    if "9 times 9" in question:
        return revise("9 x 9 = 18 (revised)")
    if "primary colour" in question:
        return revise("Red is a primary colour (revised).") if repaired else "Red! (not JSON)"
    if "the sea" in question:
        return "I will not answer in JSON."
    if "fruits" in question:
        return revise("apples and pears (revised)")
    return revise(answer)  # "sleep": an unchanged "revision"


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path



@pytest.fixture
def teacher_env(loopback_teacher):
    loopback_teacher.script(teacher_script)
    return loopback_teacher


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_real_round_then_an_offline_replay_with_zero_teacher_calls(teacher_env, embedded_dir, tmp_path,
                                                                     monkeypatch, capsys) -> None:
    monkeypatch.setenv("DISTILL_STUDENT", str(embedded_dir))
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    args = ["run", str(prompts), "--runs-dir", str(tmp_path / "runs"), "--max-new-tokens", "48", "--chain", "quick"]
    assert main([*args, "--name", "live"]) == 0
    table = capsys.readouterr().out
    live = tmp_path / "runs" / "live"
    rejected = {r["prompt_id"]: r["filter"] for r in read(live / "rejected.jsonl")}
    assert rejected == {"worse": "reference", "sea": "failed",
                        "capital-again": "near_duplicate", "sleep": "unchanged"}
    sft = {r["meta"]["prompt_id"]: r for r in read(live / "sft.jsonl")}
    kept = {pid: r["completion"][0]["content"] for pid, r in sft.items()}
    # the teacher accepts the student's "capital" answer and its check passes: a verified positive
    assert "Paris" in kept.pop("capital")
    assert (sft["capital"]["meta"]["source"], sft["capital"]["meta"]["verified"]) == ("acceptable", True)
    assert kept == {"sum": "12 + 30 = 42 (revised)", "colour": "Red is a primary colour (revised).",
                    "fruits": "apples and pears (revised)"}
    assert {pid: sft[pid]["meta"]["verified"] for pid in kept} == {"sum": True, "colour": False, "fruits": True}
    assert {r["meta"]["prompt_id"] for r in read(live / "prefs.jsonl")} == set(kept)  # positives have no pair
    revisions = {r["prompt_id"]: r for r in read(live / "revisions.jsonl")}
    assert revisions["sea"]["reason"] == "unparseable_reply"
    assert [c["repaired"] for c in read(live / "critiques.jsonl") if c["prompt_id"] == "colour"] == [True]
    manifest = json.loads((live / "manifest.json").read_text())
    assert manifest["models"]["teacher"]["model"] == "gpt-4o-mini"
    assert manifest["teacher_usage"]["critique"]["cache_hits"] == 0
    assert "| critique | 7 | 6 |" in table
    sent = teacher_env.count()
    assert sent > 0 and "sk-loopback-test-key" not in json.dumps(manifest)

    # the same batch again, offline, under another name: every teacher call comes from the cache
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    assert main([*args, "--name", "replay"]) == 0
    assert teacher_env.count() == sent  # zero HTTP requests reached the server
    replay = tmp_path / "runs" / "replay"
    assert (replay / "sft.jsonl").read_text() == (live / "sft.jsonl").read_text()
    usage = json.loads((replay / "manifest.json").read_text())["teacher_usage"]
    assert usage["critique"]["cache_hit_rate"] == 1.0 and usage["filter"]["cache_hit_rate"] == 1.0


def test_offline_misses_are_counted_and_named(teacher_env, tiny_model_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:3])
    code = main(["run", str(prompts), "--name", "off", "--runs-dir", str(tmp_path / "runs"),
                 "--student", str(tiny_model_dir), "--max-new-tokens", "4", "--chain", "quick"])
    err = capsys.readouterr().err
    assert code != 0 and "3 teacher request(s) are not in the cache" in err
    assert "capital" in err and "sum" in err and teacher_env.count() == 0


def test_a_missing_key_fails_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DISTILL_TEACHER", "openai:gpt-4o-mini")
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    assert main(["run", str(prompts), "--name", "nokey", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "nokey" / "answers.jsonl").exists()


def sum_teacher(request: LoopbackRequest) -> str:
    """Revises "What is I plus 30?" to the right sum; the judge prefers revisions."""
    if "winner" in json.dumps(request.schema or {}):
        return teacher_script(request)
    question = between(request.messages[1]["content"], "USER")
    i = int(question.split()[2])
    return json.dumps({"critique": "c", "issues": ["x"], "verdict": "needs_revision",
                       "revision": f"{i} + 30 = {i + 30} (revised)"})


def test_a_killed_run_resumes_with_no_duplicated_or_missing_rows(teacher_env, tiny_model_dir, tmp_path) -> None:
    teacher_env.latency_s = 0.15
    rows = [{"id": f"q{i}", "prompt": f"What is {i} plus 30? End with the number.",
             "reference": {"type": "numeric", "value": i + 30}} for i in range(12)]
    teacher_env.script(sum_teacher)
    prompts = write_prompts(tmp_path / "p.jsonl", rows)
    cmd = [sys.executable, "-m", "distill", "run", str(prompts), "--name", "crash", "--runs-dir", str(tmp_path / "runs"),
           "--student", str(tiny_model_dir), "--max-new-tokens", "4", "--chain", "quick", "--concurrency", "2"]
    env = {**os.environ}
    partial = tmp_path / "runs" / "crash" / "revisions.jsonl.partial"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(partial.read_text().splitlines())
    assert 4 <= done_before < 12 and not (tmp_path / "runs" / "crash" / "sft.jsonl").exists()

    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    run = tmp_path / "runs" / "crash"
    revisions = read(run / "revisions.jsonl")
    assert sorted(r["prompt_id"] for r in revisions) == sorted(r["id"] for r in rows)  # none missing, none twice
    assert len(read(run / "sft.jsonl")) + len(read(run / "rejected.jsonl")) == 12
    assert len(read(run / "answers.jsonl")) == 12
    # no teacher call is repeated, except at most the ones in flight at the moment of the kill
    bodies = Counter(json.dumps(s.body, sort_keys=True) for s in teacher_env.requests)
    repeated = sum(n - 1 for n in bodies.values())
    assert repeated <= 2, f"{repeated} teacher calls were sent twice"

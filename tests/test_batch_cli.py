"""Batch mode end to end through the CLI: `distill run --batch` with a tiny student and the loopback
server's batch endpoints, an offline replay with zero HTTP requests, `--no-wait` with `distill
batch status / collect` and re-runs that submit nothing twice, and `distill batch retry`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from distill.cli import main
from distill.teachers.batch.book import BatchBook, Part
from test_round_e2e import PROMPTS, read, teacher_script, write_prompts



@pytest.fixture
def batch_env(loopback_teacher):
    loopback_teacher.script(teacher_script)
    return loopback_teacher


def run_args(tmp_path: Path, tiny_model_dir: Path, name: str, *extra: str) -> list[str]:
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    return ["run", str(prompts), "--name", name, "--runs-dir", str(tmp_path / "runs"), "--student", str(tiny_model_dir),
            "--max-new-tokens", "4", "--chain", "quick", *extra]


def test_distill_run_batch_then_an_offline_replay_with_zero_requests(batch_env, tiny_model_dir, tmp_path, monkeypatch,
                                                                     capsys) -> None:
    assert main(run_args(tmp_path, tiny_model_dir, "b", "--batch")) == 0
    table = capsys.readouterr().out
    assert batch_env.count("openai") == 0  # no live call
    run = tmp_path / "runs" / "b"
    rejected = {r["prompt_id"]: r["filter"] for r in read(run / "rejected.jsonl")}
    assert rejected.pop("sleep") in ("unchanged", "empty")  # the tiny student's answer is its own revision
    assert rejected == {"capital": "acceptable", "worse": "reference", "sea": "failed",
                        "capital-again": "near_duplicate"}
    assert {r["meta"]["prompt_id"] for r in read(run / "sft.jsonl")} == {"sum", "colour", "fruits"}
    manifest = json.loads((run / "manifest.json").read_text())
    critique = manifest["teacher_usage"]["critique"]
    assert critique["batch_calls"] == critique["teacher_calls"] > 0
    assert critique["cost_at_batch_prices_usd"] == pytest.approx(critique["cost_at_live_prices_usd"] / 2)
    assert manifest["config"]["batch"] is True and manifest["batches"]["by_state"] == {"collected": 4}
    assert "| critique | 7 | 6 | 1 |" in table and "at batch prices" in table

    sent = batch_env.count()
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    assert main(run_args(tmp_path, tiny_model_dir, "replay")) == 0  # another run, from the cache alone
    assert batch_env.count() == sent  # zero HTTP requests of any kind
    assert (tmp_path / "runs" / "replay" / "sft.jsonl").read_text() == (run / "sft.jsonl").read_text()


def test_no_wait_status_collect_and_reruns_pick_up_without_submitting_twice(batch_env, tiny_model_dir, tmp_path,
                                                                             capsys) -> None:
    args = run_args(tmp_path, tiny_model_dir, "nw", "--batch", "--no-wait")
    assert main(args) == 75  # submitted, not waited for
    assert "still running" in capsys.readouterr().err
    book = BatchBook(tmp_path / "runs" / "nw")
    [part] = book.parts()
    assert part.state == "submitted" and part.batch_id
    assert not (tmp_path / "runs" / "nw" / "sft.jsonl").exists()

    batch = ["--runs-dir", str(tmp_path / "runs")]
    assert main(["batch", "status", "nw", *batch]) == 75  # asks the provider: still in progress
    assert "| submitted | in_progress | 7 |" in capsys.readouterr().out
    assert main(["batch", "collect", "nw", *batch]) == 0  # the second check ends it: read into the cache
    assert "7 succeeded" in capsys.readouterr().out

    codes = [main(args) for _ in range(8)]  # each re-run moves the round on by one pass
    assert codes[-1] == 0 and set(codes[:codes.index(0)]) <= {75}
    assert len(read(tmp_path / "runs" / "nw" / "sft.jsonl")) == 3
    manifest = json.loads((tmp_path / "runs" / "nw" / "manifest.json").read_text())
    batches = manifest["batches"]  # the cost of every batch of the run, whichever process collected it
    assert batches["outcomes"] == {"succeeded": 15} and batches["cost_usd"] == \
        pytest.approx(batches["cost_at_live_prices_usd"] / 2)
    assert "provider batches: 4 (15 requests: 15 succeeded)" in capsys.readouterr().out
    sent = Counter(row.custom_id for row in batch_env.batch_rows)
    assert set(sent.values()) == {1}  # no request was ever submitted twice
    creates = [s for s in batch_env.requests if s.endpoint == "openai_batches" and "input_file_id" in s.body]
    assert len(creates) == len(book.parts()) == 4


def test_batch_retry_submits_the_failed_rows_again(batch_env, tiny_model_dir, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_TEACHER_BATCH", "1")  # batch mode from the environment, no flag
    batch_env.batch_script(lambda view: "errored" if "the sea" in view.messages[-1]["content"] else None)
    args = run_args(tmp_path, tiny_model_dir, "rt", "--filters", "acceptable,reference")
    assert main(args) == 0
    run = tmp_path / "runs" / "rt"
    assert {r["prompt_id"]: r["reason"] for r in read(run / "revisions.jsonl") if r["status"] == "failed"} == \
        {"sea": "teacher_batch_errored"}

    batch_env.batch_script(lambda view: None)
    assert main(["batch", "retry", "rt", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "submitted 1 request(s) again" in capsys.readouterr().err
    parts = BatchBook(run).parts()
    assert parts[-1].requests == 1 and parts[-1].outcomes == {"succeeded": 1}
    before = len(batch_env.batch_rows)
    assert main(args) == 0  # the row now finds its answer ("sea" never answers in JSON: one repair batch)
    sea = next(r for r in read(run / "revisions.jsonl") if r["prompt_id"] == "sea")
    assert sea["reason"] == "unparseable_reply" and len(batch_env.batch_rows) == before + 1


@pytest.mark.parametrize("verb", ["status", "collect", "retry"])
def test_batch_commands_never_send_the_key_to_an_endpoint_only_the_run_file_names(verb, loopback_teacher, tmp_path,
                                                                                  capsys) -> None:
    """batches.json is a plain file (copied from another machine, edited): the endpoint it records
    is used only when it is the configured one; otherwise the command refuses, naming both, and
    not one request (so not the API key) reaches the recorded host."""
    from loopback_server import LoopbackServer

    with LoopbackServer() as elsewhere:
        run = tmp_path / "runs" / "moved"
        BatchBook(run).add(Part("b0001-moved", "openai", "openai:gpt-4o-mini", elsewhere.openai_url, 1, 10,
                                state="submitted", batch_id="batch_1"))
        code = main(["batch", verb, "moved", "--runs-dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert elsewhere.count() == 0 and loopback_teacher.count() == 0
        assert code == 2 and elsewhere.openai_url in err and loopback_teacher.openai_url in err

        # the user's own choice on the command line is configuration: then the recorded host is asked
        main(["batch", "status", "moved", "--runs-dir", str(tmp_path / "runs"), "--base-url", elsewhere.openai_url])
        assert elsewhere.count() > 0

"""The Python API (`distill.api`): the README's example executed as written, the command line and the
API writing the same records, keywords resolved and checked like flags, and the gate's metrics
logged to the tracker an adapter was trained with."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

import distill
from distill.cli import main
from distill.errors import ConfigError
from distill.testing import between, critique_reply, judge_reply
from loopback_server import LoopbackRequest

ROOT = Path(__file__).resolve().parents[1]


def revising_teacher(request: LoopbackRequest) -> str:
    """Judges prefer the revision; critiques revise every answer; a plain question gets a plain answer."""
    user = next(m["content"] for m in request.messages if m["role"] == "user")
    if "winner" in json.dumps(request.schema or {}):
        return judge_reply("A" if "(revised)" in between(user, "A") else "B")
    if "<<<ANSWER" not in user:
        return "Red."
    return critique_reply(between(user, "ANSWER").strip() + " (revised)")


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture
def project(loopback_teacher, tiny_model_dir, tmp_path, monkeypatch) -> Path:
    """A working directory with the shipped example prompts, the tiny student and the scripted teacher."""
    loopback_teacher.script(revising_teacher)
    monkeypatch.setenv("DISTILL_STUDENT", str(tiny_model_dir))
    shutil.copytree(ROOT / "prompts" / "examples", tmp_path / "prompts" / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_example_runs_as_written_and_returns_what_the_commands_write(project: Path) -> None:
    printed = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), "README.md", "exec"), scope)
    result, trained, verdict = scope["result"], scope["trained"], scope["verdict"]
    assert scope["reply"].text == "Red."
    written = [json.loads(line) for line in (project / "runs/notebook/sft.jsonl").read_text().splitlines()]
    assert written and [row.to_row() for row in result.summary.sft] == written
    summary = json.loads((project / "runs/notebook/adapter/training.json").read_text())
    assert trained.output_dir == Path("runs/notebook/adapter") and summary["steps"] == trained.steps
    assert summary["data"]["trained"] == len(written)
    assert "checks" in verdict.evaluation.metrics and verdict.decision.reasons
    out = printed.getvalue()
    assert "| answer |" in out and ("promote" in out or "refuse" in out)


def test_the_command_line_and_the_api_write_the_same_training_rows(project: Path) -> None:
    prompts = "prompts/examples/train.jsonl"
    assert main(["run", prompts, "--name", "cli", "--max-new-tokens", "16", "--chain", "quick"]) == 0
    api = distill.run(prompts, name="api", max_new_tokens=16, chain="quick")
    cli_rows = (project / "runs/cli/sft.jsonl").read_text()
    assert cli_rows and cli_rows == (project / "runs/api/sft.jsonl").read_text()
    assert api.summary is not None and api.summary.counts["critique"] == json.loads(
        (project / "runs/cli/manifest.json").read_text())["counts"]["critique"] | {
        "seconds": api.summary.counts["critique"]["seconds"]}


def test_keywords_resolve_like_flags_and_a_typo_is_named(project: Path) -> None:
    (project / "distill.toml").write_text("[run]\nchain = \"quick\"\nmax_new_tokens = 7\n\n[gate]\nmargin = 0.1\n")
    config, _ = distill.api.run_config("x", max_new_tokens=9)
    assert (config.chain, config.generation.max_new_tokens) == ("quick", 9)  # the file, and the keyword over it
    assert distill.api.policy_of({"max_kl": 0.5}).margin == 0.1
    with pytest.raises(ConfigError, match="'max_new_token'.*max_new_tokens"):
        distill.run(["What is 2 + 2?"], name="typo", max_new_token=8)
    with pytest.raises(ConfigError, match="--rounds needs --heldout"):
        distill.run(["What is 2 + 2?"], name="rounds", rounds=2)


def test_a_list_of_prompts_is_validated_like_a_file(project: Path) -> None:
    from distill.errors import InputError

    with pytest.raises(InputError, match=r"prompts\[1\]: .*'prompt'"):
        distill.api.prompts_of(["fine", {"prompt": ""}])
    [a, b] = distill.api.prompts_of(["What is 2 + 2?", {"id": "q", "prompt": "Hi", "reference": "hello"}])
    assert a.text == "What is 2 + 2?" and (b.id, b.reference) == ("q", "hello")


def test_training_rows_given_as_records_train_an_adapter(project: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": f"Say {w}."}], "completion": [{"role": "assistant", "content": w}]}
            for w in ("red", "blue", "green", "cyan")]
    with pytest.raises(ConfigError, match="need an output directory"):
        distill.train(rows)
    result = distill.train(rows, project / "adapter", epochs=1, batch_size=2)
    assert result.examples == 4 and (project / "adapter" / "adapter_model.safetensors").is_file()


def test_the_gate_metrics_go_to_the_tracker_the_adapter_was_trained_with(project: Path) -> None:
    from test_train_tracking import scalars

    pytest.importorskip("tensorboardX")
    rows = [{"prompt": [{"role": "user", "content": f"Say {w}."}], "completion": [{"role": "assistant", "content": w}]}
            for w in ("red", "blue", "green", "cyan")]
    trained = distill.train(rows, project / "adapter", epochs=2, batch_size=2, report_to="tensorboard")
    verdict = distill.evaluate("prompts/examples/heldout.jsonl", trained.output_dir, judge=False, max_new_tokens=8)
    logged = scalars(project / "adapter" / "tracking")
    delta = verdict.evaluation.metrics["checks"]["delta"]
    assert logged["gate/checks_delta"] == [(trained.steps, pytest.approx(delta.mean))]
    assert logged["gate/checks_delta_low"][0][1] == pytest.approx(delta.low)
    assert logged["gate/promoted"] == [(trained.steps, float(verdict.decision.promote))]
    assert "loss" in logged  # the training steps' scalars are still there, beside the gate's

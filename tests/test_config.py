"""One config model: defaults only in the config dataclasses, flags generated from their fields,
`distill.toml` with [run], [teacher], [train] and [gate], and the source of every value."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distill.cli import build_parser, main
from distill.cli.evaluate import policy_of
from distill.cli.run import _config
from distill.cli.answer import generation_params
from distill.cli.train import build_config
from distill.config import settings_of
from distill.errors import ConfigError
from distill.evaluation.config import RoundsConfig
from distill.evaluation.gate import Policy
from distill.records.rundir import RunDir, as_argument
from distill.stages.config import RunConfig
from distill.student.model import GenerationParams
from distill.training.config import TrainConfig


@pytest.fixture(autouse=True)
def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in its own working directory, with no config file or config variable around."""
    from distill.config import cache_dir

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(cache_dir().resolve()))
    for var in ("DISTILL_CONFIG", "DISTILL_OFFLINE", "DISTILL_TEACHER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


RUN = ("run", "p.jsonl", "--name", "x")


# ---------------------------------------------------------------- defaults live in the dataclasses

def test_with_no_flags_and_no_file_every_command_gets_exactly_the_dataclass_defaults() -> None:
    args = parse(*RUN)
    assert _config(args) == RunConfig(name="x")
    assert generation_params(args) == GenerationParams()
    assert policy_of(args) == Policy()
    assert build_config(parse("train", "data.jsonl")) == TrainConfig()


def test_every_generated_flag_defaults_to_none_and_its_help_shows_the_fields_default() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command, classes in (("run", (RunConfig, GenerationParams, RoundsConfig, Policy)), ("train", (TrainConfig,)),
                             ("eval", (Policy,))):
        actions = {a.dest: a for a in commands[command]._actions}
        for cls in classes:
            for setting in settings_of(cls):
                if not setting.cli or setting.name not in actions:
                    continue
                action = actions[setting.name]
                assert action.default is None, f"{command} {setting.flag} repeats a default"
                if setting.kind is not bool and setting.default is not None and not setting.default_text:
                    assert f"(default: {setting.default_shown()}" in action.help, (command, setting.name)


def test_the_flags_keep_their_names() -> None:
    args = parse("train", "d.jsonl", "--lr", "1e-3", "--target-modules", "q_proj, v_proj", "--gradient-checkpointing")
    config = build_config(args)
    assert (config.learning_rate, config.target_modules, config.gradient_checkpointing) == (
        1e-3, ("q_proj", "v_proj"), True)
    args = parse(*RUN, "--no-verified-positives", "--no-wait", "--stages", "facts,instructions", "--filters", "empty",
                 "--dedup-threshold", "0", "--max-new-tokens", "64", "--primary", "judge", "--max-kl", "0.5")
    config = _config(args)
    assert (config.verified_positives, config.batch_wait, config.stages, config.filters) == (
        False, False, ("facts", "instructions"), ("empty",))
    assert config.dedup_threshold is None and config.generation.max_new_tokens == 64
    assert policy_of(args) == Policy(primary="judge", max_kl=0.5)
    evaluate = parse("eval", "h.jsonl", "--adapter", "a", "--max-new-tokens", "32", "--no-judge")
    assert (evaluate.eval_max_new_tokens, evaluate.judge) == (32, False)


def test_the_filter_context_shares_the_run_configs_defaults() -> None:
    from distill.stages.filters import DEFAULT_ORDER, FilterContext

    ctx, run = FilterContext(teacher=None, prompts=None), RunConfig(name="x")
    assert (ctx.keep_acceptable, ctx.verified_positives, ctx.max_length_ratio, ctx.unchanged_threshold) == (
        run.keep_acceptable, run.verified_positives, run.max_length_ratio, run.unchanged_threshold)
    assert DEFAULT_ORDER == run.filters


# ---------------------------------------------------------------- distill.toml and precedence

PROJECT = """\
[run]
chain = "quick"
max_new_tokens = 64
filters = ["empty", "reference"]
offline = true
eval_max_new_tokens = 32

[teacher]
teacher = "none"

[train]
epochs = 2
learning_rate = 1e-3

[gate]
margin = 0.1
"""


def test_distill_toml_sets_every_table_and_flags_win(tmp_path: Path) -> None:
    (tmp_path / "distill.toml").write_text(PROJECT)
    args = parse(*RUN, "--max-new-tokens", "16", "--margin", "0.2")
    config = _config(args)
    assert (config.chain, config.filters, config.offline) == ("quick", ("empty", "reference"), True)
    assert config.generation.max_new_tokens == 16  # the flag over the file
    assert policy_of(args) == Policy(margin=0.2)
    assert build_config(parse("train", "d.jsonl", "--epochs", "5")) == TrainConfig(epochs=5, learning_rate=1e-3)
    assert policy_of(parse("eval", "h.jsonl", "--adapter", "a")) == Policy(margin=0.1)


def test_the_file_beats_the_environment_which_beats_the_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    args = parse(*RUN)
    assert _config(args).offline is True  # the environment over the default
    (tmp_path / "distill.toml").write_text("[run]\noffline = false\n")
    args = parse(*RUN)
    assert _config(args).offline is False  # the file over the environment
    args = parse(*RUN, "--offline")
    assert _config(args).offline is True  # the flag over the file


def test_a_bad_environment_value_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_OFFLINE", "maybe")
    with pytest.raises(ConfigError, match=r"DISTILL_OFFLINE='maybe': expected 1 or 0"):
        _config(parse(*RUN))


def test_config_flag_and_variable_name_the_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "distill.toml").write_text("[run]\nchain = \"from-cwd\"\n")
    other = tmp_path / "other.toml"
    other.write_text("[run]\nchain = \"from-other\"\n")
    assert _config(parse(*RUN)).chain == "from-cwd"
    assert _config(parse(*RUN, "--config", str(other))).chain == "from-other"
    monkeypatch.setenv("DISTILL_CONFIG", str(other))
    assert _config(parse(*RUN)).chain == "from-other"


def test_train_reads_the_toml_named_by_config_and_still_takes_json(tmp_path: Path) -> None:
    toml = tmp_path / "project.toml"
    toml.write_text("[train]\nrank = 4\nseed = 3\n")
    assert build_config(parse("train", "d.jsonl", "--config", str(toml))) == TrainConfig(rank=4, seed=3)
    options = tmp_path / "train.json"
    options.write_text(json.dumps({"rank": 8}))
    (tmp_path / "distill.toml").write_text("[train]\nrank = 4\nseed = 3\n")
    assert build_config(parse("train", "d.jsonl", "--config", str(options))) == TrainConfig(rank=8, seed=3)


@pytest.mark.parametrize("content, message", [
    ("[run]\nchian = \"quick\"\n", "[run] unknown key 'chian'; allowed: "),
    ("[run]\nmax_new_tokens = \"many\"\n", "[run] max_new_tokens = 'many': expected an integer"),
    ("[run]\nfilters = \"empty\"\n", "[run] filters = 'empty': expected a list of strings"),
    ("[train]\nepochs = 2.5\n", "[train] epochs = 2.5: expected an integer"),
    ("[gate]\nprimary = \"vibes\"\n", "[gate] primary = 'vibes': expected one of 'checks', 'judge', 'fidelity'"),
    ("[gate]\nmargin = true\n", "[gate] margin = True: expected a number"),
    ("[runs]\nchain = \"quick\"\n", "unknown table [runs]; allowed tables: [run], [teacher], [train], [gate]"),
    ("chain = \"quick\"\n", "unknown key 'chain'; allowed tables"),
])
def test_a_wrong_key_or_type_names_the_file_table_key_and_what_is_allowed(tmp_path: Path, capsys, content,
                                                                          message) -> None:
    (tmp_path / "distill.toml").write_text(content)
    with pytest.raises(ConfigError) as err:
        _config(parse(*RUN))
    assert str(err.value).startswith(f"{tmp_path / 'distill.toml'}: ") and message in str(err.value)
    assert main(["config"]) == 2  # `distill config` reports it too
    assert message in capsys.readouterr().err


def test_a_typo_in_a_table_the_command_does_not_use_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "distill.toml").write_text("[gate]\nmargn = 0.1\n")
    with pytest.raises(ConfigError, match=r"\[gate\] unknown key 'margn'; allowed: margin, max_general_drop, max_kl"):
        generation_params(parse("answer", "p.jsonl", "-o", "a.jsonl"))


def test_config_names_the_file_only_while_the_command_runs(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[teacher]\nteacher = \"none\"\n")
    assert main(["config", "--config", str(other)]) == 0
    assert "DISTILL_CONFIG" not in os.environ
    from distill.cli.options import config_env

    with config_env(parse(*RUN, "--config", str(other))):
        from distill.teachers.resolve import resolve_settings

        assert resolve_settings().backend == "none"  # the teacher, resolved deep in a round, reads the same file
    assert "DISTILL_CONFIG" not in os.environ


# ---------------------------------------------------------------- distill config

def test_distill_config_shows_every_table_with_its_sources(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "distill.toml").write_text(PROJECT.replace("offline = true\n", ""))
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for title in ("[teacher]", "[run]", "[train]", "[gate]"):
        assert title in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("[")}
    file = str(tmp_path / "distill.toml")
    assert lines["chain"].split()[1:] == ["quick", file]
    assert lines["filters"].split()[1:] == ["empty,reference", file]
    assert lines["offline"].split()[1:] == ["true", "env", "DISTILL_OFFLINE"]
    assert lines["epochs"].split()[1:] == ["2", file] and lines["rank"].split()[1:] == ["16", "default"]
    assert lines["margin"].split()[1:] == ["0.1", file] and lines["primary"].split()[1:] == ["checks", "default"]
    assert lines["teacher"].split()[1:] == ["none:none", file]
    assert main(["config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tables"]["train"]["values"]["learning_rate"] == 1e-3
    assert data["tables"]["run"]["sources"]["max_new_tokens"] == file
    assert data["tables"]["gate"]["sources"]["max_nll_increase"] == "default"


# ---------------------------------------------------------------- run folders

def test_a_bare_name_is_under_runs_dir_and_a_path_needs_a_slash(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    assert RunDir.named("q", Path("runs")).path == Path("runs") / "q"
    assert RunDir.named("./q", Path("runs")).path == Path("q")
    assert RunDir.named(str(tmp_path / "q"), Path("runs")).path == tmp_path / "q"
    for bad in ("", ".", ".."):
        with pytest.raises(Exception, match="is not a run name"):
            RunDir.named(bad, Path("runs"))


def test_a_run_folder_named_in_a_command_to_type_reads_back_as_the_same_folder(tmp_path: Path) -> None:
    """Messages that tell the user what to type (`distill batch status ...`) name the folder so that
    the naming rule finds it again: a round's folder by its path, never by its last part."""
    for folder in (Path("runs") / "q" / "round-2", Path("q"), tmp_path / "q"):
        assert RunDir.named(as_argument(folder), Path("elsewhere")).path == folder


def test_a_round_of_a_run_is_a_folder_inside_it_not_a_name_with_a_slash(tmp_path: Path) -> None:
    config = RunConfig(name="big", runs_dir=tmp_path)
    round_two = config.inside(config.folder.round(2), round=2)
    assert round_two.run_dir == tmp_path / "big" / "round-2" and "/" not in round_two.name
    assert config.inside(config.folder.heldout).run_dir == tmp_path / "big" / "heldout"


def test_the_runs_dir_of_a_named_run_comes_from_the_file_too(tmp_path: Path, capsys) -> None:
    (tmp_path / "distill.toml").write_text("[run]\nruns_dir = \"experiments\"\n")
    assert main(["report", "q"]) == 2
    assert f"{Path('experiments') / 'q'}: no such run folder" in capsys.readouterr().err

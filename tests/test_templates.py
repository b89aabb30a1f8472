"""Templates and principles: content-hash ids, a user's own folder, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distill.errors import ConfigError
from distill.stages.templates import default_prompts_dir, load_prompt_set


@pytest.fixture
def own_prompts(tmp_path: Path) -> Path:
    target = tmp_path / "prompts"
    shutil.copytree(default_prompts_dir() / "templates", target / "templates")
    shutil.copy(default_prompts_dir() / "principles.toml", target / "principles.toml")
    return target


def test_the_shipped_set_loads_with_chains() -> None:
    ps = load_prompt_set()
    assert [p.name for p in ps.chain()] == ["contradictions", "facts", "instructions"]
    assert set(ps.templates) == {"system", "critique", "judge", "repair"}
    assert all("@" in i for i in ps.ids().values())


def test_ids_follow_content_and_env_points_at_a_users_folder(own_prompts: Path, monkeypatch) -> None:
    before = load_prompt_set(own_prompts).templates["critique"].id
    assert before == load_prompt_set().templates["critique"].id  # same content, same id
    path = own_prompts / "templates" / "critique.md"
    path.write_text(path.read_text() + "\nBe kind.\n")
    monkeypatch.setenv("DISTILL_PROMPTS", str(own_prompts))
    assert load_prompt_set().templates["critique"].id != before


def test_render_reports_a_missing_placeholder(own_prompts: Path) -> None:
    path = own_prompts / "templates" / "judge.md"
    path.write_text(path.read_text() + "\n${nonsense}\n")
    judge = load_prompt_set(own_prompts).templates["judge"]
    with pytest.raises(ConfigError, match=r"judge.md: placeholder \$\{nonsense\} has no value"):
        judge.render(conversation="c", answer_a="a", answer_b="b")


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "templates" / "repair.md").unlink(), "template 'repair' is missing"),
    (lambda d: (d / "principles.toml").write_text("[principles.x]\ncritique = 'c'\n"), "principles.x needs"),
    (lambda d: (d / "principles.toml").write_text("[chains]\na = ['zz']\n[principles.x]\ncritique='c'\nrevision='r'\n"),
     "chains.a names unknown principle 'zz'"),
    (lambda d: (d / "principles.toml").write_text("not = [toml"), "invalid TOML"),
])
def test_broken_folders_are_clear_errors(own_prompts: Path, edit, message: str) -> None:
    edit(own_prompts)
    with pytest.raises(ConfigError, match=message):
        load_prompt_set(own_prompts)


def test_unknown_chain_and_stage(own_prompts: Path) -> None:
    ps = load_prompt_set(own_prompts)
    with pytest.raises(ConfigError, match="no chain 'nope'"):
        ps.chain("nope")
    with pytest.raises(ConfigError, match="unknown principle 'nope'"):
        ps.stages(["facts", "nope"])
    assert [p.name for p in ps.stages(["facts"])] == ["facts"]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DISTILL_PROMPTS"):
        load_prompt_set(tmp_path / "nowhere")

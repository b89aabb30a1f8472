"""`distill cache stats|export|import|prune|verify`, driven through the real command line."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from distill.cli import main as cli
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.cache.layer import CachedTeacher
from distill.teachers.cache.store import CacheStore, cache_path


class Echo:
    """The inner teacher: answers with the prompt upper-cased and a raw body like a provider's."""

    def __init__(self, model: str):
        self.backend, self.model = "openai", model

    def identity(self) -> dict[str, str]:
        return {"provider": "openai", "model": self.model}

    async def complete(self, request: Request) -> Completion:
        text = request.messages[-1]["content"].upper()
        return Completion(text=text, finish_reason="stop", usage=Usage(5, 3), model=self.model + "-2024",
                          raw={"id": "c1", "choices": [{"message": {"role": "assistant", "content": text}}],
                               "note": "ünïcode ✓"})

    async def aclose(self) -> None:
        pass


def fill(cache_dir: Path, model: str, template: str, prompts: list[str]) -> None:
    async def run() -> None:
        identity = {"provider": "openai", "model": model}
        async with CachedTeacher(CacheStore(cache_path(cache_dir)), identity, lambda: Echo(model)) as teacher:
            for p in prompts:
                await teacher.complete(Request(messages=({"role": "user", "content": p},), template_ids=(template,)))
    asyncio.run(run())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    cache_dir = tmp_path / "source"
    fill(cache_dir, "gpt-4o-mini", "critique-v1", [f"q{i}" for i in range(30)])
    fill(cache_dir, "gpt-4o", "revise-v1", [f"r{i}" for i in range(10)])
    return cache_dir


def rows(cache_dir: Path) -> set[tuple[object, ...]]:
    store = CacheStore(cache_path(cache_dir))
    try:
        return {e.to_row() for e in store.iter_entries()}
    finally:
        store.close()


@pytest.mark.parametrize("name", ["export.jsonl", "export.jsonl.gz"])
def test_export_import_round_trip_is_exact_and_idempotent(source: Path, tmp_path: Path, name: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    export, target = tmp_path / name, tmp_path / "target"
    assert cli(["cache", "export", str(export), "--cache-dir", str(source)]) == 0
    if name.endswith(".gz"):
        assert export.read_bytes()[:2] == b"\x1f\x8b"
    assert cli(["cache", "import", str(export), "--cache-dir", str(target)]) == 0
    assert "imported 40 new entries" in capsys.readouterr().err
    assert rows(target) == rows(source)
    assert cli(["cache", "import", str(export), "--cache-dir", str(target)]) == 0
    err = capsys.readouterr().err
    assert "imported 0 new entries" in err and "40 were already there (0 with another answer" in err
    assert rows(target) == rows(source)


def test_export_filters_by_model_and_template(source: Path, tmp_path: Path) -> None:
    export = tmp_path / "mini.jsonl"
    assert cli(["cache", "export", str(export), "--model", "openai:gpt-4o-mini", "--cache-dir", str(source)]) == 0
    lines = export.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["format"] == "distill-teacher-cache"
    assert len(lines) == 31 and all(json.loads(line)["model"] == "gpt-4o-mini" for line in lines[1:])


def _tamper(export: Path, line: int, edit: str) -> Path:
    lines = export.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[line - 1])
    if edit == "text":
        row["response"]["text"] = "a better answer, honest"
    else:
        row["request"]["request"]["temperature"] = 1.5
    lines[line - 1] = json.dumps(row, ensure_ascii=False)
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return export


@pytest.mark.parametrize("edit, reason", [("text", "checksum"), ("request", "key does not match")])
def test_import_rejects_a_tampered_entry_and_imports_nothing(source: Path, tmp_path: Path, edit: str, reason: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export.jsonl"
    cli(["cache", "export", str(export), "--cache-dir", str(source)])
    _tamper(export, 5, edit)
    assert cli(["cache", "import", str(export), "--cache-dir", str(tmp_path / "target")]) == 2
    err = capsys.readouterr().err
    assert f"{export}:5:" in err and reason in err and "nothing was imported" in err
    assert rows(tmp_path / "target") == set()
    assert cli(["cache", "import", str(export), "--skip-invalid", "--cache-dir", str(tmp_path / "target")]) == 1
    assert "imported 39 new entries" in capsys.readouterr().err and len(rows(tmp_path / "target")) == 39


def test_import_rejects_a_file_that_is_not_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "prompts.jsonl"
    bogus.write_text('{"id": "q1", "prompt": "hi"}\n')
    assert cli(["cache", "import", str(bogus), "--cache-dir", str(tmp_path)]) == 2
    assert "not a distill cache export" in capsys.readouterr().err


def test_import_keeps_the_local_answer_when_both_differ(source: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export.jsonl"
    cli(["cache", "export", str(export), "--cache-dir", str(source)])
    db = sqlite3.connect(cache_path(source))
    db.execute("DELETE FROM entries WHERE id = 1")
    db.commit()
    db.close()
    other = tmp_path / "other"
    fill(other, "gpt-4o-mini", "critique-v1", ["q0"])  # same key as entry 1 of the export
    db = sqlite3.connect(cache_path(other))
    db.execute("UPDATE entries SET text = 'local', checksum = 'x'")
    db.commit()
    db.close()
    assert cli(["cache", "import", str(export), "--cache-dir", str(other)]) == 0
    assert "1 with another answer: kept the local one" in capsys.readouterr().err


def test_verify_finds_an_edited_entry_and_can_delete_it(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["cache", "verify", "--cache-dir", str(source)]) == 0
    assert "40 entries checked, 0 bad, structure ok" in capsys.readouterr().out
    db = sqlite3.connect(cache_path(source))
    key = db.execute("SELECT key FROM entries WHERE id = 3").fetchone()[0]
    db.execute("UPDATE entries SET text = 'edited' WHERE id = 3")
    db.commit()
    db.close()
    assert cli(["cache", "verify", "--cache-dir", str(source)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {key}: the response does not match its checksum" in out and "1 bad" in out
    assert cli(["cache", "verify", "--delete-bad", "--cache-dir", str(source)]) == 1
    assert cli(["cache", "verify", "--cache-dir", str(source)]) == 0
    assert "39 entries checked, 0 bad" in capsys.readouterr().out


def test_prune_by_template_model_and_age(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["cache", "prune", "--template", "revise-v1", "--dry-run", "--cache-dir", str(source)]) == 0
    assert "would delete 10 entries" in capsys.readouterr().err
    assert len(rows(source)) == 40
    assert cli(["cache", "prune", "--template", "revise-v1", "--cache-dir", str(source)]) == 0
    assert len(rows(source)) == 30
    assert cli(["cache", "prune", "--older-than", "1d", "--cache-dir", str(source)]) == 0
    assert len(rows(source)) == 30
    db = sqlite3.connect(cache_path(source))
    db.execute("UPDATE entries SET created_at = ? WHERE id <= 5", (time.time() - 3 * 86400,))
    db.commit()
    db.close()
    assert cli(["cache", "prune", "--older-than", "2d", "--cache-dir", str(source)]) == 0
    assert len(rows(source)) == 25
    assert cli(["cache", "prune", "--model", "gpt-4o-mini", "--cache-dir", str(source)]) == 0
    assert len(rows(source)) == 0
    assert cli(["cache", "prune", "--cache-dir", str(source)]) == 1
    assert "at least one of" in capsys.readouterr().err


def test_stats_shows_models_templates_and_the_last_runs_hit_rate(source: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fill(source, "gpt-4o", "revise-v1", [f"r{i}" for i in range(10)] + ["new"])  # 10 hits, 1 miss
    assert cli(["cache", "stats", "--cache-dir", str(source)]) == 0
    out = capsys.readouterr().out
    assert "entries   41" in out
    assert "openai:gpt-4o:" in out and "11 requests, hit rate 90.9% (10 hits" in out
    assert "openai:gpt-4o-mini" in out and "critique-v1" in out and "revise-v1" in out
    assert cli(["cache", "stats", "--json", "--cache-dir", str(source)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 41 and stats["last_run"]["misses"] == 1
    assert {t["template"]: t["entries"] for t in stats["by_template"]} == {"critique-v1": 30, "revise-v1": 11}


def test_commands_on_a_missing_cache_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0
    assert "no cache at" in capsys.readouterr().out
    assert cli(["cache", "export", str(tmp_path / "x.jsonl"), "--cache-dir", str(tmp_path)]) == 1
    assert "no cache at" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists() and not cache_path(tmp_path).exists()


def test_gzip_export_is_readable_by_gzip(source: Path, tmp_path: Path) -> None:
    export = tmp_path / "e.jsonl.gz"
    cli(["cache", "export", str(export), "--cache-dir", str(source)])
    with gzip.open(export, "rt", encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == 41


def _edit_line(export: Path, line: int, edit: Any) -> None:
    lines = export.read_text(encoding="utf-8").splitlines()
    lines[line - 1] = edit(lines[line - 1])
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _set(path: tuple[str, ...], value: Any) -> Any:
    def edit(text: str) -> str:
        row = json.loads(text)
        target = row
        for name in path[:-1]:
            target = target[name]
        target[path[-1]] = value
        return json.dumps(row, ensure_ascii=False)
    return edit


@pytest.mark.parametrize("edit, reason", [
    (_set(("backend",), "anthropic"), "backend 'anthropic' is not the one its request names ('openai')"),
    (_set(("model",), "gpt-4o"), "model 'gpt-4o' is not the one its request names ('gpt-4o-mini')"),
    (lambda text: text.replace('"input_tokens": 5', '"input_tokens": 1e400'), "input_tokens"),
    (_set(("response", "usage", "output_tokens"), 3.5), "output_tokens"),
    (_set(("response", "usage", "output_tokens"), True), "output_tokens"),
    (_set(("template_ids",), "critique-v1"), "template_ids"),
    (_set(("template_ids",), [{"id": 1}]), "template_ids"),
    (lambda text: text.replace('"created_at": ', '"created_at": 1e400, "was": '), "created_at"),
])
def test_import_checks_every_column_and_reports_a_malformed_field_by_file_and_line(
        source: Path, tmp_path: Path, edit: Any, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The key covers the request and the checksum the response, not the backend and model
    columns (what stats, export and prune go by): they must be the ones the request names. A field
    of the wrong type or out of range is a FILE:LINE error, like any other, never a traceback."""
    export = tmp_path / "export.jsonl"
    cli(["cache", "export", str(export), "--cache-dir", str(source)])
    _edit_line(export, 7, edit)
    assert cli(["cache", "import", str(export), "--cache-dir", str(tmp_path / "target")]) == 2
    err = capsys.readouterr().err
    assert f"{export}:7:" in err and reason in err and "nothing was imported" in err
    assert rows(tmp_path / "target") == set()

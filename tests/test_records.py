"""Prompt files: whole-file validation with FILE:LINE errors, stable ids, crash-safe JSONL output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import InputError
from distill.records.files import run_lock, write_jsonl
from distill.records.ids import content_hash
from distill.records.jsonl import JsonlSink
from distill.records.prompts import Prompt, read_prompts


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_prompt_and_messages_rows(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"id": "a", "prompt": "What is 2+2?", "reference": {"type": "numeric", "value": 4}}),
        "",
        json.dumps({"id": 7, "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}], "meta": {"k": 1}}),
    ])
    a, b = read_prompts(f)
    assert (a.id, a.text, a.checks[0].type) == ("a", "What is 2+2?", "numeric")
    assert (b.id, b.text, b.meta, len(b.messages)) == ("7", "Hi", {"k": 1}, 2)


def test_every_bad_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "bad.jsonl", [
        json.dumps({"id": "ok", "prompt": "fine"}),
        "{not json",
        json.dumps({"id": "x"}),
        json.dumps({"id": "y", "prompt": "   "}),
        json.dumps({"id": "z", "messages": [{"role": "robot", "content": "hi"}]}),
        json.dumps({"id": "w", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        json.dumps({"id": "r", "prompt": "q", "reference": {"type": "numeric"}}),
        json.dumps({"id": "s", "prompt": "q", "reference": {"type": "telepathy"}}),
        json.dumps({"id": "t", "prompt": "q", "reference": {"type": "regex", "pattern": "("}}),
        json.dumps({"id": "ok", "prompt": "again"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": True, "prompt": "q"}),
        json.dumps({"id": "m", "prompt": "q", "meta": "not an object"}),
    ])
    with pytest.raises(InputError) as err:
        read_prompts(f)
    message = str(err.value)
    expected = {
        2: "invalid JSON", 3: "exactly one of 'prompt'", 4: "field 'prompt'", 5: "messages[0].role",
        6: "last message must have role 'user'", 7: "needs field 'value'", 8: "unknown check 'telepathy'",
        9: "not a valid regular expression", 10: "duplicate id 'ok' (first on line 1)",
        11: "expected a JSON object", 12: "field 'id'", 13: "field 'meta'",
    }
    for line, reason in expected.items():
        assert f"{f}:{line}: " in message and reason in message, (line, reason, message)
    assert message.startswith("12 bad line(s)")
    assert f"{f}:1:" not in message


def test_a_lone_surrogate_is_rejected_at_load_time_with_file_and_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"id": "pair", "prompt": "a smile \U0001F600"}),  # written as the escaped pair: valid
        '{"id": "half", "prompt": "half a smile \\ud83d"}',
        '{"id": "deep", "messages": [{"role": "user", "content": "x \\udfff"}]}',
        '{"id": "key", "prompt": "q", "meta": {"\\udc80": 1}}',
    ])
    assert "\\ud83d\\ude00" in f.read_text()
    with pytest.raises(InputError) as err:
        read_prompts(f)
    message = str(err.value)
    assert message.startswith("3 bad line(s)") and f"{f}:1:" not in message
    assert f"{f}:2: field 'prompt': a lone surrogate (\\ud83d at character 13) is not valid Unicode" in message
    assert f"{f}:3: field 'messages[0].content': a lone surrogate (\\udfff" in message
    assert f"{f}:4: a key of field 'meta': a lone surrogate (\\udc80" in message


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty"),
    (b"\n  \n", "the file is empty"),
    (b'{"prompt": "caf\xe9"}\n', "not UTF-8"),
])
def test_empty_and_non_utf8_files(tmp_path: Path, content: bytes, reason: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_bytes(content)
    with pytest.raises(InputError, match=reason):
        read_prompts(f)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        read_prompts(tmp_path)


def test_rows_without_id_get_a_stable_content_id(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "one"}), json.dumps({"prompt": "two"})])
    first = [p.id for p in read_prompts(f)]
    again = [p.id for p in read_prompts(f)]
    assert first == again and len(set(first)) == 2 and all(i.startswith("p-") for i in first)
    # the same content written another way (messages form, other key order) gets the same id
    g = write_lines(tmp_path / "q.jsonl", ['{"messages": [{"content": "one", "role": "user"}]}'])
    assert read_prompts(g)[0].id == first[0]
    assert Prompt.from_text("one").id == first[0]


def test_identical_content_without_ids_is_a_duplicate(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "same"})] * 2)
    with pytest.raises(InputError, match=":2: duplicate id"):
        read_prompts(f)


def test_content_hash_ignores_key_order() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_sink_resumes_and_drops_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    sink = JsonlSink(out)
    sink.write([{"id": "1", "v": 1}, {"id": "2", "v": 2}])
    sink.close()
    with sink.partial.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "3", "v"')  # the process died mid-write
    assert not out.exists()
    again = JsonlSink(out)
    assert set(again.done) == {"1", "2"}
    again.write([{"id": "3", "v": 3}])
    again.commit(order=["3", "1", "2"])
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["3", "1", "2"]
    assert not again.partial.exists()


def test_sink_keeps_every_valid_row_and_reports_each_bad_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text('{"id": "1", "v": 1}\n{"id": "2", "v"\n{"id": "3", "v": 3}\n["no id"]\n'
                       '{"id": "4", "v": 4}\n{"id": "5", "v"', encoding="utf-8")
    sink = JsonlSink(out)
    assert sink.done == {"1": {"id": "1", "v": 1}, "3": {"id": "3", "v": 3}, "4": {"id": "4", "v": 4}}
    assert [line.split(": ", 1)[0] for line in sink.skipped] == [f"{partial}:2", f"{partial}:4", f"{partial}:6"]
    assert "torn write" in sink.skipped[2]
    err = capsys.readouterr().err
    assert all(f"{partial}:{n}: " in err for n in (2, 4, 6))
    sink.write([{"id": "2", "v": 2}, {"id": "5", "v": 5}])  # appended on a clean line
    sink.close()
    assert [json.loads(x)["id"] for x in partial.read_text().splitlines()] == ["1", "3", "4", "2", "5"]
    assert JsonlSink(out).skipped == []


LOCK_AND_EXIT = "import sys\nfrom distill.records.files import run_lock\nwith run_lock(sys.argv[1]):\n    pass"


def test_run_lock_keeps_a_second_process_off_the_run_and_names_the_first(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    with run_lock(run):
        other = subprocess.run([sys.executable, "-c", LOCK_AND_EXIT, str(run)], capture_output=True, text=True)
        assert other.returncode != 0 and "RunInUse" in other.stderr
        assert f"in use by process {os.getpid()} on " in other.stderr
    again = subprocess.run([sys.executable, "-c", LOCK_AND_EXIT, str(run)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # released when the block ends


def test_write_jsonl_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    write_jsonl(out, [{"id": 1}])

    def broken():
        yield {"id": 2}
        raise RuntimeError("crash while producing rows")

    with pytest.raises(RuntimeError):
        write_jsonl(out, broken())
    assert out.read_text() == '{"id": 1}\n'


def test_sink_can_reuse_a_finished_file_from_an_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"id": "1", "v": 1}, {"id": "2", "v": 2}])
    sink = JsonlSink(out, reuse_finished=True)
    assert set(sink.done) == {"1", "2"}
    sink.write([{"id": "3", "v": 3}])
    sink.commit(order=["1", "2", "3"])
    assert [json.loads(x)["v"] for x in out.read_text().splitlines()] == [1, 2, 3]
    out.write_bytes(b"\xff not utf-8")
    assert JsonlSink(out, reuse_finished=True).done == {}  # unreadable: redo rather than trust it

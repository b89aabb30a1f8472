"""Self-training: samples that pass their check train the student, majority answers where no check
exists, and `--teacher none` / `--self-first` rounds that call the teacher only where needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from distill.stages import self_training
from distill.stages.round import RunConfig, critique_answers, no_teacher
from distill.stages.self_training import SelfPolicy
from fakes import ScriptedTeacher, critique_reply, is_judge, judge_reply, quoted_answer

LOWER = {"type": "lowercase"}


def samples(pid: str, texts: list[str], reference: Any = None, finish: list[str] | None = None) -> list[dict]:
    rows = []
    for k, text in enumerate(texts):
        row = {"id": f"a-{pid}-{k}", "prompt_id": pid, "sample": k, "answer": text,
               "finish_reason": (finish or ["stop"] * len(texts))[k],
               "messages": [{"role": "user", "content": f"question {pid}"}]}
        if reference is not None:
            row["reference"] = reference
        rows.append(row)
    return rows


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_passing_samples_become_rows_and_pairs_with_failing_ones() -> None:
    rows = samples("q", ["Paris", "paris is the capital", "Paris!", "paris is the capital", "paris, france"], LOWER)
    out = self_training.select(rows, SelfPolicy(keep=2))
    assert [r.text for r in out.sft] == ["paris is the capital", "paris, france"]
    assert all(r.meta["source"] == "self" and r.meta["verified"] for r in out.sft)
    assert out.pass_rates["q"] == 0.6 and not out.unresolved
    assert [(p.chosen, p.rejected) for p in out.prefs] == [
        ("paris is the capital", "Paris"), ("paris, france", "Paris!")]
    assert out.prefs[0].meta["rejected_fails"] == ["lowercase"]


def test_a_prompt_no_sample_solves_is_unresolved_with_the_reason() -> None:
    out = self_training.select(samples("q", ["Paris", "PARIS"], LOWER))
    assert not out.sft and "none of 2 samples passes its check (e.g. fails lowercase)" in out.unresolved["q"]


def test_a_sample_cut_off_at_the_token_limit_is_never_a_target() -> None:
    out = self_training.select(samples("q", ["paris is", "Paris"], LOWER, finish=["length", "stop"]))
    assert not out.sft and "q" in out.unresolved


def test_without_a_reference_the_majority_is_kept_above_the_agreement_threshold() -> None:
    agree = samples("a", ["The answer is 12.", "It is 12", "12", "I think 13"])
    split = samples("b", ["Blue.", "Green.", "Red.", "Blue."])
    out = self_training.select(agree + split, SelfPolicy(min_agreement=0.6))
    assert [r.meta["prompt_id"] for r in out.sft] == ["a"]
    assert out.sft[0].text == "The answer is 12." and out.sft[0].meta["agreement"] == 0.75
    assert out.sft[0].meta["source"] == "self_consistent" and not out.sft[0].meta["verified"]
    assert "agree 50% of the time" in out.unresolved["b"]


def test_none_is_a_teacher_name() -> None:
    assert no_teacher("none") and not no_teacher("local:default")


# ---------------------------------------------------------------- whole rounds

ANSWERS = (samples("solved", ["Paris", "paris"], LOWER) + samples("unsolved", ["Rome", "ROME"], LOWER)
           + samples("free", ["Hi.", "Hi."]))


def test_teacher_none_round_self_trains_and_rejects_what_nothing_verifies(tmp_path: Path) -> None:
    cfg = RunConfig(name="self", runs_dir=tmp_path, teacher="none")
    summary = critique_answers(cfg, ANSWERS)
    sft = read(cfg.run_dir / "sft.jsonl")
    assert [(r["meta"]["prompt_id"], r["meta"]["source"]) for r in sft] == [
        ("solved", "self"), ("free", "self_consistent")]
    assert [r["meta"]["prompt_id"] for r in read(cfg.run_dir / "prefs.jsonl")] == ["solved"]
    [rejected] = read(cfg.run_dir / "rejected.jsonl")
    assert rejected["prompt_id"] == "unsolved" and rejected["stage"] == "self" and rejected["filter"] == "unverified"
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    assert manifest["models"]["teacher"] is None and manifest["models"]["teacher_name"] == "none:none"
    assert manifest["dataset"] == {"sft": 2, "prefs": 1, "by_source": {"self_verified": 1, "self_consistent": 1}}
    table = summary.table()
    assert "| self | 3 | 2 |" in table and "critique" not in table
    assert "student samples that pass their check 1" in table and "unverified 1" in table


def test_self_first_asks_the_teacher_only_where_no_sample_passes(tmp_path: Path) -> None:
    def script(request) -> str:
        if is_judge(request):
            return judge_reply("A" if quoted_answer(request, "A") == "rome" else "B")
        return critique_reply(quoted_answer(request).lower())

    teacher = ScriptedTeacher(script)
    cfg = RunConfig(name="first", runs_dir=tmp_path, self_first=True, stages=("facts",))
    critique_answers(cfg, ANSWERS, teacher=teacher)
    assert {r.prompt_id for r in teacher.requests} == {"unsolved"}
    sft = {r["meta"]["prompt_id"]: r["meta"] for r in read(cfg.run_dir / "sft.jsonl")}
    assert sft["solved"]["source"] == "self" and sft["free"]["source"] == "self_consistent"
    assert sft["unsolved"]["source"] == "revision" and sft["unsolved"]["verified"] is True


def test_rounds_with_teacher_none_answer_heldout_greedily_and_need_no_teacher(peaked_model_dir, tmp_path,
                                                                             capsys) -> None:
    from distill.cli import main

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Question {i}?", "reference": {"type": "lowercase"}})
                             + "\n" for i in range(4)), encoding="utf-8")
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Held-out {i}?", "reference": "yes"}) + "\n"
                               for i in range(3)), encoding="utf-8")
    code = main(["run", str(train), "--name", "self", "--runs-dir", str(tmp_path / "runs"), "--teacher", "none",
                 "--student", str(peaked_model_dir), "--samples", "3", "--temperature", "1.0", "--max-new-tokens", "4",
                 "--rounds", "1", "--heldout", str(heldout), "--eval-max-new-tokens", "4", "--dedup-threshold", "0"])
    assert code == 0
    root = tmp_path / "runs" / "self"
    held = read(root / "heldout" / "answers.jsonl")
    assert len(held) == 3 and all(r["generation"]["temperature"] == 0 and r["sample"] == 0 for r in held)
    assert not (root / "heldout" / "revisions.jsonl").exists()  # no teacher: nothing to revise
    assert len(read(root / "round-1" / "answers.jsonl")) == 12  # 4 prompts x 3 samples
    # a random model never ends its turn within 4 tokens: no complete sample, nothing learned, and it says so
    [record] = json.loads((root / "rounds.json").read_text())["rounds"]
    assert record["decision"]["promote"] is False and "nothing new to learn" in record["decision"]["reasons"][0]
    assert record["rejected"] == {"unverified": 4}
    assert (record["counts"]["self"]["in"], record["counts"]["self"]["out"]) == (4, 0)
    assert "round 1 refused" in capsys.readouterr().out


def test_a_sample_stopped_early_is_never_the_rejected_side_of_a_pair() -> None:
    rows = samples("q", ["paris is the capital", "Paris", "paris, Fr", "PARIS IS"], LOWER,
                   finish=["stop", "failed", "failed", "stop"])
    out = self_training.select(rows, SelfPolicy(keep=2))
    assert [r.text for r in out.sft] == ["paris is the capital"]
    assert [(p.chosen, p.rejected) for p in out.prefs] == [("paris is the capital", "PARIS IS")]
    only_stopped = self_training.select(samples("q", ["paris", "Paris"], LOWER, finish=["stop", "failed"]))
    assert len(only_stopped.sft) == 1 and not only_stopped.prefs


def test_a_round_with_no_teacher_stops_samples_that_fail_for_good(peaked_model_dir, tmp_path: Path) -> None:
    from distill.records.prompts import read_prompts
    from distill.stages.round import run_round
    from distill.student.model import GenerationParams

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Question {i}?", "reference": {"type": "lowercase"}})
                            + "\n" for i in range(3)), encoding="utf-8")
    params = GenerationParams(samples=4, temperature=1.0, max_new_tokens=16)
    stopping = RunConfig(name="stop", runs_dir=tmp_path, teacher="none", student=str(peaked_model_dir),
                         generation=params)
    run_round(stopping, read_prompts(path))
    rows = read(stopping.run_dir / "answers.jsonl")
    assert len(rows) == 12 and all(r["generation"]["stop_failing"] for r in rows)
    failed = [r for r in rows if r["finish_reason"] == "failed"]
    assert failed and all(any(c.isupper() for c in r["answer"]) for r in failed)
    whole = RunConfig(name="whole", runs_dir=tmp_path, teacher="none", student=str(peaked_model_dir),
                      generation=params, self_stop=False)
    run_round(whole, read_prompts(path))
    rows = read(whole.run_dir / "answers.jsonl")
    assert len(rows) == 12 and not any(r["finish_reason"] == "failed" or "stop_failing" in r["generation"] for r in rows)

"""A whole round with a scripted teacher at the seam: artefacts, filters, accounting, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.records.prompts import Prompt, parse_prompt, read_answers
from distill.stages.round import RunConfig, critique_answers, run_round
from distill.student.model import GenerationParams
from fakes import ScriptedTeacher, critique_reply, is_judge, judge_reply, quoted_answer

ROWS = [
    {"id": "fix", "prompt": "What is 6 times 7? End with the number.", "reference": {"type": "numeric", "value": 42}},
    {"id": "ok", "prompt": "Say hello."},
    {"id": "worse", "prompt": "What is 5 plus 5?", "reference": {"type": "numeric", "value": 10}},
    {"id": "broken", "prompt": "Name a colour."},
    {"id": "dup", "prompt": "what is 6 times 7? end with the number"},
    {"id": "samey", "prompt": "Name a fruit."},
]


def script(request) -> str:
    if is_judge(request):
        a, b = quoted_answer(request, "A"), quoted_answer(request, "B")
        return judge_reply("A" if "42" in a else "B" if "42" in b else "tie")
    answer = quoted_answer(request)
    return {
        "fix": critique_reply("6 x 7 = 42") if "42" not in answer else critique_reply(answer, verdict="acceptable"),
        "ok": critique_reply(answer, verdict="acceptable"),
        "worse": critique_reply("5 + 5 = 11"),
        "broken": "I refuse to use JSON.",
        "samey": critique_reply(answer + " "),
    }[request.prompt_id]


def config(tmp_path: Path, tiny_model_dir: Path, **extra) -> RunConfig:
    extra.setdefault("generation", GenerationParams(max_new_tokens=6))
    return RunConfig(name="r1", runs_dir=tmp_path / "runs", student=str(tiny_model_dir),
                     stages=("facts", "instructions"), **extra)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def prompts() -> list[Prompt]:
    return [parse_prompt(r) for r in ROWS]


def test_a_round_writes_every_artefact_and_accounts_for_every_row(tmp_path, tiny_model_dir, prompts) -> None:
    teacher = ScriptedTeacher(script)
    cfg = config(tmp_path, tiny_model_dir)
    summary = run_round(cfg, prompts, teacher=teacher)
    run = cfg.run_dir
    answers = read(run / "answers.jsonl")
    assert [a["prompt_id"] for a in answers] == ["fix", "ok", "worse", "broken", "samey"]  # dup dropped first
    revisions = {r["prompt_id"]: r for r in read(run / "revisions.jsonl")}
    assert revisions["fix"]["revision"] == "6 x 7 = 42" and revisions["fix"]["verdict"] == "needs_revision"
    assert revisions["broken"]["status"] == "failed" and revisions["broken"]["reason"] == "unparseable_reply"
    critiques = read(run / "critiques.jsonl")
    fix_stages = [c for c in critiques if c["prompt_id"] == "fix"]
    assert [c["principle"] for c in fix_stages] == ["facts", "instructions"]
    assert fix_stages[1]["input"] == fix_stages[0]["revision"]  # each stage critiques the previous output
    assert all(c["template_ids"] and c["round"] == 1 for c in critiques)

    rejected = {r["prompt_id"]: r for r in read(run / "rejected.jsonl")}
    assert {k: rejected[k]["filter"] for k in ("dup", "worse", "broken")} == {
        "dup": "near_duplicate", "worse": "reference", "broken": "failed"}
    assert set(rejected) == {"dup", "ok", "worse", "broken", "samey"}  # every row accounted for
    assert all(r["reason"] for r in rejected.values())

    [sft] = read(run / "sft.jsonl")
    assert sft["prompt"] == [{"role": "user", "content": ROWS[0]["prompt"]}]
    assert sft["completion"] == [{"role": "assistant", "content": "6 x 7 = 42"}]
    assert sft["meta"]["prompt_id"] == "fix" and sft["meta"]["judge"] == ["revision", "revision"]
    [pref] = read(run / "prefs.jsonl")
    assert pref["chosen"][0]["content"] == "6 x 7 = 42" and pref["rejected"][0]["content"] == answers[0]["answer"]

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["prompts"] == {"in": 6, "out": 5}
    assert manifest["counts"]["critique"] == {"in": 5, "out": 4}
    assert manifest["counts"]["filter"] == {"in": 4, "out": 1}
    assert sum(manifest["rejected_by_filter"].values()) == 5
    assert manifest["teacher_usage"]["critique"]["teacher_calls"] == len([r for r in teacher.requests if not is_judge(r)])
    assert manifest["teacher_usage"]["critique"]["failures"] == {"unparseable_reply": 1}
    assert manifest["models"]["student"]["weights_sha256"] and manifest["templates"]["critique"].startswith("critique@")
    assert "| critique | 5 | 4 |" in summary.table()


def answer_rows(texts: dict[str, str]) -> list[dict]:
    by_id = {r["id"]: r for r in ROWS}
    return [{"id": f"a-{pid}", "prompt_id": pid, "sample": 0, "answer": text,
             "messages": [{"role": "user", "content": by_id[pid]["prompt"]}],
             **({"reference": by_id[pid]["reference"]} if "reference" in by_id[pid] else {})}
            for pid, text in texts.items()]


def test_filters_in_a_round_name_each_drop(tmp_path) -> None:
    answers = answer_rows({"fix": "It is 41.", "ok": "Hello!", "worse": "10", "broken": "Red.",
                           "samey": "An apple."})
    cfg = RunConfig(name="r", runs_dir=tmp_path, stages=("facts",))
    critique_answers(cfg, answers, teacher=ScriptedTeacher(script))
    rejected = {r["prompt_id"]: r["filter"] for r in read(cfg.run_dir / "rejected.jsonl")}
    assert rejected == {"ok": "acceptable", "worse": "reference", "broken": "failed", "samey": "unchanged"}
    assert [r["meta"]["prompt_id"] for r in read(cfg.run_dir / "sft.jsonl")] == ["fix"]


def test_a_rerun_resumes_without_redoing_finished_rows(tmp_path, tiny_model_dir, prompts) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    run_round(cfg, prompts, teacher=ScriptedTeacher(script))
    first = (cfg.run_dir / "sft.jsonl").read_text()
    again = ScriptedTeacher(script)
    run_round(cfg, prompts, teacher=again)
    critique_calls = [r for r in again.requests if not is_judge(r)]
    # only the failed row is tried again (its request + one repair); finished rows are not redone
    assert {r.prompt_id for r in critique_calls} == {"broken"} and len(critique_calls) == 2
    assert (cfg.run_dir / "sft.jsonl").read_text() == first
    assert len(read(cfg.run_dir / "revisions.jsonl")) == 5


def critique_calls(teacher: ScriptedTeacher) -> set[str]:
    return {r.prompt_id for r in teacher.requests if not is_judge(r)}


def test_an_edited_prompt_or_reference_is_answered_and_revised_again(tmp_path, tiny_model_dir, prompts) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    run_round(cfg, prompts, teacher=ScriptedTeacher(script))
    worse = {"id": "worse", "prompt": "What is 5 plus 6?", "reference": {"type": "numeric", "value": 11}}
    edited = [parse_prompt({**ROWS[0], "reference": "42"}), prompts[1], parse_prompt(worse), *prompts[3:]]
    again = ScriptedTeacher(script)
    run_round(cfg, edited, teacher=again)
    answers = {a["prompt_id"]: a for a in read(cfg.run_dir / "answers.jsonl")}
    revisions = {r["prompt_id"]: r for r in read(cfg.run_dir / "revisions.jsonl")}
    for row in (answers, revisions):
        assert row["worse"]["messages"] == [{"role": "user", "content": "What is 5 plus 6?"}]
        assert row["worse"]["reference"] == {"type": "numeric", "value": 11} and row["fix"]["reference"] == "42"
    # the two edited prompts are critiqued again (and the failed row retried); the rest is reused
    assert critique_calls(again) == {"fix", "worse", "broken"}


def test_an_edited_template_or_teacher_token_limit_revises_again(tmp_path) -> None:
    from dataclasses import replace
    import shutil

    from distill.stages.templates import default_prompts_dir

    prompts_dir = tmp_path / "prompts"
    shutil.copytree(default_prompts_dir(), prompts_dir)
    answers = answer_rows({"fix": "It is 41.", "ok": "Hello!"})
    cfg = RunConfig(name="r", runs_dir=tmp_path / "runs", stages=("facts",), prompts_dir=str(prompts_dir))

    def rerun(**changes) -> set[str]:
        teacher = ScriptedTeacher(script)
        critique_answers(replace(cfg, **changes), answers, teacher=teacher)
        return critique_calls(teacher)

    assert rerun() == {"fix", "ok"}
    assert rerun() == set()  # nothing changed: every revision is reused
    assert rerun(teacher_max_tokens=2048) == {"fix", "ok"}
    critique = prompts_dir / "templates" / "critique.md"
    critique.write_text(critique.read_text() + "\nBe strict.\n")
    assert rerun(teacher_max_tokens=2048) == {"fix", "ok"}
    assert rerun(teacher_max_tokens=2048) == set()


def test_a_reply_nested_too_deeply_fails_its_row_only(tmp_path) -> None:
    def nested(request) -> str:
        return "[" * 1000 if request.prompt_id == "broken" else script(request)

    answers = answer_rows({"fix": "It is 41.", "broken": "Red.", "ok": "Hello!"})
    cfg = RunConfig(name="r", runs_dir=tmp_path, stages=("facts",))
    for _ in range(2):  # and again on a re-run, where the same replies come back (as from the cache)
        critique_answers(cfg, answers, teacher=ScriptedTeacher(nested))
        revisions = {r["prompt_id"]: r for r in read(cfg.run_dir / "revisions.jsonl")}
        assert {k: r["status"] for k, r in revisions.items()} == {"fix": "ok", "broken": "failed", "ok": "ok"}
        assert revisions["broken"]["reason"] == "unparseable_reply"
        assert "nested too deeply" in revisions["broken"]["detail"]


def test_dedup_keeps_distinct_conversations_and_distinct_wordless_prompts() -> None:
    from distill.stages.round import dedup_stage

    rows = [{"id": "prime", "messages": [{"role": "user", "content": "Is 7 a prime number?"},
                                         {"role": "assistant", "content": "Yes."},
                                         {"role": "user", "content": "Are you sure?"}]},
            {"id": "paris", "messages": [{"role": "user", "content": "Is Paris in Italy?"},
                                         {"role": "assistant", "content": "Yes."},
                                         {"role": "user", "content": "Are you sure?"}]},
            {"id": "q", "prompt": "???"}, {"id": "bang", "prompt": "!!!"}, {"id": "q-again", "prompt": "???"}]
    kept, rejected = dedup_stage([parse_prompt(r) for r in rows], 0.9)
    assert [p.id for p in kept] == ["prime", "paris", "q", "bang"]
    assert [(r.ids["prompt_id"], r.reason) for r in rejected] == [("q-again", "near-duplicate of prompt 'q'")]


def test_a_second_process_on_the_same_run_fails_fast_naming_the_first(tmp_path, tiny_model_dir, prompts) -> None:
    import os

    from distill.errors import RunInUse
    from distill.records.files import run_lock

    cfg = config(tmp_path, tiny_model_dir)
    teacher = ScriptedTeacher(script)
    with run_lock(cfg.run_dir):  # as another process running the same round would
        with pytest.raises(RunInUse, match=f"in use by process {os.getpid()} on "):
            run_round(cfg, prompts, teacher=teacher)
        with pytest.raises(RunInUse, match=f"in use by process {os.getpid()} on "):
            critique_answers(cfg, answer_rows({"fix": "It is 41."}), teacher=teacher)
    assert teacher.requests == [] and not list(cfg.run_dir.glob("*.jsonl*"))  # nothing done, nothing written


def test_keep_acceptable_adds_positive_examples_without_prefs(tmp_path) -> None:
    cfg = RunConfig(name="r", runs_dir=tmp_path, stages=("facts",), keep_acceptable=True)
    critique_answers(cfg, answer_rows({"fix": "It is 41.", "ok": "Hello!"}), teacher=ScriptedTeacher(script))
    sources = {r["meta"]["prompt_id"]: r["meta"]["source"] for r in read(cfg.run_dir / "sft.jsonl")}
    assert sources == {"fix": "revision", "ok": "acceptable"}
    assert len(read(cfg.run_dir / "prefs.jsonl")) == 1


def test_critique_command_path_starts_from_an_answers_file(tmp_path, tiny_model_dir, prompts) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    run_round(cfg, prompts, teacher=ScriptedTeacher(script))
    answers = read_answers(cfg.run_dir / "answers.jsonl")
    cfg2 = RunConfig(name="r2", runs_dir=tmp_path / "runs", stages=("facts", "instructions"))
    critique_answers(cfg2, answers, teacher=ScriptedTeacher(script))
    assert read(cfg2.run_dir / "sft.jsonl")[0]["completion"][0]["content"] == "6 x 7 = 42"


def test_self_consistency_skips_prompts_the_student_agrees_on(tmp_path, tiny_model_dir, prompts) -> None:
    cfg = config(tmp_path, tiny_model_dir, skip_consistent=0.5,
                 generation=GenerationParams(max_new_tokens=4, temperature=0.001, samples=3, seed=1))
    run_round(cfg, prompts[:2], teacher=ScriptedTeacher(script))
    answers = read(cfg.run_dir / "answers.jsonl")
    assert len(answers) == 6 and sorted({a["sample"] for a in answers}) == [0, 1, 2]
    skipped = [r for r in read(cfg.run_dir / "rejected.jsonl") if r["filter"] == "consistent"]
    # near-greedy sampling: the samples agree, so both prompts are skipped and the teacher is not asked
    assert {r["prompt_id"] for r in skipped} == {"fix", "ok"} and "100%" in skipped[0]["reason"]


def test_verified_positives_are_kept_by_default_and_can_be_turned_off(tmp_path) -> None:
    answers = answer_rows({"fix": "6 x 7 = 42", "ok": "Hello!"})  # both accepted; only "fix" has a check
    cfg = RunConfig(name="r", runs_dir=tmp_path, stages=("facts",))
    summary = critique_answers(cfg, answers, teacher=ScriptedTeacher(script))
    [row] = read(cfg.run_dir / "sft.jsonl")
    assert row["meta"]["prompt_id"] == "fix" and row["meta"]["source"] == "acceptable" and row["meta"]["verified"]
    assert row["meta"]["positive"] == "verified" and not (cfg.run_dir / "prefs.jsonl").read_text()
    assert "accepted answers that pass their check 1" in summary.table()
    [rejected] = read(cfg.run_dir / "rejected.jsonl")
    assert rejected["prompt_id"] == "ok" and "unverified" in rejected["reason"]
    off = RunConfig(name="off", runs_dir=tmp_path, stages=("facts",), verified_positives=False)
    critique_answers(off, answers, teacher=ScriptedTeacher(script))
    assert not (off.run_dir / "sft.jsonl").read_text()


def test_a_positive_cut_at_the_token_limit_is_unverified_and_trained_without_an_end_of_turn(tmp_path) -> None:
    # the student's answer stopped at its token limit mid-sentence; it passes its check and the
    # teacher accepts it. The check saw only part of the answer (the words never written could break a
    # count or a limit), so it verifies nothing: dropped by default, as self-training drops a cut sample.
    # Kept with --keep-acceptable, it is trained without an end-of-turn token there: with one, the
    # student would learn to stop mid-sentence.
    from distill.training.examples import parse_example

    [cut] = answer_rows({"fix": "6 x 7 = 42, because six sevens"})
    cfg = RunConfig(name="r", runs_dir=tmp_path, stages=("facts",))
    critique_answers(cfg, [{**cut, "finish_reason": "length"}], teacher=ScriptedTeacher(script))
    [revision] = read(cfg.run_dir / "revisions.jsonl")
    assert revision["original_finish_reason"] == "length"
    assert not read(cfg.run_dir / "sft.jsonl")
    [rejected] = read(cfg.run_dir / "rejected.jsonl")
    assert rejected["filter"] == "acceptable" and "token limit cut it off" in rejected["reason"]
    kept = RunConfig(name="kept", runs_dir=tmp_path, stages=("facts",), keep_acceptable=True)
    critique_answers(kept, [{**cut, "finish_reason": "length"}], teacher=ScriptedTeacher(script))
    [row] = read(kept.run_dir / "sft.jsonl")
    assert row["meta"]["positive"] == "unverified" and row["meta"]["verified"] is False and row["ends"] is False
    assert parse_example(row).ends is False
    whole = RunConfig(name="whole", runs_dir=tmp_path, stages=("facts",))
    critique_answers(whole, [{**cut, "finish_reason": "stop"}], teacher=ScriptedTeacher(script))
    [row] = read(whole.run_dir / "sft.jsonl")
    assert "ends" not in row and parse_example(row).ends
    assert "original_finish_reason" not in read(whole.run_dir / "revisions.jsonl")[0]

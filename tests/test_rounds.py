"""`distill run --rounds`: answer, critique, train, evaluate, promote; a refusal stops the run.

A tiny Llama (peaked initialisation) is the student; the teacher, scripted on the loopback
server, rewrites every answer to "yes" and its judge prefers "yes". Held-out prompts check for
"yes". Round 1 trains a "yes" adapter and is promoted; in round 2 the student already says
"yes", nothing new survives the filters, so round 2 is refused, the run stops and keeps round 1's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


from distill.cli import main
from fakes import between
from loopback_server import LoopbackRequest


def yes_teacher(request: LoopbackRequest) -> str:
    user = next(m["content"] for m in request.messages if m["role"] == "user")
    if "winner" in json.dumps(request.schema or {}):
        a, b = between(user, "A").lower(), between(user, "B").lower()
        return json.dumps({"reason": "r", "winner": "A" if "yes" in a and "yes" not in b else
                           "B" if "yes" in b and "yes" not in a else "tie"})
    return json.dumps({"critique": "Say yes.", "issues": ["not yes"], "verdict": "needs_revision", "revision": "yes"})



def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_round(name: str, train: Path, heldout: Path, tmp_path: Path, student: Path, *flags: str) -> list[str]:
    """`distill run` on the tiny student into tmp_path/runs/NAME: 6-token answers and evaluations, the quick
    chain, no dedup, a forgetting limit it cannot break; `flags` add the rounds, training options, ..."""
    return ["run", str(train), "--name", name, "--runs-dir", str(tmp_path / "runs"), "--student", str(student),
            "--max-new-tokens", "6", "--chain", "quick", "--heldout", str(heldout), "--eval-max-new-tokens", "6",
            "--max-nll-increase", "100", "--dedup-threshold", "0", *flags]


def test_two_rounds_promote_then_refuse_and_report(loopback_teacher, peaked_model_dir, tmp_path, capsys) -> None:
    loopback = loopback_teacher
    loopback.script(yes_teacher)
    train = write(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": f"Question number {i}: is it true?"}
                                              for i in range(24)])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": f"h{i}", "prompt": f"Held-out question {i}: is water wet?",
                                                  "reference": "yes"} for i in range(8)])
    args = tiny_round("multi", train, heldout, tmp_path, peaked_model_dir, "--rounds", "3",
                      "--train-option", "learning_rate=0.01", "--train-option", "epochs=4", "--logprob-rows", "5")
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    root = tmp_path / "runs" / "multi"
    # the gate reuses the base student's greedy held-out answers from the held-out round
    assert "the current student's 8 held-out answers are reused from" in captured.err
    base = {r["prompt_id"]: r["answer"] for r in map(json.loads, (root / "heldout" / "answers.jsonl").open())}
    assert {r["prompt_id"]: r["current"] for r in map(json.loads, (root / "round-1" / "eval_rows.jsonl").open())} == base
    state = json.loads((root / "rounds.json").read_text())
    assert [r["decision"]["promote"] for r in state["rounds"]] == [True, False]
    first, second = state["rounds"]
    assert first["metrics"]["checks"]["delta"]["low"] > 0 and first["metrics"]["checks"]["new_pass_rate"] == 1.0
    assert first["metrics"]["checks"]["delta"]["n"] == 8  # the checks cover every held-out prompt...
    assert first["metrics"]["fidelity"]["delta"]["n"] == 5 and first["metrics"]["forgetting"]["kl_rows"] == 5  # ...these not
    assert "no new training example survived the filters in round 2" in second["decision"]["reasons"][0]
    assert state["best_adapter"] == str(root / "round-1" / "adapter")
    assert second["rejected"].get("unchanged", 0) + second["rejected"].get("judge", 0) == 24
    assert any("same model as the teacher" in w for w in first["warnings"])
    # every record carries its round number
    checked = 0
    for k in (1, 2):
        for path in (root / f"round-{k}").glob("*.jsonl"):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert all(r.get("round", r.get("meta", {}).get("round")) == k for r in rows), path
            checked += len(rows)
    assert checked > 24 * 5
    assert json.loads((root / "round-1" / "manifest.json").read_text())["round"] == 1
    assert json.loads((root / "round-1" / "eval.json").read_text())["round"] == 1
    # the report: markdown with its plots, and the same table in the terminal
    report = (root / "report.md").read_text()
    for png in ("loss.png", "metrics.png", "drops.png"):
        assert f"({png})" in report and (root / png).stat().st_size > 5000
    page = (root / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and page.count("<tr>") == 1 + 2 and "refused" in page
    assert "| 1 |" in out and "promoted" in out and "refused" in out
    assert main(["report", "multi", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "best adapter: " + str(root / "round-1" / "adapter") in capsys.readouterr().out
    # a re-run does nothing more: the run ended with a refusal
    sent = loopback.count()
    assert main(args) == 0 and loopback.count() == sent


def test_each_rounds_gate_metrics_go_to_its_adapters_tracker(loopback_teacher, peaked_model_dir, tmp_path) -> None:
    pytest.importorskip("tensorboardX")
    from test_train_tracking import scalars

    loopback_teacher.script(yes_teacher)
    train = write(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": f"Question number {i}: is it true?"}
                                              for i in range(12)])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": f"h{i}", "prompt": f"Held-out question {i}: is water wet?",
                                                  "reference": "yes"} for i in range(8)])
    assert main(tiny_round("tracked", train, heldout, tmp_path, peaked_model_dir, "--rounds", "1",
                           "--train-option", "learning_rate=0.01", "--train-option", "epochs=2", "--train-option",
                           "report_to=tensorboard")) == 0
    [record] = json.loads((tmp_path / "runs" / "tracked" / "rounds.json").read_text())["rounds"]
    logged = scalars(tmp_path / "runs" / "tracked" / "round-1" / "adapter" / "tracking")
    steps = record["training"]["steps"]
    assert logged["gate/checks_delta"] == [(steps, pytest.approx(record["metrics"]["checks"]["delta"]["mean"]))]
    assert logged["gate/promoted"] == [(steps, float(record["decision"]["promote"]))]
    assert len(logged["loss"]) == steps


def test_a_round_that_wins_on_held_out_but_breaks_general_answers_is_refused(loopback_teacher, peaked_model_dir,
                                                                             tmp_path, capsys) -> None:
    """`--general`: prompts whose reference forbids "yes". The yes adapter passes every held-out check
    and breaks general answers, so the gate refuses it, says why, and keeps the base."""
    loopback_teacher.script(yes_teacher)
    train = write(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": f"Question number {i}: is it true?"}
                                              for i in range(24)])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": f"h{i}", "prompt": f"Held-out question {i}: is water wet?",
                                                  "reference": "yes"} for i in range(8)])
    general = write(tmp_path / "general.jsonl", [{"id": f"g{i}", "prompt": f"General question {i}: what is the weather?",
                                                  "reference": {"type": "forbidden_words", "words": ["yes"]}}
                                                 for i in range(6)])
    assert main(tiny_round("general", train, heldout, tmp_path, peaked_model_dir, "--rounds", "1",
                           "--general", str(general), "--train-option", "learning_rate=0.01",
                           "--train-option", "epochs=4")) == 0
    state = json.loads((tmp_path / "runs" / "general" / "rounds.json").read_text())
    [record] = state["rounds"]
    assert record["metrics"]["checks"]["new_pass_rate"] == 1.0
    kept = record["metrics"]["general"]
    assert kept["current_pass_rate"] == 1.0 and kept["drop"] >= 0.5
    assert not record["decision"]["promote"] and state["best_adapter"] is None
    assert record["decision"]["reasons"][0].startswith("forgetting: the pass rate on general prompts fell from 100.0%")
    assert "pass rate on general prompts fell" in capsys.readouterr().err


def test_a_general_set_with_no_reference_is_refused_before_any_model_loads(tmp_path, capsys) -> None:
    train = write(tmp_path / "train.jsonl", [{"id": "t0", "prompt": "Question?"}])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": "h0", "prompt": "Held out?", "reference": "yes"}])
    general = write(tmp_path / "general.jsonl", [{"id": "g0", "prompt": "What is the capital of France?"}])
    code = main(["run", str(train), "--name", "nogeneral", "--runs-dir", str(tmp_path / "runs"), "--rounds", "1",
                 "--heldout", str(heldout), "--general", str(general), "--teacher", "none"])
    assert code == 2
    assert "general.jsonl: none of its 1 prompt(s) has a `reference`" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "nogeneral" / "heldout").exists()


def test_rounds_need_heldout_prompts_disjoint_from_training(tmp_path, capsys) -> None:
    train = write(tmp_path / "train.jsonl", [{"id": "a", "prompt": "Same question?"}])
    assert main(["run", str(train), "--name", "x", "--rounds", "2"]) == 2
    assert "--heldout" in capsys.readouterr().err


def test_heldout_prompts_differing_only_in_case_spacing_or_punctuation_count_as_training_prompts(tmp_path,
                                                                                                  capsys) -> None:
    train = write(tmp_path / "train.jsonl", [{"id": "a", "prompt": "What is 2 + 2?"}, {"id": "b", "prompt": "Hi"}])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": "h", "prompt": "what is  2+2"}])
    args = ["run", str(train), "--name", "x", "--runs-dir", str(tmp_path / "runs"), "--rounds", "2",
            "--heldout", str(heldout)]
    assert main(args) == 2
    assert "1 held-out prompt(s) also appear in the training prompts (e.g. 'what is  2+2')" in capsys.readouterr().err


def test_a_round_trains_sft_then_dpo_on_its_pairs_and_the_gate_judges_the_dpo_adapter(
        loopback_teacher, peaked_model_dir, tmp_path, capsys) -> None:
    loopback_teacher.script(yes_teacher)
    train = write(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": f"Question number {i}: is it true?"}
                                              for i in range(16)])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": f"h{i}", "prompt": f"Held-out question {i}: is water wet?",
                                                  "reference": "yes"} for i in range(6)])
    args = tiny_round("pref", train, heldout, tmp_path, peaked_model_dir, "--rounds", "1", "--methods", "sft,dpo",
                      "--train-option", "learning_rate=0.01", "--train-option", "epochs=4",
                      "--preference-option", "learning_rate=0.002", "--preference-option", "epochs=2")
    assert main(args) == 0
    root = tmp_path / "runs" / "pref"
    [record] = json.loads((root / "rounds.json").read_text())["rounds"]
    assert record["methods"] == ["sft", "dpo"] and record["adapter"] == str(root / "round-1" / "adapter-dpo")
    assert record["training"]["config"]["method"] == "sft" and record["preference_training"]["method"] == "dpo"
    # the preference step takes its own options over the training options; SFT does not see them
    assert (record["training"]["config"]["learning_rate"], record["training"]["config"]["epochs"]) == (0.01, 4)
    dpo = json.loads((root / "round-1" / "adapter-dpo" / "training.json").read_text())["config"]
    assert (dpo["learning_rate"], dpo["epochs"], dpo["batch_size"]) == (0.002, 2, 8)
    assert record["preference_training"]["init_adapter"]["path"] == str(root / "round-1" / "adapter")
    assert {"margin", "accuracy"} <= set(record["preference_training"]["last_step"])
    assert json.loads((root / "round-1" / "eval.json").read_text())["new"] == str(root / "round-1" / "adapter-dpo")
    assert "| 1 (sft+dpo) |" in capsys.readouterr().out
    assert "(preference.png)" in (root / "report.md").read_text() and (root / "preference.png").stat().st_size > 5000
    assert (root / "report.html").read_text().count("data:image/png;base64,") == 4


def test_tuned_pairs_set_the_sft_adapters_failing_samples_against_the_verified_answer(
        loopback_teacher, peaked_model_dir, tmp_path, capsys) -> None:
    """`--preference-pairs tuned`: after SFT the adapter samples each training prompt with a reference,
    and DPO trains on its failing samples (prefs-tuned.jsonl), not on the round's pairs."""
    loopback_teacher.script(yes_teacher)
    train = write(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": f"Question number {i}: is it true?",
                                              **({"reference": "yes"} if i < 6 else {})} for i in range(10)])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": f"h{i}", "prompt": f"Held-out question {i}: is water wet?",
                                                  "reference": "yes"} for i in range(4)])
    args = tiny_round("tuned", train, heldout, tmp_path, peaked_model_dir, "--rounds", "1", "--methods", "sft,dpo",
                      "--train-option", "learning_rate=0.0001", "--train-option", "epochs=1",
                      "--preference-pairs", "tuned", "--preference-samples", "3", "--preference-temperature", "1.5")
    assert main(args) == 0
    round_dir = tmp_path / "runs" / "tuned" / "round-1"
    samples = [json.loads(line) for line in (round_dir / "tuned-samples.jsonl").read_text().splitlines()]
    # only the prompts with a reference are sampled, three times each, at the temperature asked for
    assert sorted({s["prompt_id"] for s in samples}) == [f"t{i}" for i in range(6)] and len(samples) == 18
    assert {s["generation"]["temperature"] for s in samples} == {1.5}
    assert {s["model"]["adapter"] for s in samples} == {str(round_dir / "adapter")}  # the SFT adapter samples
    pairs = [json.loads(line) for line in (round_dir / "prefs-tuned.jsonl").read_text().splitlines()]
    failing = {" ".join(s["answer"].split()) for s in samples if "yes" not in s["answer"].lower()}
    assert pairs and {p["chosen"][0]["content"] for p in pairs} == {"yes"}
    assert all("yes" not in p["rejected"][0]["content"].lower() and p["meta"]["source"] == "tuned" for p in pairs)
    assert {" ".join(p["rejected"][0]["content"].split()) for p in pairs} <= failing
    [record] = json.loads((tmp_path / "runs" / "tuned" / "rounds.json").read_text())["rounds"]
    assert record["tuned_pairs"] == {"prompts": 6, "samples": 18, "pairs": len(pairs)}
    assert record["adapter"] == str(round_dir / "adapter-dpo")
    assert record["preference_training"]["data"]["rows"] == len(pairs)  # trained on these, not prefs.jsonl
    assert "tuned pairs:" in capsys.readouterr().err
    report = (tmp_path / "runs" / "tuned" / "report.md").read_text()
    assert (f"round 1, tuned pairs: {len(pairs)} distinct samples of the SFT adapter's 18 on 6 prompts with a "
            f"verified answer fail their check; dpo trained on {len(pairs)} pairs (prefs-tuned.jsonl)" in report)
    assert "dpo trained on" in (tmp_path / "runs" / "tuned" / "report.html").read_text()


def test_a_preference_method_runs_after_sft_or_alone(tmp_path, capsys) -> None:
    train = write(tmp_path / "train.jsonl", [{"id": "t", "prompt": "Is it?"}])
    heldout = write(tmp_path / "heldout.jsonl", [{"id": "h", "prompt": "Is water wet?", "reference": "yes"}])
    assert main(["run", str(train), "--name", "x", "--runs-dir", str(tmp_path / "runs"), "--rounds", "1",
                 "--heldout", str(heldout), "--methods", "dpo,sft"]) == 2
    assert "expected sft, dpo, kto, sft,dpo or sft,kto" in capsys.readouterr().err
    base = ["run", str(train), "--name", "x", "--runs-dir", str(tmp_path / "runs"), "--rounds", "1",
            "--heldout", str(heldout)]
    assert main([*base, "--preference-option", "beta=0.5"]) == 2  # --methods sft: no step to take it
    assert ("--preference-option beta: --methods sft has no preference step; give --methods sft,dpo (or sft,kto)"
            in capsys.readouterr().err)
    assert main([*base, "--methods", "sft,dpo", "--preference-option", "betta=0.5"]) == 2
    assert "--preference-option: unknown training option(s) 'betta'" in capsys.readouterr().err
    assert main([*base, "--methods", "sft,dpo", "--preference-option", "beta"]) == 2
    assert "--preference-option 'beta': expected FIELD=VALUE" in capsys.readouterr().err
    assert main([*base, "--preference-pairs", "tuned"]) == 2  # tuned pairs need an SFT step before them
    assert "--preference-pairs tuned: --methods sft has no preference step after SFT" in capsys.readouterr().err
    assert main([*base, "--methods", "sft,dpo", "--preference-pairs", "tuned", "--preference-samples", "0"]) == 2
    assert "expected at least 1 sample at a temperature above 0" in capsys.readouterr().err


def test_online_pairs_come_from_two_samples_judged_in_both_orders(loopback_teacher, tmp_path, capsys) -> None:
    """`--pairs online`: no revisions are asked for; two distinct complete samples per prompt, judged in
    both orders (the check's part is in test_a_check_decides_a_pair_without_asking_the_judge)."""
    judged: list[str] = []

    def judge_only(request: LoopbackRequest) -> str:
        user = next(m["content"] for m in request.messages if m["role"] == "user")
        assert "winner" in json.dumps(request.schema or {}), "online pairs ask only the judge"
        judged.append(user)
        a, b = between(user, "A"), between(user, "B")
        return json.dumps({"reason": "shorter", "winner": "A" if len(a) < len(b) else "B" if len(b) < len(a) else "tie"})

    loopback_teacher.script(judge_only)

    def answer(pid: str, k: int, text: str, finish: str = "stop") -> dict:
        return {"id": f"{pid}-{k}", "prompt_id": pid, "sample": k, "answer": text, "finish_reason": finish,
                "messages": [{"role": "user", "content": f"Question {pid}?"}]}

    rows = [answer("short-first", 0, "Yes."), answer("short-first", 1, "Yes, it is true."),
            answer("short-second", 0, "No, it is not so."), answer("short-second", 1, "No."),
            answer("tie", 0, "abc"), answer("tie", 1, "xyz"),
            answer("same", 0, "Same answer."), answer("same", 1, "Same  answer."),
            answer("cut", 0, "A complete one."), answer("cut", 1, "Cut off at the lim", "length")]
    answers = write(tmp_path / "answers.jsonl", rows)
    assert main(["critique", str(answers), "--name", "online", "--runs-dir", str(tmp_path / "runs"),
                 "--pairs", "online"]) == 0
    run = tmp_path / "runs" / "online"
    prefs = {p["meta"]["prompt_id"]: p for p in map(json.loads, (run / "prefs.jsonl").read_text().splitlines())}
    assert {pid: (p["chosen"][0]["content"], p["rejected"][0]["content"]) for pid, p in prefs.items()} == {
        "short-first": ("Yes.", "Yes, it is true."), "short-second": ("No.", "No, it is not so.")}
    assert all(p["meta"]["source"] == "online" and p["meta"]["decided_by"] == "judge" for p in prefs.values())
    assert prefs["short-first"]["meta"]["judge"] == ["candidate", "candidate"]
    assert prefs["short-second"]["meta"]["judge"] == ["other", "other"]
    rejected = {r["prompt_id"]: r for r in map(json.loads, (run / "rejected.jsonl").read_text().splitlines())}
    assert {pid: r["filter"] for pid, r in rejected.items()} == {
        "tie": "no_preference", "same": "no_pair", "cut": "no_pair"}
    assert "(tie, tie" in rejected["tie"]["reason"]
    assert not (run / "revisions.jsonl").exists() and (run / "sft.jsonl").read_text() == ""
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher_usage"]["pairs"]["teacher_calls"] == len(judged) == 6  # 3 pairs, both orders
    assert "preference pairs: 2 (judge 2)" in capsys.readouterr().out


def test_a_check_decides_a_pair_without_asking_the_judge() -> None:
    import asyncio

    from distill.stages.pairs import Candidates, decide
    from distill.stages.protocol import Settings
    from distill.stages.templates import load_prompt_set
    from distill.testing import ScriptedTeacher, judge_reply

    def row(i: int, text: str, reference: object) -> dict:
        return {"id": f"a{i}", "prompt_id": "p", "sample": i, "answer": text, "finish_reason": "stop",
                "messages": [{"role": "user", "content": "Answer in lowercase."}], "reference": reference}

    teacher = ScriptedTeacher(lambda r: judge_reply("B"))
    prompts = load_prompt_set()
    one_passes = Candidates(row(0, "Paris", {"type": "lowercase"}), row(1, "paris", {"type": "lowercase"}))
    assert asyncio.run(decide(one_passes, teacher, prompts, Settings())).winner == 1 and not teacher.requests
    both_pass = Candidates(row(0, "paris", {"type": "lowercase"}), row(1, "lyon", {"type": "lowercase"}))
    decided = asyncio.run(decide(both_pass, teacher, prompts, Settings()))
    assert (decided.by, len(teacher.requests)) == ("judge", 2)
    assert decided.winner is None  # "B" in both orders is the first answer once and the second once: no preference


def test_the_gate_reuses_current_answers_only_when_they_are_what_it_would_generate(tmp_path) -> None:
    from distill.evaluation.config import RoundsConfig
    from distill.evaluation.rounds import _known_answers
    from distill.records.prompts import Prompt
    from distill.stages.config import RunConfig

    heldout = [Prompt.from_text("Is water wet?"), Prompt.from_text("Is fire hot?")]
    config = RoundsConfig(run=RunConfig(name="r", runs_dir=tmp_path), rounds=2, heldout=tmp_path / "h.jsonl",
                          eval_max_new_tokens=6)
    folder = config.run.folder
    (folder / "heldout").mkdir(parents=True)

    def base_answers(**generation: object) -> None:
        rows = [{"id": f"a{i}", "prompt_id": p.id, "sample": 0, "messages": list(p.messages), "answer": f"yes {i}",
                 "model": {"key": "base@1"}, "generation": {"max_new_tokens": 6, "temperature": 0.0, **generation}}
                for i, p in enumerate(heldout)]
        write(folder.heldout / "answers.jsonl", rows)

    base_answers()
    assert _known_answers(config, 1, None, heldout, "base@1") == ["yes 0", "yes 1"]
    assert _known_answers(config, 1, None, heldout, "other@2") is None  # another model's answers
    assert _known_answers(config, 1, None, [*heldout, Prompt.from_text("New?")], "base@1") is None  # one missing
    base_answers(max_new_tokens=12)
    assert _known_answers(config, 1, None, heldout, "base@1") is None  # longer than the evaluation's
    base_answers(temperature=0.7)
    assert _known_answers(config, 1, None, heldout, "base@1") is None  # sampled
    # round 2 starts from round 1's adapter: its answers in round 1's evaluation are the current ones
    (folder / "round-1").mkdir()
    write(folder.round(1) / "eval_rows.jsonl", [{"prompt_id": p.id, "current": "no", "new": f"yes {i}"}
                                                 for i, p in enumerate(heldout)])
    (folder.round(1) / "eval.json").write_text(json.dumps({"new": "runs/r/round-1/adapter"}))
    assert _known_answers(config, 2, "runs/r/round-1/adapter", heldout, "x") == ["yes 0", "yes 1"]
    assert _known_answers(config, 2, "elsewhere/adapter", heldout, "x") is None


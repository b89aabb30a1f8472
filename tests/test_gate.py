"""The evaluation gate: bootstrap intervals, and promotion decided on evidence only.

Integration tests use a tiny random Llama (initialised with large weights, so that its
distributions are peaked like a trained model's): a "yes" adapter trained in seconds to answer
"yes" is a constructed better student on prompts whose reference is "yes"; a LoRA with large
random weights is a constructed worse one; and the base model's own answers are the replay set
on which forgetting shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.evaluation.evaluate import checks_by_kind, evaluate, logprob_rows_for, mean_kl, spread
from distill.evaluation.gate import Interval, Policy, bootstrap_ci, decide
from distill.records.prompts import parse_prompt
from distill.stages.templates import load_prompt_set
from distill.student.model import Student
from fakes import ScriptedTeacher, is_judge, judge_reply, quoted_answer


def test_bootstrap_interval_on_known_cases() -> None:
    constant = bootstrap_ci([0.5] * 30)
    assert (constant.mean, constant.low, constant.high, constant.n) == (0.5, 0.5, 0.5, 30)
    rng = np.random.default_rng(7)
    values = rng.normal(0.2, 1.0, 900)
    ci = bootstrap_ci(values, seed=3)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # the normal-theory interval
    assert abs(ci.low - (values.mean() - half)) < 0.01 and abs(ci.high - (values.mean() + half)) < 0.01
    assert bootstrap_ci(values, seed=3) == ci  # deterministic for a seed
    # a +1/-1 coin with 70% heads: mean 0.4, and the interval excludes zero at n=200
    coin = [1.0] * 140 + [-1.0] * 60
    ci = bootstrap_ci(coin)
    assert ci.mean == pytest.approx(0.4) and 0.25 < ci.low < 0.3 and 0.5 < ci.high < 0.55


def metrics(low: float, high: float, nll_increase: float | None = None, kl: float | None = None) -> dict:
    return {"checks": {"delta": Interval((low + high) / 2, low, high, 20)},
            "forgetting": {"nll_increase": nll_increase, "kl": kl}}


def test_decide_promotes_only_on_evidence() -> None:
    assert decide(metrics(0.05, 0.3, nll_increase=0.01), Policy()).promote
    refused = decide(metrics(-0.05, 0.3), Policy())
    assert not refused.promote and "lower bound -0.050" in refused.reasons[0]
    assert not decide(metrics(0.05, 0.3), Policy(margin=0.1)).promote
    forgot = decide(metrics(0.1, 0.3, nll_increase=0.08), Policy())
    assert not forgot.promote and "replay NLL rose 8.0%" in forgot.reasons[0]
    assert not decide(metrics(0.1, 0.3, kl=0.5), Policy(max_kl=0.1)).promote
    missing = decide({"judge": {}}, Policy(primary="checks"))
    assert not missing.promote and "not measured" in missing.reasons[0]


def general(current: int, new: int, n: int = 80) -> dict:
    deltas = [0] * n
    for i in range(max(current - new, 0)):
        deltas[i] = -1
    return {"current_pass_rate": current / n, "new_pass_rate": new / n, "drop": (current - new) / n,
            "delta": bootstrap_ci(deltas)}


def test_the_gate_allows_one_general_prompt_in_40_lost_and_refuses_more() -> None:
    at_limit = {**metrics(0.1, 0.3), "general": general(47, 45)}  # 2 of 80: exactly the default 0.025
    assert decide(at_limit, Policy()).promote
    over = decide({**metrics(0.1, 0.3), "general": general(47, 41)}, Policy())
    assert not over.promote
    assert over.reasons == ["forgetting: the pass rate on general prompts fell from 58.8% to 51.2% (n=80), "
                            "over the limit 2.5%"]
    assert decide({**metrics(0.1, 0.3), "general": general(47, 41)}, Policy(max_general_drop=0.1)).promote


def test_a_general_set_without_references_is_refused_by_name(tmp_path: Path) -> None:
    from distill.errors import InputError
    from distill.evaluation.evaluate import read_general

    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "What is the capital of France?"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"plain.jsonl: none of its 1 prompt\(s\) has a `reference`"):
        read_general(plain)


def test_spread_takes_evenly_spaced_rows_or_all_of_them() -> None:
    rows = list(range(10))
    assert spread(rows, 5) == [0, 2, 4, 6, 8]
    assert spread(rows, 3) == [0, 3, 6]
    assert spread(rows, 0) == rows and spread(rows, 10) == rows and spread(rows, 64) == rows


def test_the_pass_rates_per_kind_come_from_meta_kind_else_from_the_check_types(tmp_path: Path) -> None:
    from distill.evaluation.report import kind_lines, write_report
    from distill.evaluation.state import STATE

    prompts = [parse_prompt({"id": "a", "prompt": "x", "reference": {"type": "lowercase"}, "meta": {"kind": "lower"}}),
               parse_prompt({"id": "b", "prompt": "y", "reference": {"type": "lowercase"}, "meta": {"kind": "lower"}}),
               parse_prompt({"id": "c", "prompt": "z", "reference": [{"type": "min_words", "value": 1},
                                                                    {"type": "max_words", "value": 1}]}),
               parse_prompt({"id": "d", "prompt": "no check"})]
    passed = [(False, True), (False, False), (True, True), None]
    by_kind = checks_by_kind(prompts, passed)
    assert by_kind == {"lower": {"n": 2, "current": 0, "new": 1}, "max_words+min_words": {"n": 1, "current": 1, "new": 1}}
    assert checks_by_kind(prompts[:2], passed[:2]) == {}  # one kind: the overall pass rate says it all
    # the report's table of the last round, in the markdown, the terminal's table and the HTML page
    state = {"name": "k", "rounds": [{"round": 1, "metrics": {"checks": {"by_kind": by_kind}},
                                      "decision": {"promote": True, "reasons": ["ok"]}}]}
    lines = kind_lines(state)
    assert lines[0] == "Held-out pass rate by kind, round 1:"
    assert "| lower | 2 | 0 (0%) | 1 (50%) |" in lines and "| max_words+min_words | 1 | 1 (100%) | 1 (100%) |" in lines
    (tmp_path / STATE).write_text(json.dumps(state), encoding="utf-8")
    assert "| lower | 2 | 0 (0%) | 1 (50%) |" in write_report(tmp_path).read_text()
    assert "<td>lower</td><td>2</td><td>0 (0%)</td><td>1 (50%)</td>" in (tmp_path / "report.html").read_text()
    assert kind_lines({"rounds": [{"round": 1, "metrics": {"checks": {}}}]}) == []


def test_fidelity_and_kl_use_every_row_when_the_gate_decides_on_them() -> None:
    assert logprob_rows_for(Policy(), 64) == 64
    assert logprob_rows_for(Policy(primary="fidelity"), 64) == 0
    assert logprob_rows_for(Policy(max_kl=0.5), 64) == 0


def test_a_negative_logprob_rows_is_refused_by_name(tmp_path: Path, capsys) -> None:
    import json

    from distill.cli import main

    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps(p.to_row()) + "\n" for p in HELD_OUT), encoding="utf-8")
    assert main(["eval", str(held), "--adapter", str(tmp_path), "--no-judge", "--logprob-rows", "-1"]) != 0
    assert "--logprob-rows -1: expected 0 (every held-out row) or a positive count" in capsys.readouterr().err


# ---------------------------------------------------------------- with real (tiny) models

HELD_OUT = [parse_prompt({"id": f"h{i}", "prompt": f"Held-out question {i}: is water wet?", "reference": "yes"})
            for i in range(8)]



@pytest.fixture(scope="module")
def yes_adapter(peaked_model_dir: Path, tmp_path_factory) -> Path:
    from distill.training.config import TrainConfig
    from distill.training.examples import Example
    from distill.training.sft import train

    examples = [Example(id=f"e{i}", prompt=({"role": "user", "content": f"Question number {i}: is it true?"},),
                        completion="yes") for i in range(32)]
    out = tmp_path_factory.mktemp("yes") / "adapter"
    train(examples, out, TrainConfig(learning_rate=1e-2, epochs=4, batch_size=8, seed=0), student=str(peaked_model_dir))
    return out


@pytest.fixture(scope="module")
def noise_adapter(yes_adapter: Path, tmp_path_factory) -> Path:
    """The yes adapter with its LoRA weights replaced by large noise: a constructed worse model."""
    from safetensors.torch import load_file, save_file
    import shutil
    import torch

    out = tmp_path_factory.mktemp("noise") / "adapter"
    shutil.copytree(yes_adapter, out)
    weights = out / "adapter_model.safetensors"
    torch.manual_seed(1)
    save_file({k: torch.randn_like(v) * 2.0 for k, v in load_file(weights).items()}, weights)
    return out


def prefers_yes(request) -> str:
    assert is_judge(request)
    a, b = quoted_answer(request, "A").lower(), quoted_answer(request, "B").lower()
    return judge_reply("A" if "yes" in a and "yes" not in b else "B" if "yes" in b and "yes" not in a else "tie")


def test_the_gate_promotes_a_better_adapter(peaked_model_dir: Path, yes_adapter: Path) -> None:
    base, better = Student.load(peaked_model_dir), Student.load(peaked_model_dir, adapter=yes_adapter)
    teacher = ScriptedTeacher(prefers_yes)
    result = evaluate(base, better, HELD_OUT, teacher=teacher, prompt_set=load_prompt_set(), max_new_tokens=6,
                      teacher_identity=teacher.identity())
    checks = result.metrics["checks"]
    assert checks["current_pass_rate"] == 0.0 and checks["new_pass_rate"] == 1.0 and checks["delta"].low > 0
    assert result.metrics["judge"]["wins"] == 8 and result.metrics["judge"]["delta"].low > 0
    assert len(teacher.requests) == 16  # both orders for every prompt
    assert "same model as the teacher" in result.warnings[0]
    assert result.metrics["forgetting"]["kl"] > 0
    assert decide(result.metrics, Policy(primary="checks")).promote
    assert decide(result.metrics, Policy(primary="judge")).promote


def test_fidelity_and_kl_are_measured_on_logprob_rows_spread_through_the_held_out_set(
        peaked_model_dir: Path, yes_adapter: Path) -> None:
    from distill.training.examples import Example

    base, better = Student.load(peaked_model_dir), Student.load(peaked_model_dir, adapter=yes_adapter)
    revisions = [Example(id=p.id, prompt=tuple(p.messages), completion=f"yes, number {i} is") for i, p in enumerate(HELD_OUT)]
    every = evaluate(base, better, HELD_OUT, revisions=revisions, max_new_tokens=6)
    some = evaluate(base, better, HELD_OUT, revisions=revisions, max_new_tokens=6, logprob_rows=3)
    assert every.metrics["fidelity"]["delta"].n == 8 and every.metrics["forgetting"]["kl_rows"] == 8
    assert some.metrics["fidelity"]["delta"].n == 3 and some.metrics["forgetting"]["kl_rows"] == 3
    own = [Example(id=p.id, prompt=tuple(p.messages), completion=row["current"])
           for p, row in zip(HELD_OUT, every.rows)]
    assert some.metrics["forgetting"]["kl"] == pytest.approx(mean_kl(base, better, [own[0], own[2], own[5]]))
    assert some.metrics["checks"] == every.metrics["checks"]  # the answers and their checks cover every row


def test_the_gate_refuses_a_worse_adapter(peaked_model_dir: Path, yes_adapter: Path, noise_adapter: Path) -> None:
    current, worse = Student.load(peaked_model_dir, adapter=yes_adapter), Student.load(peaked_model_dir, adapter=noise_adapter)
    result = evaluate(current, worse, HELD_OUT, max_new_tokens=6)
    assert result.metrics["checks"]["delta"].mean < 0
    decision = decide(result.metrics, Policy(primary="checks"))
    assert not decision.promote and "checks: lower bound" in decision.reasons[0]


def test_the_gate_refuses_an_adapter_that_forgets(peaked_model_dir: Path, yes_adapter: Path) -> None:
    from distill.student.model import GenerationParams
    from distill.training.examples import Example

    base, better = Student.load(peaked_model_dir), Student.load(peaked_model_dir, adapter=yes_adapter)
    own = base.answer([f"Tell me about topic {i}." for i in range(6)], GenerationParams(max_new_tokens=12))
    replay = [Example(id=a.prompt.id, prompt=tuple(a.prompt.messages), completion=a.text) for a in own]
    result = evaluate(base, better, HELD_OUT, replay=replay, max_new_tokens=6)
    assert result.metrics["checks"]["delta"].low > 0  # better on the target...
    assert result.metrics["forgetting"]["nll_increase"] > 0.05
    decision = decide(result.metrics, Policy(primary="checks", max_nll_increase=0.05))
    assert not decision.promote and "forgetting: replay NLL rose" in decision.reasons[0]  # ...but it forgot


def test_the_gate_refuses_an_adapter_whose_general_answers_stop_passing(peaked_model_dir: Path,
                                                                        yes_adapter: Path) -> None:
    """General prompts that forbid "yes": the base never says it, the yes adapter mostly does. It wins on
    the held-out prompts and loses general ones, and the gate says so with the numbers."""
    base, better = Student.load(peaked_model_dir), Student.load(peaked_model_dir, adapter=yes_adapter)
    forbid = {"type": "forbidden_words", "words": ["yes"]}
    general_prompts = [parse_prompt({"id": f"g{i}", "prompt": f"General question {i}: what is the weather?",
                                     "reference": forbid}) for i in range(6)]
    result = evaluate(base, better, HELD_OUT, general=general_prompts, max_new_tokens=6)
    assert result.metrics["checks"]["delta"].low > 0
    kept = result.metrics["general"]
    assert kept["current_pass_rate"] == 1.0 and kept["new_pass_rate"] <= 0.5
    assert kept["drop"] == pytest.approx(1.0 - kept["new_pass_rate"])
    decision = decide(result.metrics, Policy(primary="checks", max_nll_increase=10.0))
    assert not decision.promote
    assert decision.reasons == [f"forgetting: the pass rate on general prompts fell from 100.0% to "
                                f"{kept['new_pass_rate']:.1%} (n=6), over the limit 2.5%"]


def test_distill_eval_reports_the_general_pass_rates_and_refuses(peaked_model_dir: Path, yes_adapter: Path,
                                                                 tmp_path: Path, capsys) -> None:
    import json

    from distill.cli import main

    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps({**p.to_row(), "meta": {"kind": ("even", "odd")[i % 2]}}) + "\n"
                            for i, p in enumerate(HELD_OUT)), encoding="utf-8")
    general_file = tmp_path / "general.jsonl"
    general_file.write_text("".join(json.dumps({"id": f"g{i}", "prompt": f"General question {i}: what is the weather?",
                                                "reference": {"type": "forbidden_words", "words": ["yes"]}}) + "\n"
                                    for i in range(6)), encoding="utf-8")
    out = tmp_path / "eval.json"
    assert main(["eval", str(held), "--adapter", str(yes_adapter), "--student", str(peaked_model_dir), "--no-judge",
                 "--max-new-tokens", "6", "--general", str(general_file), "--max-nll-increase", "100",
                 "-o", str(out), "--rows", str(tmp_path / "rows.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "general    current_pass_rate=1.0000" in printed
    assert "| even | 4 | 0 (0%) | 4 (100%) |" in printed and "| odd | 4 | 0 (0%) | 4 (100%) |" in printed
    assert "REFUSE: forgetting: the pass rate on general prompts fell from 100.0%" in printed
    data = json.loads(out.read_text())
    assert data["metrics"]["general"]["drop"] >= 0.5 and data["decision"]["promote"] is False
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [p.id for p in HELD_OUT]
    assert all(not r["current_passed"] and r["new_passed"] and "yes" in r["new"].lower() for r in rows)

"""Multi-round distillation with an evaluation gate: `distill run --rounds N`.

Each round the current student (base + the promoted adapter, none at first) answers the training
prompts, the teacher critiques and revises, the survivors of every round so far train a fresh
adapter on the base model (with the base student's own answers as replay), and the new adapter
is evaluated against the current student on held-out prompts never used in training. It is
promoted only if the gate says so (`distill.evaluation.gate`); otherwise the run stops, keeps the best
adapter, and says why. Everything lands under `runs/NAME/`:

    heldout/          a round on the held-out prompts with the base student: its teacher
                      revisions measure fidelity (never trained on); with the teacher `none`
                      (self-training) only the base student's greedy answers
    replay/           the base student's own answers to general prompts (`--replay`): three
                      quarters are mixed into training against forgetting, the other quarter
                      measures forgetting (without `--replay`, the base answers to the held-out
                      prompts measure it and training has no replay); `--general FILE`, prompts
                      with a reference, adds their pass rate to the gate
    round-K/          the round's artefacts (answers ... manifest.json), adapter/, eval.json,
                      eval_rows.jsonl (per held-out prompt), general_rows.jsonl (per `--general`
                      prompt: both answers and checks)
    rounds.json       per round: counts, training summary, metrics, decision; resumable state
    report.md + *.png the report (`distill report NAME`)

A re-run continues from the first round not recorded as finished in rounds.json.

The gate does not generate again what the run already has: the current student's greedy held-out
answers come from the held-out round (the base student) or from the evaluation that promoted the
current adapter, where they were generated as the evaluation would (greedy, same model, same length).

With `--engine server` the server answers the held-out round, the replay prompts and each round's
prompts (`distill.teachers.served_student`); a round whose student has a promoted adapter finds it
among the served models by its weight hashes (the name given for the base does not name it), so
only a server that reports hashes (`distill serve`) can answer those rounds. The gate's evaluation
runs on the local models: it needs their log-probabilities, and the new adapter is not served yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from distill.errors import InputError
from distill.evaluation.config import RoundsConfig
from distill.evaluation.gate import decide
from distill.evaluation.report import write_report
from distill.evaluation.state import load_state, save_state
from distill.records.files import run_lock, write_atomic, write_jsonl
from distill.records.prompts import Prompt, read_answers, read_prompts
from distill.stages.round import RunConfig, no_teacher, open_round_teacher, run_round


def _log(message: str) -> None:
    print(f"distill: {message}", file=sys.stderr, flush=True)


def _examples(path: Path) -> list[Any]:
    """The training examples an earlier round wrote (a resumed run reads them back)."""
    from distill.training.examples import read_examples

    return read_examples(path) if path.exists() and path.stat().st_size else []


def _kept(summary: Any) -> list[Any]:
    """The training examples the round just run kept, from what it returned."""
    from distill.training.examples import parse_example

    return [parse_example(row.to_row()) for row in summary.sft]


def _replay_from_answers(rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The base student's own (complete) answers, as replay examples."""
    from distill.training.examples import replay_examples

    return replay_examples((r["id"], r["messages"], r["answer"], r.get("finish_reason")) for r in rows)


def _replay_sets(config: RoundsConfig, held_cfg: RunConfig) -> tuple[list[Any], list[Any]]:
    """(training replay, forgetting set): the base student's own answers to general prompts."""
    from distill.training.examples import read_replay

    if config.replay is None:
        return [], _replay_from_answers(read_answers(held_cfg.run_dir / "answers.jsonl"))
    chats, replay_prompts = read_replay(config.replay)
    out = config.run.folder.replay / "answers.jsonl"
    answered = _base_answers(config, replay_prompts, out) if replay_prompts else []
    examples = list(chats) + _replay_from_answers(answered)
    held = [e for i, e in enumerate(examples) if i % 4 == 3]
    return [e for i, e in enumerate(examples) if i % 4 != 3], held


def _prompt_key(text: str) -> str:
    """What makes two prompts the same for the leakage check: their words, case and punctuation aside
    (`similarity.normalise`); a prompt without words is compared as written, case aside."""
    from distill.checks.similarity import normalise

    return normalise(text) or text.strip().casefold()


def run_rounds(config: RoundsConfig, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """Run up to `config.rounds` rounds; returns the state written to rounds.json. Another process
    working on the same run is an error (`distill.records.files.run_lock`), as for a single round."""
    root = config.run.run_dir
    root.mkdir(parents=True, exist_ok=True)
    with run_lock(root):
        return _run_rounds(config, prompts, root)


def _run_rounds(config: RoundsConfig, prompts: Sequence[Prompt], root: Path) -> dict[str, Any]:
    from distill.evaluation.evaluate import read_general
    from distill.training.config import TrainConfig
    from distill.training.run import log_gate

    heldout = read_prompts(config.heldout)
    trained = {_prompt_key(p.text) for p in prompts}
    overlap = sorted({p.text.strip().casefold() for p in heldout if _prompt_key(p.text) in trained})
    if overlap:
        raise InputError(f"{config.heldout}: {len(overlap)} held-out prompt(s) also appear in the training prompts "
                         f"(e.g. {overlap[0]!r}); held-out prompts must never be trained on")
    general = read_general(config.general) if config.general is not None else []
    train_config = TrainConfig.from_mapping(config.train_options, source="--train-option")
    # built (and checked) now, not after the first round's SFT
    preference_config = TrainConfig.from_mapping({**config.train_options, **config.preference_options},
                                                 source="--preference-option")
    state = load_state(root)
    state.update(name=config.run.name, heldout=str(config.heldout), policy=config.policy.__dict__)

    held_cfg = config.run.inside(config.run.folder.heldout, adapter=None, round=0)
    self_only = no_teacher(config.run.teacher)
    if self_only:  # no teacher: no revisions to measure fidelity with; the base answers measure forgetting
        _log("held-out: the base student answers the held-out prompts (greedy; no teacher)")
        _base_answers(config, heldout, held_cfg.run_dir / "answers.jsonl")
        revisions: list[Any] = []
    else:
        _log("held-out reference round: the base student answers the held-out prompts, the teacher revises")
        revisions = _kept(run_round(held_cfg, heldout))
    replay, forgetting_set = _replay_sets(config, held_cfg)

    finished = [r for r in state["rounds"] if r.get("finished")]
    current = next((r["adapter"] for r in reversed(finished) if r["decision"]["promote"]), None)
    if finished and not finished[-1]["decision"]["promote"]:
        _log(f"round {finished[-1]['round']} was refused earlier; nothing more to do")
        return state
    for number in range(len(finished) + 1, config.rounds + 1):
        # a served student for a promoted adapter is found by its hashes, not by the name given for the base;
        # a preference method needs failing samples whole (the rejected side of its pairs)
        round_cfg = config.run.inside(config.run.folder.round(number), adapter=current, round=number,
                                      **({"student_model": None} if current is not None else {}),
                                      **({"self_stop": False} if set(config.methods) - {"sft"} else {}))
        _log(f"round {number}: student {'base' if current is None else 'base + ' + current}")
        summary = run_round(round_cfg, prompts)
        fresh = _kept(summary)
        data = [e for k in range(1, number) for e in _examples(config.run.folder.round(k) / "sft.jsonl")] + fresh
        record: dict[str, Any] = {"round": number, "adapter": None, "counts": summary.counts,
                                  "rejected": summary.rejected, "dataset": summary.dataset,
                                  "new_examples": len(fresh), "new_pairs": len(summary.prefs),
                                  "train_examples": len(data)}
        if not (fresh if "sft" in config.methods else summary.prefs):
            record.update(finished=True, decision={"promote": False, "reasons": [
                f"no new {'training example' if 'sft' in config.methods else 'preference pair'} survived the "
                f"filters in round {number}; nothing new to learn"]})
            state["rounds"] = [*finished, record]
            save_state(root, state)
            break
        adapter, trainings, tuned = _train_round(config, round_cfg.run_dir, data, replay, train_config,
                                                 preference_config, current, prompts)
        record.update(adapter=str(adapter), methods=list(config.methods), training=trainings[0],
                      **({"preference_training": trainings[1]} if len(trainings) > 1 else {}),
                      **({"tuned_pairs": tuned} if tuned is not None else {}))
        evaluation = _evaluate(config, number, current, adapter, heldout, revisions, forgetting_set, round_cfg.run_dir,
                               judge=not self_only, general=general)
        decision = decide(evaluation.metrics, config.policy)
        # to the tracker, if it was trained with one
        log_gate(adapter, evaluation.to_dict()["metrics"], decision.promote)
        record.update(finished=True, metrics=evaluation.to_dict()["metrics"], warnings=evaluation.warnings,
                      decision=decision.to_dict())
        finished = [*finished, record]
        state["rounds"] = finished
        save_state(root, state)
        verdict = "promoted" if decision.promote else "refused"
        _log(f"round {number}: {verdict}: {'; '.join(decision.reasons)}")
        if not decision.promote:
            break
        current = str(adapter)
    state["best_adapter"] = current
    save_state(root, state)
    write_report(root)
    return state


def _train_round(config: RoundsConfig, run_dir: Path, data: Sequence[Any], replay: Sequence[Any],
                 train_config: Any, preference_config: Any, current: str | None,
                 prompts: Sequence[Prompt]) -> tuple[Path, list[dict[str, Any]], dict[str, int] | None]:
    """Train the round's adapter by `config.methods`: SFT on the rows into `adapter/`, then DPO or
    KTO from the SFT adapter into `adapter-dpo/` (`adapter-kto/`), on the round's pairs (prefs.jsonl)
    or, with `--preference-pairs tuned`, on the SFT adapter's failing samples (prefs-tuned.jsonl,
    `distill.stages.tuned_pairs`); a preference method alone starts from the current adapter. The
    preference step trains with `preference_config` (the training options with `preference_options`
    over them). Returns the adapter the gate judges, the training.json of each step, and the tuned
    pairs' counts (None without them). Each step resumes from its own checkpoints; when the SFT
    adapter fails no sample, there is nothing for DPO to push down and the gate judges the SFT adapter."""
    from dataclasses import replace

    from distill.training.pairs import read_pairs
    from distill.training.preference import train_preferences
    from distill.training.sft import train

    adapter: Path | None = None
    trainings = []
    tuned: dict[str, int] | None = None
    for method in config.methods:
        if method == "sft":
            out = run_dir / "adapter"
            if not (out / "training.json").exists():
                train(data, out, train_config, student=config.run.student, replay=replay, restart=out.exists())
        else:
            pairs_file = run_dir / "prefs.jsonl"
            if config.preference_pairs == "tuned" and adapter is not None:
                pairs_file, tuned = _tuned_pairs(config, run_dir, adapter, data, prompts)
                if not tuned["pairs"]:
                    _log(f"the SFT adapter passed every check in {tuned['samples']} samples: no {method} step")
                    break
            out = run_dir / f"adapter-{method}"
            start = adapter if adapter is not None else (Path(current) if current else None)
            if not (out / "training.json").exists():
                train_preferences(read_pairs(pairs_file), out, replace(preference_config, method=method),
                                  method=method, student=config.run.student, init_adapter=start, replay=replay,
                                  restart=out.exists())
        adapter = out
        trainings.append(json.loads((out / "training.json").read_text(encoding="utf-8")))
    if adapter is None:  # RoundsConfig refuses an empty list of methods; this is only a guard
        raise InputError("no training method")
    return adapter, trainings, tuned


def _tuned_pairs(config: RoundsConfig, run_dir: Path, adapter: Path, data: Sequence[Any],
                 prompts: Sequence[Prompt]) -> tuple[Path, dict[str, int]]:
    """The SFT `adapter` samples the training prompts that have a reference and a verified training
    answer (tuned-samples.jsonl, resumable); its failing samples become prefs-tuned.jsonl. Returns that
    file and the counts."""
    from distill.stages.answer import answer_to_file
    from distill.stages.tuned_pairs import tuned_pairs, verified_answers
    from distill.student.model import GenerationParams

    verified = verified_answers(prompts, data)
    params = GenerationParams(max_new_tokens=config.run.generation.max_new_tokens,
                              temperature=config.preference_temperature, samples=config.preference_samples,
                              seed=config.run.generation.seed)
    _log(f"tuned pairs: the SFT adapter samples {len(verified)} training prompts with a verified answer "
         f"{config.preference_samples} times at temperature {config.preference_temperature:g}")
    asked = [p for p in prompts if p.id in verified]
    samples = answer_to_file(asked, run_dir / "tuned-samples.jsonl", params, source=config.run.student,
                             adapter=str(adapter), batch_size=config.run.batch_size)
    found = tuned_pairs(samples, verified)
    out = run_dir / "prefs-tuned.jsonl"
    write_jsonl(out, [p.to_row() for p in found.pairs])
    _log(f"tuned pairs: {len(found.pairs)} distinct samples of {found.samples} fail their check, one pair each")
    return out, found.summary()


def _base_answers(config: RoundsConfig, prompts: Sequence[Prompt], output: Path) -> list[dict[str, Any]]:
    """The base student's greedy answers to `prompts` into `output` (replay and forgetting sets)."""
    from distill.stages.answer import answer_to_file
    from distill.student.model import GenerationParams

    params = GenerationParams(max_new_tokens=config.run.generation.max_new_tokens)
    return answer_to_file(prompts, output, params, source=config.run.student, batch_size=config.run.batch_size,
                          server=config.run.server)


def _evaluate(config: RoundsConfig, number: int, current: str | None, adapter: Path, heldout: Sequence[Prompt],
              revisions: Sequence[Any], forgetting_set: Sequence[Any], round_dir: Path, *,
              judge: bool = True, general: Sequence[Prompt] = ()) -> Any:
    """Evaluate `adapter` against the current student; the judge runs when `judge` and the config allow it."""
    from distill.evaluation.evaluate import evaluate, logprob_rows_for
    from distill.stages.templates import load_prompt_set
    from distill.student.model import Student

    cur = Student.load(config.run.student, adapter=current)
    new = Student.load(config.run.student, adapter=adapter)
    known = _known_answers(config, number, current, heldout, cur.identity.key)
    teacher = identity = None
    if judge and config.judge:
        teacher, _ = open_round_teacher(config.run.offline, config.run.teacher)
        identity = teacher.identity()
    result = evaluate(cur, new, heldout, teacher=teacher, prompt_set=load_prompt_set(config.run.prompts_dir),
                      revisions=revisions, replay=forgetting_set, max_new_tokens=config.eval_max_new_tokens,
                      teacher_identity=identity, general=general, batch_size=config.run.batch_size,
                      current_answers=known, logprob_rows=logprob_rows_for(config.policy, config.logprob_rows))
    write_atomic(round_dir / "eval.json", json.dumps({"round": number, "current": current or "base",
                                                      "new": str(adapter), **result.to_dict()}, indent=2) + "\n")
    write_jsonl(round_dir / "eval_rows.jsonl", ({"round": number, **row} for row in result.rows))
    if result.general_rows:
        write_jsonl(round_dir / "general_rows.jsonl", ({"round": number, **row} for row in result.general_rows))
    return result


def _known_answers(config: RoundsConfig, number: int, current: str | None, heldout: Sequence[Prompt],
                   current_key: str) -> list[str] | None:
    """The current student's greedy held-out answers where the run already has them, else None: the
    base student's from the held-out round (when they were greedy, as long as the evaluation's, and
    by the same model), a promoted adapter's from the evaluation of the round that promoted it."""
    if config.run.engine != "local":
        return None  # the held-out round's answers came from a server; the evaluation answers locally
    wanted = config.eval_max_new_tokens
    if current is None:
        path = config.run.folder.heldout / "answers.jsonl"
        rows = read_answers(path) if path.exists() else []
        by_id = {r["prompt_id"]: r["answer"] for r in rows
                 if r.get("sample", 0) == 0 and r.get("model", {}).get("key") == current_key
                 and r.get("generation", {}).get("temperature", 1) == 0
                 and r.get("generation", {}).get("max_new_tokens") == wanted}
    else:
        folder = config.run.folder.round(number - 1)
        path, told = folder / "eval_rows.jsonl", folder / "eval.json"
        promoted = told.exists() and json.loads(told.read_text(encoding="utf-8")).get("new") == current
        rows = ([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                if promoted and path.exists() else [])
        by_id = {r["prompt_id"]: r["new"] for r in rows}
    if not all(p.id in by_id for p in heldout):
        return None
    _log(f"evaluation: the current student's {len(heldout)} held-out answers are reused from {path}")
    return [by_id[p.id] for p in heldout]

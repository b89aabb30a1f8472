"""The Python API: `distill.run`, `distill.train`, `distill.evaluate` and `distill.teacher_from_env`.

What the `distill run`, `distill train` and `distill eval` commands do, as functions that take
keyword arguments and return the records the commands write (a round's `Summary` with its training
rows, rounds.json's records, training.json's numbers, the gate's metrics and decision). The
command line is a thin layer over these functions: it passes the flags a user gave as keywords.

Every keyword is a field of a config dataclass (`RunConfig`, `GenerationParams`, `RoundsConfig`,
`TrainConfig`, `Policy`), resolved exactly as a flag is: keyword > the config file's table
(`distill.toml` or $DISTILL_CONFIG) > environment > the field's default. An unknown keyword is a
ConfigError that names it and the valid ones, so a typo never silently does nothing.

Owns: turning keywords into configs, and into calls of the stages, the trainers and the gate.
May import: every package of distill (lazily: `import distill` stays light).
Must not import: the CLI.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from distill.config import check_keys, config_file, default_of, file_keys, read_tables, resolve_fields, settings_of
from distill.errors import ConfigError, InputError

if TYPE_CHECKING:
    from distill.evaluation.evaluate import Evaluation
    from distill.evaluation.gate import Decision, Policy
    from distill.records.prompts import Prompt
    from distill.stages.config import RunConfig
    from distill.stages.round import Summary
    from distill.teachers.stack import TeacherHandle
    from distill.training.examples import Example
    from distill.training.run import TrainResult

PathLike = Union[str, "os.PathLike[str]"]
Prompts = Union[PathLike, Sequence[Union["Prompt", str, Mapping[str, Any]]]]


# ---------------------------------------------------------------- keywords into configs

def resolve_options(classes: Sequence[type], table_name: str, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each of `classes`, the values of its fields: `options` > table `table_name` of the config
    file > environment (fields left out take their defaults). Unknown keywords are a ConfigError."""
    known = {s.name for cls in classes for s in settings_of(cls) if s.cli}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))}; expected one of: "
                          f"{', '.join(sorted(known))}")
    path, tables = config_tables()
    table = tables.get(table_name, {})
    return [resolve_fields(cls, flags=options, table=table, path=path, table_name=table_name)[0] for cls in classes]


def config_tables(path: Path | None = None) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """(the config file: `path`, else $DISTILL_CONFIG, else ./distill.toml; its tables), checked whole."""
    path = path if path is not None else config_file()
    found = read_tables(path)
    check_tables(path, found)
    return path, found


def check_tables(path: Path | None, found: Mapping[str, Mapping[str, Any]]) -> None:
    """Every key and value of [run], [train], [gate] and [grow] checked at once, whichever the command uses, so a
    typo is found on the first run, not on the first run that needs it ([teacher]: the teacher settings)."""
    for name in DATACLASS_TABLES:
        values = found.get(name, {})
        if path is None or not values:
            continue
        classes = table_classes(name)
        check_keys(values, file_keys(*classes), path, name)
        for cls in classes:
            resolve_fields(cls, flags={}, table=values, path=path, table_name=name, env={})


RUN_TABLE = "run"
DATACLASS_TABLES = (RUN_TABLE, "train", "gate", "grow")  # the tables whose keys are config dataclass fields


def run_table_classes() -> tuple[type, ...]:
    """The dataclasses whose fields the `[run]` table may set."""
    from distill.evaluation.config import RoundsConfig
    from distill.stages.config import RunConfig
    from distill.student.model import GenerationParams

    return RunConfig, GenerationParams, RoundsConfig


def table_classes(name: str) -> tuple[type, ...]:
    """The dataclasses behind table `name` of distill.toml (`[teacher]` is checked by the teacher settings)."""
    if name == RUN_TABLE:
        return run_table_classes()
    if name == "train":
        from distill.training.config import TrainConfig

        return (TrainConfig,)
    if name == "gate":
        from distill.evaluation.gate import Policy

        return (Policy,)
    if name == "grow":
        from distill.stages.grow import GrowConfig

        return (GrowConfig,)
    return ()


def prompts_of(source: Prompts, columns: Any = None) -> list[Prompt]:
    """Prompts from a file (JSONL, Parquet, CSV, a saved dataset, `hub:ID`), or from a list of Prompt objects,
    prompt strings, or rows as a JSONL file holds them (validated the same way: ROW N: reason)."""
    from distill.records.prompts import Prompt, parse_prompt, read_prompts

    if isinstance(source, (str, os.PathLike)):
        return read_prompts(source, columns)
    prompts, errors = [], []
    for number, item in enumerate(source, start=1):
        try:
            prompts.append(item if isinstance(item, Prompt) else
                           Prompt.from_text(item) if isinstance(item, str) else parse_prompt(item))
        except ValueError as exc:
            errors.append(f"prompts[{number - 1}]: {exc}")
    if errors:
        raise InputError("bad prompts:\n" + "\n".join(errors))
    if not prompts:
        raise InputError("no prompts: the list is empty")
    return prompts


# ---------------------------------------------------------------- run

@dataclass
class RunResult:
    """What `run` wrote under `run_dir`: a single round's Summary (its `sft` rows and `prefs` pairs are
    the records in sft.jsonl and prefs.jsonl), or a multi-round run's records from rounds.json."""

    run_dir: Path
    summary: Summary | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    best_adapter: str | None = None

    def table(self) -> str:
        """The table the command prints."""
        if self.summary is not None:
            return self.summary.table()
        from distill.evaluation.report import load, summary_table

        return summary_table(load(self.run_dir))


def run(prompts: Prompts, *, name: str, rounds: int | None = None, heldout: PathLike | None = None,
        train_options: Mapping[str, Any] | None = None, policy: Policy | Mapping[str, Any] | None = None,
        preference_options: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
    """One distillation round on `prompts` into RUNS_DIR/NAME (the student answers, the teacher critiques
    and revises, the filters keep verified fixes), or with `rounds` and `heldout` up to that many rounds,
    each trained and promoted only when the gate says so. `options` are `distill run`'s flags as keywords
    (RunConfig, GenerationParams and RoundsConfig fields: teacher="none", samples=8, methods=("sft",), ...);
    `train_options` TrainConfig fields (over [train]), `preference_options` those of the preference step
    of methods=("sft", "dpo") over them; `policy` the gate (a Policy, or its fields over
    [gate]). Re-running resumes, as the command does."""
    from distill.evaluation.config import RoundsConfig
    from distill.records.tables import Columns
    from distill.stages.round import run_round

    config, (rounds_values, columns) = run_config(name, (RoundsConfig, Columns), **options)
    given = prompts_of(prompts, Columns(**columns))  # validate before any model loads
    if rounds is None:
        if heldout is not None:
            raise ConfigError("--heldout (heldout=) is for a multi-round run: give --rounds N (rounds=N) as well")
        return RunResult(config.run_dir, summary=run_round(config, given))
    if rounds < 1:
        raise ConfigError(f"--rounds (rounds=) must be at least 1, got {rounds}")
    if heldout is None:
        raise ConfigError("--rounds needs --heldout FILE (heldout=): held-out prompts the gate evaluates on (never "
                          "trained on)")
    prompts_of(heldout, Columns(**columns))  # validate before any model loads
    from distill.evaluation.rounds import run_rounds

    settings = RoundsConfig(run=config, rounds=rounds, heldout=Path(heldout), train_options=train_values(train_options),
                            preference_options=dict(preference_options or {}), policy=policy_of(policy),
                            **rounds_values)
    state = run_rounds(settings, given)
    return RunResult(config.run_dir, rounds=list(state.get("rounds", [])), best_adapter=state.get("best_adapter"))


def run_config(name: str, extra: Sequence[type] = (), **options: Any) -> tuple[RunConfig, list[dict[str, Any]]]:
    """The round's RunConfig (with its GenerationParams) from keywords > [run] > environment > defaults, and
    the values of the `extra` classes' fields found among the same keywords (also from [run])."""
    from distill.stages.config import RunConfig
    from distill.student.model import GenerationParams

    run_values, generation, *rest = resolve_options((RunConfig, GenerationParams, *extra), "run", options)
    if run_values.get("dedup_threshold") == 0:  # 0 turns it off
        run_values["dedup_threshold"] = None
    return RunConfig(name=name, **run_values, generation=GenerationParams(**generation)), rest


def train_values(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """TrainConfig fields: `options` over the [train] table (checked later by TrainConfig.from_mapping)."""
    from distill.training.config import TrainConfig

    return {**resolve_options((TrainConfig,), "train", {})[0], **(options or {})}


def policy_of(policy: Policy | Mapping[str, Any] | None) -> Policy:
    """The gate's policy: a Policy as given, else its fields (a mapping) over [gate] over the defaults."""
    from distill.evaluation.gate import Policy

    if isinstance(policy, Policy):
        return policy
    return Policy(**resolve_options((Policy,), "gate", dict(policy or {}))[0])


# ---------------------------------------------------------------- train

def train(source: PathLike | Sequence[Any], output: PathLike | None = None, *, method: str | None = None,
          student: str | None = None, replay: PathLike | None = None, use_replay: bool = True,
          reviewed: bool = False, init_adapter: PathLike | None = None, restart: bool = False,
          progress: bool = False, teacher: str | None = None, **options: Any) -> TrainResult:
    """Train a LoRA adapter, as `distill train` does. `source` is a run directory (its sft.jsonl, or for
    dpo/kto its prefs.jsonl, for on-policy the prompts of its answers.jsonl), a JSONL file, or a list of
    training rows (SftRow, Example, or chat rows as a JSONL file holds them; for on-policy, prompts;
    `output` then required). `method` is sft, dpo, kto or on-policy (default: [train] method, else sft);
    on-policy's scoring teacher is `teacher` (e.g. "local:DIR"), else the configured one. `options` are
    TrainConfig fields (over [train]). Returns what training.json records (`result.summary`)."""
    from distill.training.config import TrainConfig

    chosen = {"method": method} if method is not None else {}
    config = TrainConfig.from_mapping({**train_values(options), **chosen}, source="keywords")
    if config.method == "on-policy":
        return _train_on_policy(source, output, config, student, replay, use_replay, reviewed, init_adapter,
                                restart, progress, teacher)
    if teacher is not None:
        raise ConfigError(f"teacher= is for method='on-policy' (the teacher that scores the student's samples); "
                          f"{config.method} trains on rows the teacher already wrote")
    if config.method == "sft":
        return _train_sft(source, output, config, student, replay, use_replay, reviewed, init_adapter, restart,
                          progress)
    return _train_preferences(source, output, config, student, replay, use_replay, reviewed, init_adapter, restart,
                              progress)


def _train_sft(source: Any, output: PathLike | None, config: Any, student: str | None, replay: PathLike | None,
               use_replay: bool, reviewed: bool, init_adapter: PathLike | None, restart: bool,
               progress: bool) -> TrainResult:
    from distill.student.embedded import sha256_file
    from distill.training.examples import read_examples, read_replay
    from distill.training.sft import train as train_sft

    if init_adapter is not None:
        raise ConfigError("--init-adapter is for --method dpo or kto (init_adapter= with method='dpo' or 'kto'); "
                          "SFT starts from a fresh LoRA on the base")
    if isinstance(source, (str, os.PathLike)):
        data_path, out, replay_path = sft_paths(Path(source), output, replay, use_replay, reviewed)
        examples = read_examples(data_path)  # validate every file before any model loads
        info: dict[str, Any] = {"path": str(data_path), "sha256": sha256_file(data_path)}
    else:
        if output is None:
            raise ConfigError("train(rows, output): training rows given as a list need an output directory")
        examples, out, replay_path, info = examples_of(source), Path(output), replay, {"path": None}
    replay_path = Path(replay_path) if replay_path is not None and use_replay else None
    replay_rows, replay_prompts = read_replay(replay_path) if replay_path else ([], [])
    if progress:
        say(f"{len(examples)} training examples" + (f" from {data_path}" if info["path"] else "") +
            (f"; replay: {len(replay_rows)} examples + {len(replay_prompts)} prompts to answer from {replay_path}"
             if replay_path else "; no replay set (pass --replay FILE to guard against forgetting)"))
    return train_sft(examples, out, config, student=student, replay=replay_rows, replay_prompts=replay_prompts,
                     data_info={**info, "replay_path": str(replay_path) if replay_path else None},
                     restart=restart, progress=progress)


def _train_on_policy(source: Any, output: PathLike | None, config: Any, student: str | None,
                     replay: PathLike | None, use_replay: bool, reviewed: bool, init_adapter: PathLike | None,
                     restart: bool, progress: bool, teacher: str | None) -> TrainResult:
    """on-policy: the student samples answers to the prompts and the teacher scores its tokens."""
    from distill.teachers.resolve import resolve_settings
    from distill.teachers.scoring import open_scorer
    from distill.training.examples import read_replay
    from distill.training.onpolicy import train_on_policy

    for flag, given in (("--reviewed", reviewed), ("--init-adapter", init_adapter is not None)):
        if given:
            raise ConfigError(f"{flag} is not for --method on-policy (it trains a fresh LoRA on the run's prompts)")
    prompts, data_path, out, replay_path = onpolicy_sources(source, output, replay)
    replay_path = Path(replay_path) if replay_path is not None and use_replay else None
    replay_rows, replay_prompts = read_replay(replay_path) if replay_path else ([], [])
    settings = resolve_settings(overrides={"teacher": teacher})
    scorer = open_scorer(settings)  # refuses a teacher known not to score before any model loads
    if progress:
        say(f"{len(prompts)} prompts from {data_path or 'the list given'}; teacher {settings.name} scores the "
            f"student's samples ({config.onpolicy_loss}, "
            + (f"top-{config.onpolicy_top_k}" if config.onpolicy_top_k else "full vocabulary") + ")")
    try:
        return train_on_policy(prompts, out, scorer, config, student=student, replay=replay_rows,
                               replay_prompts=replay_prompts, restart=restart, progress=progress,
                               data_info={"path": str(data_path) if data_path else None,
                                          "replay_path": str(replay_path) if replay_path else None})
    finally:
        scorer.close()


def onpolicy_sources(source: Any, output: PathLike | None,
                     replay: PathLike | None) -> tuple[list[Prompt], Path | None, Path, PathLike | None]:
    """(prompts, the file they came from, adapter directory, replay file) for on-policy training: a run
    directory's answered prompts (RUN/answers.jsonl, RUN/adapter-onpolicy, RUN/replay.jsonl when it
    exists), a prompts file (FILE-onpolicy-adapter beside it), or a list of prompts (`output` required)."""
    from distill.records.prompts import Prompt, read_answers

    if not isinstance(source, (str, os.PathLike)):
        if output is None:
            raise ConfigError("train(prompts, output, method='on-policy'): prompts given as a list need an output "
                              "directory")
        return prompts_of(source), None, Path(output), replay
    source = Path(source)
    if source.is_dir():
        answers = source / "answers.jsonl"
        if not answers.is_file():
            raise InputError(f"{source}: a run directory without answers.jsonl; run the pipeline first, or pass a "
                             "prompts file")
        seen: dict[str, Prompt] = {}
        for row in read_answers(answers):
            seen.setdefault(row["prompt_id"], Prompt(id=row["prompt_id"], messages=tuple(row["messages"])))
        default_replay = source / "replay.jsonl"
        return (list(seen.values()), answers, Path(output) if output else source / "adapter-onpolicy",
                replay or (default_replay if default_replay.is_file() else None))
    if source.exists() or source.suffix == ".jsonl":
        return (prompts_of(source), source, Path(output) if output else source.with_name(source.stem + "-onpolicy-adapter"),
                replay)
    raise InputError(f"{source}: no such run directory or prompts file")


def examples_of(rows: Sequence[Any]) -> list[Example]:
    """Training examples from SftRow records, Examples, or rows as a JSONL file holds them."""
    from distill.records.rows import SftRow
    from distill.training.examples import Example, parse_example

    out, errors = [], []
    for number, row in enumerate(rows):
        try:
            out.append(row if isinstance(row, Example) else
                       parse_example(row.to_row() if isinstance(row, SftRow) else row))
        except ValueError as exc:
            errors.append(f"rows[{number}]: {exc}")
    if errors:
        raise InputError("bad training rows:\n" + "\n".join(errors))
    return out


def sft_paths(source: Path, output: PathLike | None, replay: PathLike | None, use_replay: bool,
              reviewed: bool = False) -> tuple[Path, Path, Path | None]:
    """(dataset file, adapter directory, replay file or None) for a run directory or a dataset file."""
    if reviewed and not source.is_dir():
        raise ConfigError(f"--reviewed needs a run directory, got {source}")
    if source.is_dir():
        data = source / ("sft.reviewed.jsonl" if reviewed else "sft.jsonl")
        if not data.is_file():
            hint = "run `distill review NAME --import FILE.csv` first" if reviewed else "run the pipeline first"
            raise InputError(f"{source}: a run directory without {data.name}; {hint}, or pass a dataset file")
        default_replay = source / "replay.jsonl"
        out = Path(output) if output else source / "adapter"
        replay = replay or (default_replay if default_replay.is_file() else None)
    elif source.exists() or source.suffix == ".jsonl":
        data = source
        out = Path(output) if output else source.with_name(source.stem + "-adapter")
    else:
        raise InputError(f"{source}: no such run directory or dataset file")
    return data, out, Path(replay) if replay and use_replay else None


def _train_preferences(source: Any, output: PathLike | None, config: Any, student: str | None,
                       replay: PathLike | None, use_replay: bool, reviewed: bool, init_adapter: PathLike | None,
                       restart: bool, progress: bool) -> TrainResult:
    """dpo/kto: pairs from prefs.jsonl (kto: plus the run's other labelled answers), from the run's SFT
    adapter when there is one."""
    from distill.student.embedded import sha256_file
    from distill.training.examples import read_replay
    from distill.training.pairs import kto_rows, read_pairs
    from distill.training.preference import train_preferences

    method = config.method
    if reviewed:
        raise ConfigError(f"--reviewed is for SFT; --method {method} reads the review decisions itself (kto) "
                          "or prefs.jsonl (dpo)")
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"train(..., method={method!r}) reads a run directory or a pairs file, not a list")
    source = Path(source)
    init = Path(init_adapter) if init_adapter else None
    if source.is_dir():
        data_path = source / "prefs.jsonl"
        rows = kto_rows(source) if method == "kto" else read_pairs(data_path)
        out = Path(output) if output else source / f"adapter-{method}"
        sft_adapter = source / "adapter"
        init = init or (sft_adapter if (sft_adapter / "adapter_config.json").is_file() else None)
        replay = replay or (source / "replay.jsonl" if (source / "replay.jsonl").is_file() else None)
    elif source.exists() or source.suffix == ".jsonl":
        data_path, rows = source, read_pairs(source)
        out = Path(output) if output else source.with_name(source.stem + f"-{method}-adapter")
    else:
        raise InputError(f"{source}: no such run directory or preference file")
    replay_path = Path(replay) if replay and use_replay else None
    replay_rows, replay_prompts = read_replay(replay_path) if replay_path else ([], [])
    if progress:
        say(f"{len(rows)} {'pairs' if method == 'dpo' else 'labelled answers'} from {source}; starting from "
            + (f"the adapter {init} (also the reference)" if init else "the base student (a fresh LoRA)"))
    return train_preferences(rows, out, config, student=student, init_adapter=init, replay=replay_rows,
                             replay_prompts=replay_prompts, restart=restart, progress=progress,
                             data_info={"path": str(data_path),
                                        "sha256": sha256_file(data_path) if data_path.is_file() else None,
                                        "replay_path": str(replay_path) if replay_path else None})


# ---------------------------------------------------------------- evaluate

@dataclass
class EvalResult:
    """The gate's inputs and verdict: `evaluation.metrics` (intervals), per-prompt rows, and the decision."""

    evaluation: Evaluation
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        """What `distill eval --output FILE` writes."""
        return {**self.evaluation.to_dict(), "decision": self.decision.to_dict()}


def evaluate(prompts: Prompts, adapter: PathLike | None, *, against: PathLike | None = None,
             student: str | None = None, judge: bool | None = None, revisions: PathLike | None = None,
             replay: PathLike | None = None, policy: Policy | Mapping[str, Any] | None = None,
             max_new_tokens: int | None = None, columns: Any = None, served: Any = None,
             general: PathLike | None = None, logprob_rows: int | None = None) -> EvalResult:
    """Compare the student with `adapter` against the current student (`against`, default the base) on
    held-out `prompts` and apply the gate, as `distill eval` does. `judge` (default: [run] judge) asks the
    configured teacher's pairwise judge too. When the adapter was trained with a tracker
    (`report_to`), the gate's metrics are logged to it as well. `served` (from
    `distill.teachers.served_student.connect_pair`) takes both students' held-out answers from a server.
    `general`: prompts with a reference whose pass rate must not fall (the gate's `max_general_drop`).
    `logprob_rows` (default: [run] logprob_rows): the held-out rows fidelity and KL are measured on."""
    from distill.evaluation.config import RoundsConfig, check_logprob_rows
    from distill.evaluation.evaluate import evaluate as compare, logprob_rows_for, read_general
    from distill.evaluation.gate import decide
    from distill.stages.round import open_round_teacher
    from distill.stages.templates import load_prompt_set
    from distill.student.model import Student
    from distill.training.examples import read_examples
    from distill.training.run import log_gate

    given = prompts_of(prompts, columns)
    revision_rows = read_examples(revisions) if revisions else []
    replay_rows = read_examples(replay, source="replay") if replay else []
    general_prompts = read_general(general) if general else []
    settings = resolve_options((RoundsConfig,), "run", {"judge": judge, "eval_max_new_tokens": max_new_tokens,
                                                         "logprob_rows": logprob_rows})[0]
    use_judge = settings.get("judge", default_of(RoundsConfig, "judge"))
    limit = settings.get("eval_max_new_tokens", default_of(RoundsConfig, "eval_max_new_tokens"))
    rows = check_logprob_rows(settings.get("logprob_rows", default_of(RoundsConfig, "logprob_rows")))
    gate = policy_of(policy)  # checked before any model loads
    current = Student.load(student, adapter=against)
    new = Student.load(student, adapter=adapter)
    teacher = open_round_teacher(None)[0] if use_judge else None
    result = compare(current, new, given, teacher=teacher, prompt_set=load_prompt_set() if teacher else None,
                     revisions=revision_rows, replay=replay_rows, max_new_tokens=limit, served=served,
                     general=general_prompts, logprob_rows=logprob_rows_for(gate, rows))
    decision = decide(result.metrics, gate)
    if adapter is not None:
        log_gate(Path(adapter), result.to_dict()["metrics"], decision.promote)
    return EvalResult(result, decision)


# ---------------------------------------------------------------- the teacher

def teacher_from_env(*, teacher: str | None = None, offline: bool | None = None) -> TeacherHandle:
    """The configured teacher behind the persistent cache, as every command opens it: DISTILL_TEACHER (or
    `teacher`, e.g. "openai:gpt-4o-mini"), its key and base URL from the environment or distill.toml's
    [teacher] table; `offline` (default $DISTILL_OFFLINE) replays from the cache only. A missing key fails
    here. `await handle.complete(distill.Request(messages=(...,)))`; close it with `await handle.aclose()`."""
    from distill.stages.round import open_round_teacher

    handle, settings = open_round_teacher(offline, teacher)
    if handle is None:
        raise ConfigError(f"the teacher is {settings.backend!r}: there is no teacher to open (self-training needs none)")
    return handle


def say(message: str) -> None:
    """A status line on stderr, from the first process only when several train together."""
    if os.environ.get("RANK", "0") == "0":
        print(f"distill: {message}", file=sys.stderr)

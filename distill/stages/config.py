"""`RunConfig`: everything that shapes a round, each field with its one default and its help.

The `distill run` and `distill critique` flags are generated from these fields, `[run]` in
`distill.toml` sets them per project (see `distill.config` for the precedence), and the filters
take their thresholds' defaults from here. A light module on purpose: the command line imports it
to build its parser, so it must not import the round's machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from distill.config import option
from distill.records.rundir import RunDir
from distill.student.model import ANSWER_BATCH, GenerationParams


@dataclass
class RunConfig:
    """Everything that shapes a round. Each declared field is a `distill run` flag and a `[run]` key."""

    name: str
    """The run's name: its artefacts go to RUNS_DIR/NAME/."""
    runs_dir: Path = option(Path("runs"), help="where runs live", metavar="DIR")
    student: str | None = option(None, help="model directory or hub id",
                                 default_text="$DISTILL_STUDENT, else the embedded SmolLM2-135M-Instruct")
    adapter: str | None = option(None, help="a LoRA adapter directory (from `distill train`) to apply", toml=False)
    generation: GenerationParams = field(default_factory=GenerationParams)
    """How the student decodes (`distill.student.model.GenerationParams`: flags of the same names)."""
    batch_size: int = option(ANSWER_BATCH, help="prompts generated together (with --engine server: requests in flight)")
    engine: str = option("local", choices=("local", "server"),
                         help="where the student's answers come from: local (in process) or server (an "
                              "OpenAI-compatible server serving the student: vLLM, llama.cpp, distill serve)")
    student_url: str | None = option(None, metavar="URL", default_text="none",
                                     help="with --engine server: the server's base URL, e.g. http://localhost:8000/v1")
    student_model: str | None = option(
        None, metavar="NAME", default_text="the one model served, else the one with the student's weight hashes",
        help="with --engine server: the served model's name (a vLLM LoRA module's name for an adapter)")
    student_timeout: float = option(300.0, help="with --engine server: seconds one answer may take")
    skip_consistent: float | None = option(
        None, help="with --samples > 1: skip prompts whose samples agree at least this often (e.g. 0.8)",
        default_text="off")
    chain: str = option("default", help="chain of principles from principles.toml")
    stages: tuple[str, ...] = option((), help="comma-separated principles, overriding --chain",
                                     default_text="the chain's")
    prompts_dir: str | None = option(None, help="templates and principles folder",
                                     default_text="$DISTILL_PROMPTS, else ./prompts")
    filters: tuple[str, ...] = option(
        ("acceptable", "boilerplate", "empty", "unchanged", "length", "reference", "judge"),
        help="comma-separated filters, in the order they run")
    keep_acceptable: bool = option(
        False, help="also keep accepted answers that no check verifies as positive examples (off: they are dropped)")
    verified_positives: bool = option(
        True, flag="--no-verified-positives",
        help="drop accepted answers even when they pass their prompt's check (on: kept as positive examples)")
    max_length_ratio: float = option(3.0, help="drop revisions longer than this x original")
    unchanged_threshold: float = option(
        1.0, help="drop revisions at least this similar to the original, by difflib ratio over the text with "
                  "whitespace normalised (1.0: only a revision equal up to whitespace; a change of case, "
                  "punctuation or line breaks counts)")
    self_first: bool = option(
        False, help="with a teacher and --samples K: samples that pass their prompt's check become training rows "
                    "directly; the teacher is asked only about prompts where no sample passes")
    self_keep: int = option(2, help="distinct passing samples kept per prompt")
    self_stop: bool = option(
        True, flag="--no-self-stop",
        help="with --teacher none: decode every sample to its end (on: a sample stops at the first token after "
             "which its prompt's check can no longer pass, since it could not become a training row; its "
             "finish_reason is 'failed', and it is never the rejected side of a preference pair)")
    self_agreement: float = option(
        0.6, help="prompts without a reference: keep the majority answer when at least this share of the samples "
                  "agrees with it")
    dedup_threshold: float | None = option(
        0.9, help="drop near-duplicate prompts at this 3-gram Jaccard (0 turns it off)")
    pairs: str = option("revisions", choices=("revisions", "online"),
                        help="where preference pairs come from: revisions (the teacher's revision over the original) "
                             "or online (two of the student's samples, decided by the check, else the teacher's "
                             "judge in both orders; no revisions are asked for)")
    teacher_max_tokens: int = option(1024, help="the teacher's reply limit")
    concurrency: int | None = option(None, help="rows in flight at once", default_text="the teacher's concurrency")
    offline: bool | None = option(
        None, env="DISTILL_OFFLINE", default_text="off",
        help="never call the teacher: replay from the cache; a miss is an error")
    teacher: str | None = option(
        None, toml=False, metavar="BACKEND:MODEL", default_text="[teacher] teacher, else $DISTILL_TEACHER",
        help="backend:model, e.g. openai:gpt-4o-mini; 'none' self-trains: no teacher calls, the student's own "
             "samples that pass their prompt's check are the data")
    round: int = 1
    """The round's number in a multi-round run (1 for a single round)."""
    batch: bool | None = option(
        None, toml=False, default_text="[teacher] batch, else $DISTILL_TEACHER_BATCH",
        help="send teacher requests that are not cached as provider batches (OpenAI Batch, Anthropic Message "
             "Batches): about half the price, answered within 24 h")
    batch_wait: bool = option(
        True, flag="--no-wait", toml=False,
        help="with --batch: exit with status 75 once the batches are submitted; run the same command again later "
             "to continue (`distill batch status NAME` shows progress)")

    def __post_init__(self) -> None:
        """A wrong --engine combination (a server without a URL, a URL for the local engine) is a
        ConfigError when the config is made, before any work."""
        from distill.teachers.served_student import server_of

        server_of(self.engine, self.student_url, self.student_model, self.student_timeout)

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def server(self) -> Any:
        """The student's server (`distill.teachers.served_student.Server`), or None for the local engine."""
        from distill.teachers.served_student import server_of

        return server_of(self.engine, self.student_url, self.student_model, self.student_timeout)

    @property
    def folder(self) -> RunDir:
        """The run's folder as a `RunDir`."""
        return RunDir(self.run_dir)

    def inside(self, folder: RunDir, **changes: Any) -> "RunConfig":
        """This config for a round whose artefacts go to `folder` (a round of a multi-round run, its held-out
        round): the folder is named by its parent and its own name, never by a name with a slash in it."""
        return replace(self, runs_dir=folder.path.parent, name=folder.name, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as manifest.json records it: a student URL's credentials masked."""
        from distill.teachers.settings import mask_url

        data = asdict(self)
        data["runs_dir"] = str(self.runs_dir)
        if self.student_url:
            data["student_url"] = mask_url(self.student_url)
        return data

"""`RoundsConfig`: a multi-round run's settings (`distill run --rounds N`), each field with its one default.

The evaluation flags of `distill run --rounds` and `distill eval` are generated from these fields
and from `distill.evaluation.gate.Policy`; the `[run]` table of `distill.toml` sets them too. A
light module on purpose: the command line imports it to build its parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import option
from distill.evaluation.gate import Policy
from distill.stages.config import RunConfig


@dataclass
class RoundsConfig:
    """A multi-round run: the round settings, the held-out prompts, training and the gate."""

    run: RunConfig
    rounds: int
    """Up to this many rounds; the run stops at the first refusal."""
    heldout: Path
    """Held-out prompts the gate evaluates on (never trained on)."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields (`--train-option FIELD=VALUE`, `[train]`)."""
    preference_options: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields for the preference step of `--methods sft,dpo` (or kto) alone, over
    `train_options` (`--preference-option FIELD=VALUE`): DPO after SFT wants a far lower learning
    rate and fewer steps than the SFT it starts from (README, "Does DPO help?")."""
    policy: Policy = field(default_factory=Policy)
    methods: tuple[str, ...] = option(("sft",), help="training methods each round, in order: sft, then dpo or kto "
                                      "on the round's pairs from the SFT adapter (e.g. sft,dpo)",
                                      metavar="METHOD[,METHOD]")
    preference_pairs: str = option(
        "round", choices=("round", "tuned"),
        help="the pairs of the preference step after SFT: round (the round's pairs, prefs.jsonl: the teacher's "
             "revision over the student's answer before training) or tuned (the SFT adapter samples each "
             "training prompt that has a reference --preference-samples times; each sample that fails its check "
             "is set against the prompt's verified training answer, so DPO works only where SFT left a failure)")
    preference_samples: int = option(4, help="--preference-pairs tuned: samples per training prompt")
    preference_temperature: float = option(0.8, help="--preference-pairs tuned: sampling temperature")
    eval_max_new_tokens: int = option(128, help="answer length for the evaluation")
    logprob_rows: int = option(
        64, metavar="N", help="held-out rows the fidelity and the KL are measured on, spread evenly through the "
                              "file (0: all); all of them whenever the gate decides on these metrics "
                              "(--primary fidelity, --max-kl)")
    """Each row costs a forward pass of both students: on 176 held-out prompts the fidelity and the KL took
    2.5 of a learning round's 12.7 minutes (bench/learning.py), and neither decides by default."""
    judge: bool = option(True, flag="--no-judge", help="evaluate without the pairwise judge (no teacher calls)")
    replay: Path | None = option(
        None, metavar="FILE", default_text="the base answers to --heldout measure forgetting",
        help="general prompts (or chats) the base student answers: 3/4 are mixed into training against "
             "forgetting, 1/4 measure forgetting")
    general: Path | None = option(
        None, metavar="FILE", default_text="none",
        help="general prompts with a reference (e.g. prompts/instructions/general.jsonl) both students answer "
             "at each gate: the new one's pass rate may fall at most --max-general-drop")

    def __post_init__(self) -> None:
        from distill.errors import ConfigError

        methods = tuple(self.methods)
        valid = methods in (("sft",), ("dpo",), ("kto",), ("sft", "dpo"), ("sft", "kto"))
        if not valid:
            raise ConfigError(f"--methods {','.join(methods)}: expected sft, dpo, kto, sft,dpo or sft,kto (a "
                              "preference method runs after SFT, on the round's pairs)")
        if self.preference_options and methods[-1] not in ("dpo", "kto"):
            raise ConfigError(f"--preference-option {', '.join(sorted(self.preference_options))}: --methods "
                              f"{','.join(methods)} has no preference step; give --methods sft,dpo (or sft,kto)")
        if self.preference_pairs not in ("round", "tuned"):
            raise ConfigError(f"--preference-pairs {self.preference_pairs!r}: expected round or tuned")
        if self.preference_pairs == "tuned" and methods not in (("sft", "dpo"), ("sft", "kto")):
            raise ConfigError(f"--preference-pairs tuned: --methods {','.join(methods)} has no preference step "
                              "after SFT; tuned pairs are the SFT adapter's samples, give --methods sft,dpo "
                              "(or sft,kto)")
        if self.preference_samples < 1 or self.preference_temperature <= 0:
            raise ConfigError(f"--preference-samples {self.preference_samples} / --preference-temperature "
                              f"{self.preference_temperature}: expected at least 1 sample at a temperature above 0")
        check_logprob_rows(self.logprob_rows)


def check_logprob_rows(rows: int) -> int:
    """`rows` when it is a valid `--logprob-rows`; a ConfigError otherwise."""
    from distill.errors import ConfigError

    if rows < 0:
        raise ConfigError(f"--logprob-rows {rows}: expected 0 (every held-out row) or a positive count")
    return rows

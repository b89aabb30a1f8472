"""Training configuration: every knob of a LoRA run, with its default and why, validated on creation.

Each field is declared once, with its default and its help: the `distill train` flags are generated
from the fields (`--lr` is `learning_rate`), `[train]` in `distill.toml` sets them per project, and
a multi-round run takes `--train-option NAME=VALUE` over `[train]`. `distill train --config
FILE.json` still takes a JSON object of fields. `run_key()` is what must match for a run to resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from distill.config import option
from distill.errors import ConfigError

METHODS = ("sft", "dpo", "kto", "on-policy")
ONPOLICY_LOSSES = ("rkl", "jsd")
ONPOLICY_OPTIONS = ("onpolicy_loss", "jsd_beta", "onpolicy_temperature", "onpolicy_max_new_tokens", "onpolicy_top_k")
LOSS_TYPES = ("sigmoid", "ipo", "sigmoid_norm")
PREFERENCE_OPTIONS = ("beta", "loss_type", "desirable_weight", "undesirable_weight")


TRACKERS = ("none", "tensorboard", "wandb", "trackio")  # accelerate's tracker names (`report_to`)

@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run, with defaults that fit LoRA on a small chat model.

    The learning rate was swept over 1e-4, 2e-4, 5e-4 and 1e-3 on the task of
    tests/test_train_learning.py (64 revisions that end with "Final answer: X", 25% replay, 3 epochs
    of batch 8, SmolLM2-135M, float32), measuring the held-out rate of the rule and the NLL of the student's
    own answers to the unrelated prompts of prompts/examples (drift outside the training data):

        learning rate        1e-4    2e-4    5e-4    1e-3
        rule rate (held-out)  25%    100%    100%    100%
        drift (NLL change)    -5%     -4%    +16%    +31%

    2e-4 is the lowest rate that learns the rule fully, and the only one that does so without
    moving the model elsewhere. (Higher rates learn it sooner: 5e-4 in one epoch, 96%.)
    """

    # LoRA
    rank: int = option(16, help="LoRA rank")
    """LoRA rank r: the adapter adds r x (in + out) parameters to each target layer."""
    alpha: float = option(32.0, help="LoRA alpha (scale = alpha / rank)")
    """LoRA scaling numerator; the update is scaled by alpha / rank (2 by default)."""
    dropout: float = option(0.0, help="LoRA dropout")
    """Dropout on the adapter's input. 0: replay and few epochs regularise, and dropout costs a copy
    of every layer's input on CPU."""
    target_modules: tuple[str, ...] | None = option(
        None, help="comma-separated layer names to adapt", default_text="every linear layer but the output head")
    """Names of the layers to adapt; None = every linear layer except the output head (for Llama:
    q/k/v/o_proj, gate/up/down_proj), named as in the base model, as vLLM's LoRA serving expects."""

    # optimisation
    learning_rate: float = option(2e-4, help="peak learning rate", flag="--lr")
    """Peak AdamW learning rate (swept, see the class docstring)."""
    epochs: int = option(3, help="passes over the training examples")
    """Passes over the training examples (each with a fresh replay sample)."""
    max_steps: int | None = option(None, help="stop after this many optimizer steps", default_text="all epochs")
    """Stop after this many optimizer steps (the schedule is sized for it); None = all epochs."""
    batch_size: int = option(8, help="examples per batch per process")
    """Examples per micro-batch per process. Batches are grouped by length to waste little padding."""
    grad_accum: int = option(1, help="batches per optimizer step")
    """Batches per optimizer step (per process)."""
    micro_batch_tokens: int = option(2048, help="most padded tokens per forward pass (memory)")
    """Most padded tokens in one forward pass; a batch with more is cut into several passes (same
    step, bounded memory). Activations take 2-3 MB per token on SmolLM2-135M (bf16 / float32)."""
    warmup_ratio: float = option(0.1, help="fraction of steps of linear warm-up")
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    scheduler: str = option(
        "cosine", help="learning-rate decay after warm-up", choices=("cosine", "linear", "constant"))
    """Learning-rate decay after warm-up: cosine, linear or constant."""
    weight_decay: float = option(0.0, help="AdamW weight decay")
    """AdamW weight decay on the adapter weights."""
    max_grad_norm: float = option(1.0, help="gradient clipping (0 turns it off)")
    """Gradient clipping; 0 turns it off."""
    max_length: int = option(1024, help="longest example in tokens; longer ones are dropped and counted")
    """Longest example in tokens (prompt + completion); longer ones are dropped and counted."""

    # against forgetting
    replay_fraction: float = option(0.25, help="fraction of each epoch drawn from the replay set")
    """Fraction of each epoch's examples drawn from the replay set (when there is one)."""
    kl_weight: float = option(0.0, help="weight of the KL-to-base penalty (0 = off)")
    """Weight of KL(adapter || base) at completion positions; 0 = off. Costs one more forward pass."""

    # preference training (`distill train RUN --method dpo|kto`, distill.training.preference)
    method: str = option("sft", help="sft: imitate sft.jsonl; dpo: prefer chosen over rejected in prefs.jsonl; "
                                     "kto: desirable and undesirable answers, unpaired; on-policy: the student "
                                     "samples, the teacher scores its tokens", choices=METHODS)
    """What is trained: sft (completion-only imitation of sft.jsonl), dpo (pairs from prefs.jsonl) or
    kto (answers labelled desirable or undesirable: prefs.jsonl, rejected.jsonl, review decisions)."""
    beta: float = option(0.1, help="dpo/kto: strength of the pull towards the reference policy")
    """DPO's and KTO's beta: the implicit reward is beta * log(policy / reference); larger keeps the
    policy nearer the reference. For IPO it is the regulariser tau (target margin 1 / (2 beta))."""
    loss_type: str = option("sigmoid", help="dpo loss: sigmoid (DPO), ipo, or sigmoid_norm (length-normalised DPO)",
                            choices=LOSS_TYPES)
    """DPO's loss: sigmoid (the DPO paper's), ipo (squared, log-ratios averaged per token, as TRL
    and the IPO authors do), sigmoid_norm (DPO on log-ratios averaged per token: no bias to length)."""
    desirable_weight: float | None = option(None, help="kto: weight of desirable examples",
                                            default_text="from the class counts")
    """KTO's weight on desirable examples; None = set from the counts (see `kto_weights`)."""
    undesirable_weight: float | None = option(None, help="kto: weight of undesirable examples",
                                              default_text="from the class counts")
    """KTO's weight on undesirable examples; None = set from the counts (see `kto_weights`)."""

    # on-policy distillation (`distill train RUN --method on-policy`, distill.training.onpolicy)
    onpolicy_loss: str = option("rkl", help="on-policy: rkl (per-token reverse KL to the teacher) or jsd "
                                            "(GKD's generalized Jensen-Shannon divergence)", choices=ONPOLICY_LOSSES)
    """On-policy loss per answer token: rkl = KL(student || teacher) (mode-seeking), or jsd = GKD's
    generalized JSD with `jsd_beta` (interpolating between forward and reverse KL)."""
    jsd_beta: float = option(0.5, help="on-policy jsd: beta in (0, 1) (small: near forward KL, large: near reverse)")
    """GKD's beta: JSD_b = b KL(T || M) + (1 - b) KL(S || M), M = b T + (1 - b) S."""
    onpolicy_temperature: float = option(1.0, help="on-policy: the student's sampling temperature")
    """Temperature the student samples its answers at each step (no gradient through sampling)."""
    onpolicy_max_new_tokens: int = option(64, help="on-policy: longest sampled answer in tokens")
    """Longest answer the student samples per prompt and step."""
    onpolicy_top_k: int = option(0, help="on-policy: teacher log-probs per position (0: the full vocabulary, "
                                         "local teachers only; servers give top-k)")
    """Teacher candidates per position: 0 = the whole vocabulary (a local teacher; not cached); k > 0
    = its top k plus a tail bucket for the rest (what servers give; cached like every teacher call)."""

    # machinery
    seed: int = option(0, help="seed of the adapter init, data order and replay samples")
    """Seeds the adapter's initialisation, the data order and the replay samples."""
    precision: str = option("auto", help="auto, float32 or bfloat16", choices=("auto", "float32", "bfloat16"))
    """auto, float32 or bfloat16 (mixed precision: adapter and optimizer state stay float32). auto =
    bfloat16 where it is faster: a GPU that supports it, or a CPU with AVX512-BF16 or AMX where a
    short probe measures bfloat16 at least 1.15x faster than float32 (`run.native_bf16`); else float32."""
    report_to: str = option("none", choices=TRACKERS,
                            help="send each step's metrics to a tracker through accelerate: tensorboard (event files "
                                 "under ADAPTER/tracking/), wandb or trackio (installed by you; WANDB_MODE=offline "
                                 "works with no network), or none")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass: less memory, slower")
    """Recompute activations in the backward pass: less memory, about a third slower. Off: a 135M
    model does not need it, and on CPU it only costs time."""
    save_every: int = option(50, help="steps between checkpoints")
    """Write a resumable checkpoint every this many steps (and on Ctrl-C)."""
    keep_checkpoints: int = option(2, help="how many of the newest checkpoints to keep while training")
    """How many of the newest checkpoints to keep while training; all are removed at the end."""

    def __post_init__(self) -> None:
        numbers = ("alpha", "dropout", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm",
                   "replay_fraction", "kl_weight", "beta", "jsd_beta", "onpolicy_temperature")
        for name in numbers:  # before any comparison: a string from a config file would raise a bare TypeError
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"training option {name}: expected a number, got {value!r}")
        positive = ("rank", "epochs", "batch_size", "grad_accum", "micro_batch_tokens", "max_length", "save_every",
                    "keep_checkpoints")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"training option {name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"training option max_steps: expected a positive integer or null, got {self.max_steps!r}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"training option learning_rate: expected a value in (0, 1), got {self.learning_rate!r}")
        if self.alpha <= 0:
            raise ConfigError(f"training option alpha: expected a positive number, got {self.alpha!r}")
        for name, low, high in (("dropout", 0, 1), ("warmup_ratio", 0, 1), ("replay_fraction", 0, 0.95)):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"training option {name}: expected a value in [{low}, {high}], "
                                  f"got {getattr(self, name)!r}")
        if self.kl_weight < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("training options kl_weight, weight_decay and max_grad_norm must be >= 0, got "
                              f"{self.kl_weight!r}, {self.weight_decay!r}, {self.max_grad_norm!r}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"training option scheduler: expected cosine, linear or constant, got {self.scheduler!r}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"training option precision: expected auto, float32 or bfloat16, got {self.precision!r}")
        if self.method not in METHODS:
            raise ConfigError(f"training option method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"training option loss_type: expected one of {', '.join(LOSS_TYPES)}, "
                              f"got {self.loss_type!r}")
        if not self.beta > 0:
            raise ConfigError(f"training option beta: expected a positive number, got {self.beta!r}")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"training option {name}: expected a positive number or null (from the class "
                                  f"counts), got {getattr(self, name)!r}")
        if self.onpolicy_loss not in ONPOLICY_LOSSES:
            raise ConfigError(f"training option onpolicy_loss: expected rkl or jsd, got {self.onpolicy_loss!r}")
        if not 0 < self.jsd_beta < 1:
            raise ConfigError(f"training option jsd_beta: expected a value in (0, 1), got {self.jsd_beta!r}")
        if not self.onpolicy_temperature > 0:
            raise ConfigError(f"training option onpolicy_temperature: expected a positive number, got "
                              f"{self.onpolicy_temperature!r}")
        if not isinstance(self.onpolicy_max_new_tokens, int) or self.onpolicy_max_new_tokens < 1:
            raise ConfigError(f"training option onpolicy_max_new_tokens: expected a positive integer, got "
                              f"{self.onpolicy_max_new_tokens!r}")
        if not isinstance(self.onpolicy_top_k, int) or self.onpolicy_top_k < 0:
            raise ConfigError(f"training option onpolicy_top_k: expected 0 (full vocabulary) or a positive "
                              f"integer, got {self.onpolicy_top_k!r}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a JSON object; an unknown key is a ConfigError naming it and `source`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training option(s) {', '.join(map(repr, unknown))}; "
                              f"known options: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_key(self) -> dict[str, Any]:
        """The options that change what is trained (not how often it is saved): must match to resume.
        An SFT run leaves out the preference options (it does not read them)."""
        skip = {"save_every", "keep_checkpoints", "micro_batch_tokens", "gradient_checkpointing", "report_to"}
        if self.method == "sft":
            skip |= {"method", *PREFERENCE_OPTIONS}
        if self.method != "on-policy":
            skip |= set(ONPOLICY_OPTIONS)
        return {k: v for k, v in self.to_dict().items() if k not in skip}

"""The evaluation gate: promote a new adapter only on evidence, never on a grader's whim.

Each metric is a mean of paired per-prompt differences (new minus current) with a 95% percentile
bootstrap interval. The gate promotes when the primary metric's lower bound is above the margin
(default 0: the improvement is unlikely to be noise) and forgetting stays within its limits: the
relative rise in NLL on the replay/general set, the mean per-token KL(current || new) on the
current model's own held-out answers, and, where general prompts with a reference are given
(`--general`), the fall in their pass rate. Otherwise it refuses and says which condition failed,
with the numbers.

The likelihood of the base's answers is not enough on its own: in bench/learning.py with plain
questions as replay, the replay NLL fell 5.1% while the general-knowledge score fell from 47 to 41
of 80. A pass rate on checked general prompts measures what a user loses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from distill.config import option


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap confidence interval over `n` paired observations."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def text(self, digits: int = 3) -> str:
        return f"{interval_text(self.mean, self.low, self.high, digits)} (n={self.n})"


def interval_text(mean: float, low: float, high: float, digits: int = 3) -> str:
    """A mean and its interval as `+0.125 [+0.050, +0.200]`."""
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (deterministic for a seed)."""
    import numpy as np  # here: the command line imports this module (for Policy) to build its parser

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, confidence)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(data.mean()), float(low), float(high), int(data.size), confidence)


@dataclass(frozen=True)
class Policy:
    """What it takes to be promoted: the `--primary`, `--margin`, ... flags and the `[gate]` table."""

    primary: str = option("checks", choices=("checks", "judge", "fidelity"),
                          help="metric whose interval must clear the margin (checks: the objective one)")
    margin: float = option(0.0, help="the primary metric's lower bound must exceed this")
    max_nll_increase: float = option(0.05, help="allowed relative rise in replay NLL (0.05: 5 percent)")
    max_kl: float | None = option(None, default_text="no limit",
                                  help="allowed mean per-token KL(current || new) on held-out prompts")
    max_general_drop: float = option(0.025, help="allowed fall in the pass rate on the --general prompts "
                                                 "(0.025: one prompt in 40)")

    def reads_logprobs(self) -> bool:
        """Whether the decision reads the fidelity or the KL, the metrics measured on log-probabilities."""
        return self.primary == "fidelity" or self.max_kl is not None


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(metrics: Mapping[str, Any], policy: Policy) -> Decision:
    """Apply the policy to evaluation metrics (as written by `distill.evaluation.evaluate`)."""
    reasons: list[str] = []
    primary = metrics.get(policy.primary)
    if not primary or not isinstance(primary.get("delta"), Interval):
        return Decision(False, [f"primary metric {policy.primary!r} was not measured; nothing is promoted without it"])
    delta: Interval = primary["delta"]
    if not delta.low > policy.margin:
        reasons.append(f"{policy.primary}: lower bound {delta.low:+.3f} of {delta.text()} is not above the "
                       f"margin {policy.margin:+.3f}")
    forgetting = metrics.get("forgetting") or {}
    rise = forgetting.get("nll_increase")
    if rise is not None and rise > policy.max_nll_increase:
        reasons.append(f"forgetting: replay NLL rose {rise:.1%}, over the limit {policy.max_nll_increase:.1%}")
    kl = forgetting.get("kl")
    if policy.max_kl is not None and kl is not None and kl > policy.max_kl:
        reasons.append(f"forgetting: mean KL(current || new) {kl:.4f} is over the limit {policy.max_kl:.4f}")
    general = metrics.get("general") or {}
    drop = general.get("drop")
    if drop is not None and drop > policy.max_general_drop + 1e-9:  # 2 of 80 is exactly 0.025
        reasons.append(f"forgetting: the pass rate on general prompts fell from {general['current_pass_rate']:.1%} "
                       f"to {general['new_pass_rate']:.1%} (n={general['delta'].n}), over the limit "
                       f"{policy.max_general_drop:.1%}")
    if not reasons:
        reasons.append(f"{policy.primary} improved by {delta.text()}" +
                       (f"; replay NLL {rise:+.1%}" if rise is not None else ""))
        return Decision(True, reasons)
    return Decision(False, reasons)

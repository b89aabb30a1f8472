"""Accounting for a stage: rows, teacher calls, cache hits, tokens, estimated cost, failures.

Every teacher `Completion` passes through `Ledger.add`, which bills zero for cache hits (they
cost nothing) and `Completion.cost` for the rest: the one price, set by the teacher stack's
pricing layer (`distill.teachers.pricing`); an unknown model's cost stays unknown (`None`), never
invented. Each billed call is shown at the live and at the batch price (its `cost` and its
`alternative_cost`), so a run shows what it cost beside what the other mode would have cost; a
call answered through a provider batch (`Completion.batch`) cost the batch price. `Ledger.line()` is the live
progress text; `to_dict()` goes to the manifest. The stage runner (`distill.stages.runner`) bills
each row's calls when the row ends.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from distill.teachers.base import Completion


@dataclass
class Ledger:
    """Running totals for one stage."""

    stage: str
    rows: int = 0
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    cost_unknown_calls: int = 0
    batch_calls: int = 0  # answered through a provider batch, billed at the batch price
    live_prices_usd: float = 0.0  # every billed call at live prices
    live_unknown_calls: int = 0
    batch_prices_usd: float = 0.0  # every billed call at batch prices
    batch_unknown_calls: int = 0
    failures: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def add(self, completion: Completion) -> None:
        self.calls += 1
        if completion.cached:
            self.cache_hits += 1
            return
        self.input_tokens += completion.usage.input_tokens
        self.output_tokens += completion.usage.output_tokens
        self.retries += completion.retries
        cost, other = completion.cost, completion.alternative_cost
        live, batch = (other, cost) if completion.batch else (cost, other)
        if live is None:
            self.live_unknown_calls += 1
        else:
            self.live_prices_usd += live
        if batch is None:
            self.batch_unknown_calls += 1
        else:
            self.batch_prices_usd += batch
        self.batch_calls += completion.batch
        if cost is None:
            self.cost_unknown_calls += 1
        else:
            self.cost_usd += cost

    def fail(self, reason: str) -> None:
        self.failures[reason] += 1

    def done(self) -> None:
        self.finished = time.monotonic()

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def hit_rate(self) -> float | None:
        return self.cache_hits / self.calls if self.calls else None

    def cost_text(self) -> str:
        return self._money(self.cost_usd, self.cost_unknown_calls, all_unknown="cost unknown",
                           some_unknown="calls of unknown price")

    def price_text(self, *, batch: bool) -> str:
        """What every billed call would have cost at live (or batch) prices."""
        if batch:
            return self._money(self.batch_prices_usd, self.batch_unknown_calls)
        return self._money(self.live_prices_usd, self.live_unknown_calls)

    def _money(self, usd: float, unknown: int, *, all_unknown: str = "unknown", some_unknown: str = "unknown") -> str:
        """`usd` over the billed calls, `unknown` of which had no price."""
        billed = self.calls - self.cache_hits
        if not billed:
            return "$0.00"
        if unknown == billed:
            return all_unknown
        return f"${usd:.4f}" + (f" (+{unknown} {some_unknown})" if unknown else "")

    def line(self) -> str:
        rate = self.rows / max(self.seconds, 1e-9)
        return (f"{rate:.2f} rows/s, {self.calls} calls, {self.cache_hits} cached, "
                f"{self.input_tokens + self.output_tokens} tok, {self.cost_text()}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "teacher_calls": self.calls, "cache_hits": self.cache_hits,
            "cache_hit_rate": self.hit_rate, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "retries": self.retries, "cost_usd": _known(self.cost_usd, self.cost_unknown_calls),
            "calls_of_unknown_price": self.cost_unknown_calls, "batch_calls": self.batch_calls,
            "cost_at_live_prices_usd": _known(self.live_prices_usd, self.live_unknown_calls),
            "cost_at_batch_prices_usd": _known(self.batch_prices_usd, self.batch_unknown_calls),
            "failures": dict(self.failures),
            "seconds": round(self.seconds, 3),
        }


def _known(usd: float, unknown_calls: int) -> float | None:
    """A total that is None when some calls had no price and none had one (unknown, never 0)."""
    return None if unknown_calls and not usd else usd

"""Prices: what a teacher call cost, from a per-model table the user can extend.

Prices are US dollars per million tokens, with separate columns for live calls and for the
providers' batch APIs (half price at OpenAI and Anthropic), which batch mode uses (`distill.teachers.batch`).
The built-in table below is a snapshot (`PRICES_AS_OF`); prices change, so a user overrides or
adds models in a TOML or JSON file named by `DISTILL_PRICES` (or `prices_file` in the config):

    [prices."openai:my-finetune"]        # backend:model, or just the model name
    input = 0.30                         # USD per million input tokens (live)
    output = 1.20
    batch_input = 0.15                   # optional; no batch price means batch cost unknown
    batch_output = 0.60

A model not in the table has cost `None`, reported as unknown: never guessed, never zero.
Providers report dated model names (`gpt-4o-mini-2024-07-18`, `claude-sonnet-4-5-20250929`);
those match the undated entry. The `local` backend runs in process and costs 0.

`Completion.cost` is the one price of a call, and the pricing layer (`PricedTeacher`, the top of
the stack `distill.teachers.stack` builds) sets it by one rule (`Pricing.bill`): a cache hit
costs 0; any other call costs its usage at the configured teacher's price (backend:model as
configured, not the name the provider reports), at the batch price when a provider batch answered
it. `Completion.alternative_cost` is the same usage at the other mode's price, for the ledger's
comparison columns. The price table is loaded once per stack (`Pricing.of`).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from distill.errors import ConfigError
from distill.teachers.base import Completion, Request, Teacher, Usage
from distill.teachers.settings import TeacherSettings

PRICES_AS_OF = "2025-10"
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True)
class Price:
    """USD per million tokens; a batch column of None means the batch price is unknown."""

    input: float
    output: float
    batch_input: float | None = None
    batch_output: float | None = None

    def cost(self, usage: Usage, *, batch: bool = False) -> float | None:
        rates = (self.batch_input, self.batch_output) if batch else (self.input, self.output)
        if rates[0] is None or rates[1] is None:
            return None
        return (usage.input_tokens * rates[0] + usage.output_tokens * rates[1]) / 1_000_000


BUILTIN: dict[str, Price] = {
    "openai:gpt-4o": Price(2.50, 10.00, 1.25, 5.00),
    "openai:gpt-4o-mini": Price(0.15, 0.60, 0.075, 0.30),
    "openai:gpt-4.1": Price(2.00, 8.00, 1.00, 4.00),
    "openai:gpt-4.1-mini": Price(0.40, 1.60, 0.20, 0.80),
    "openai:gpt-4.1-nano": Price(0.10, 0.40, 0.05, 0.20),
    "openai:o4-mini": Price(1.10, 4.40, 0.55, 2.20),
    "openai:gpt-5": Price(1.25, 10.00, 0.625, 5.00),
    "openai:gpt-5-mini": Price(0.25, 2.00, 0.125, 1.00),
    "openai:gpt-5-nano": Price(0.05, 0.40, 0.025, 0.20),
    "anthropic:claude-opus-4-1": Price(15.00, 75.00, 7.50, 37.50),
    "anthropic:claude-sonnet-4-5": Price(3.00, 15.00, 1.50, 7.50),
    "anthropic:claude-sonnet-4": Price(3.00, 15.00, 1.50, 7.50),
    "anthropic:claude-haiku-4-5": Price(1.00, 5.00, 0.50, 2.50),
    "anthropic:claude-3-5-haiku": Price(0.80, 4.00, 0.40, 2.00),
}
FREE = Price(0.0, 0.0, 0.0, 0.0)


class PriceTable:
    """The user's prices, then the built-in ones; `cost()` returns None for a model neither knows.

    Keys are `backend:model`, or a bare model name that applies to any backend (user files only:
    the built-ins are per provider, since a proxy serving the same model may charge differently).
    """

    def __init__(self, user: Mapping[str, Price] | None = None, builtin: Mapping[str, Price] = BUILTIN):
        self.user = dict(user or {})
        self.builtin = dict(builtin)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PriceTable":
        """The built-in table extended and overridden by the file at `path`, if any."""
        return cls(read_price_file(Path(path)) if path else None)

    def price(self, backend: str, model: str) -> Price | None:
        if backend == "local":
            return FREE
        names = (model, _DATE_SUFFIX.sub("", model))
        for table in (self.user, self.builtin):
            for name in names:
                for key in (f"{backend}:{name}", name):
                    if key in table:
                        return table[key]
        return None

    def cost(self, backend: str, model: str, usage: Usage, *, batch: bool = False) -> float | None:
        """USD for `usage`, or None when the model (or its batch price) is not in the table."""
        price = self.price(backend, model)
        return price.cost(usage, batch=batch) if price is not None else None


@dataclass(frozen=True)
class Pricing:
    """The configured teacher's prices: what a call of it costs, live or in a batch."""

    table: PriceTable
    backend: str
    model: str

    @classmethod
    def of(cls, settings: TeacherSettings) -> "Pricing":
        """The price table (built-in + `prices_file`) read once, for the teacher `settings` name."""
        return cls(PriceTable.load(settings.prices_file), settings.backend, settings.model)

    def at(self, usage: Usage, *, batch: bool = False) -> float | None:
        return self.table.cost(self.backend, self.model, usage, batch=batch)

    def bill(self, completion: Completion) -> Completion:
        """`completion` with its one price set (see the module docstring for the rule)."""
        if completion.cached:
            return replace(completion, cost=0.0, alternative_cost=0.0)
        return replace(completion, cost=self.at(completion.usage, batch=completion.batch),
                       alternative_cost=self.at(completion.usage, batch=not completion.batch))


class PricedTeacher:
    """The pricing layer: every completion that comes through it leaves with its price."""

    def __init__(self, inner: Teacher, pricing: Pricing):
        self.inner = inner
        self.pricing = pricing
        self.backend, self.model = inner.backend, inner.model

    def identity(self) -> Mapping[str, Any]:
        return self.inner.identity()

    async def complete(self, request: Request) -> Completion:
        return self.pricing.bill(await self.inner.complete(request))

    async def aclose(self) -> None:
        await self.inner.aclose()


def read_price_file(path: Path) -> dict[str, Price]:
    """Parse a TOML (`[prices."backend:model"]` tables) or JSON (`{"prices": {...}}`) price file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the price file ({exc.strerror}); "
                          "check DISTILL_PRICES / prices_file") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({exc})") from None
    entries = doc.get("prices") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected a `prices` table of models, "
                          'e.g. [prices."openai:my-model"] input = 0.3, output = 1.2')
    return {str(name): _price(path, str(name), row) for name, row in entries.items()}


def _price(path: Path, name: str, row: Any) -> Price:
    if not isinstance(row, dict):
        raise ConfigError(f"{path}: prices.{name}: expected a table with input and output")
    values: dict[str, float | None] = {}
    for key in ("input", "output", "batch_input", "batch_output"):
        value = row.get(key)
        if value is None and key in ("input", "output"):
            raise ConfigError(f"{path}: prices.{name}.{key}: missing (USD per million tokens)")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{path}: prices.{name}.{key}={value!r}: expected a number >= 0 "
                              "(USD per million tokens)")
        values[key] = float(value) if value is not None else None
    unknown = sorted(set(row) - set(values))
    if unknown:
        raise ConfigError(f"{path}: prices.{name}: unknown key(s) {', '.join(unknown)}; "
                          "known: input, output, batch_input, batch_output")
    return Price(float(row["input"]), float(row["output"]), values["batch_input"], values["batch_output"])

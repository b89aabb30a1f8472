"""The price table: known models priced live and batch, unknown models unknown, user files merged."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.errors import ConfigError
from distill.teachers.base import Usage
from distill.teachers.pricing import PriceTable

MILLION = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def test_known_models_are_priced_live_and_batch() -> None:
    table = PriceTable.load()
    assert table.cost("openai", "gpt-4o-mini", MILLION) == pytest.approx(0.15 + 0.60)
    assert table.cost("openai", "gpt-4o-mini", MILLION, batch=True) == pytest.approx(0.075 + 0.30)
    assert table.cost("anthropic", "claude-sonnet-4-5", Usage(2000, 1000)) == pytest.approx((2000 * 3 + 1000 * 15) / 1e6)


def test_dated_model_names_match_their_entry_but_other_names_do_not() -> None:
    table = PriceTable.load()
    assert table.cost("openai", "gpt-4o-mini-2024-07-18", MILLION) == table.cost("openai", "gpt-4o-mini", MILLION)
    assert table.cost("anthropic", "claude-sonnet-4-5-20250929", MILLION) is not None
    assert table.cost("openai", "gpt-4o-mini-custom", MILLION) is None  # never guessed from a prefix


def test_unknown_models_cost_unknown_and_local_costs_nothing() -> None:
    table = PriceTable.load()
    assert table.cost("openai", "llama3:8b", MILLION) is None
    assert table.cost("someplugin", "gpt-4o-mini", MILLION) is None  # built-in prices are per provider
    assert table.cost("local", "default", MILLION) == 0.0


def test_a_user_file_adds_and_overrides_models(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[prices."openai:my-finetune"]\ninput = 0.3\noutput = 1.2\n\n'
                      '[prices."gpt-4o-mini"]\ninput = 1\noutput = 2\nbatch_input = 0.5\nbatch_output = 1\n')
    table = PriceTable.load(prices)
    assert table.cost("openai", "my-finetune", MILLION) == pytest.approx(1.5)
    assert table.cost("openai", "my-finetune", MILLION, batch=True) is None  # no batch column: unknown
    assert table.cost("openai", "gpt-4o-mini", MILLION) == pytest.approx(3.0)


def test_a_json_price_file_works_too(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"prices": {"anthropic:claude-next": {"input": 2, "output": 4}}}')
    assert PriceTable.load(prices).cost("anthropic", "claude-next", MILLION) == pytest.approx(6.0)


@pytest.mark.parametrize("content,match", [
    ('[prices."m"]\noutput = 1\n', r"prices\.m\.input: missing"),
    ('[prices."m"]\ninput = -1\noutput = 1\n', r"prices\.m\.input=-1: expected a number >= 0"),
    ('[prices."m"]\ninput = 1\noutput = 1\ncached = 0.1\n', r"unknown key\(s\) cached"),
    ('[models]\n', "expected a `prices` table"),
])
def test_a_bad_price_file_names_the_file_and_entry(tmp_path: Path, content: str, match: str) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(content)
    with pytest.raises(ConfigError, match=match) as caught:
        PriceTable.load(prices)
    assert str(prices) in str(caught.value)

"""The wire contract's declarations agree with the library they name, and its parsers."""

from __future__ import annotations

import pytest

import safespot
from safespot.training import RECIPES
from worker import protocol


def test_the_contract_names_what_the_library_offers() -> None:
    assert set(protocol.PRESETS) == set(safespot.PRESETS)
    assert set(protocol.RECIPES) == set(RECIPES)
    for preset in protocol.PRESETS:
        for norm in protocol.NORMS:
            safespot.SearchConfig.preset(preset, norm=norm)  # every pair the API accepts exists


@pytest.mark.parametrize(("text", "value"), [("8/255", 8 / 255), (" 0.5 ", 0.5), (0.25, 0.25)])
def test_budgets_parse(text: str | float, value: float) -> None:
    assert protocol.parse_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "1/0", "-1", "0", "inf", "nan"])
def test_bad_budgets_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="number"):
        protocol.parse_budget(text)

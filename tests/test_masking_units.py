"""The shared budget rules of framework/masking/units.py, checked against their expected values."""

from __future__ import annotations

import numpy as np
import pytest

from framework.masking.units import (
    coverage_mask,
    draw_actions,
    overshoot_probability,
    span_positions,
    stochastic_round,
    take_within_budget,
)


@pytest.mark.parametrize("value", [0.0, 1.5, 2.25, 5.9])
def test_stochastic_round_is_unbiased(value: float) -> None:
    rng = np.random.default_rng(0)
    draws = np.asarray([stochastic_round(value, rng) for _ in range(20_000)])
    assert set(np.unique(draws)) <= {int(np.floor(value)), int(np.floor(value)) + 1}
    assert abs(draws.mean() - value) < 0.02


@pytest.mark.parametrize("budget", [1, 3, 6, 11])
def test_take_within_budget_hits_the_budget_in_expectation(budget: int) -> None:
    """Random unit lengths like CSL words and entities (1-6 tokens): the mean chosen total equals the budget."""
    rng = np.random.default_rng(budget)
    totals = []
    for _ in range(6000):
        lengths = rng.choice([1, 2, 2, 2, 3, 4, 6], size=rng.integers(3, 25))
        taken = take_within_budget(lengths, budget, rng)
        assert len(np.unique(taken)) == len(taken)  # each unit at most once
        totals.append(int(lengths[taken].sum()) if len(taken) else 0)
    totals = np.asarray(totals)
    capped = np.mean([min(budget, t) for t in totals])
    assert abs(totals.mean() - budget) < 0.05 * budget + 0.05, (totals.mean(), capped)
    # Never more than one unit beyond the budget: at most budget + (longest unit - 1) tokens.
    assert totals.max() <= budget + 5


def test_take_within_budget_edge_cases() -> None:
    rng = np.random.default_rng(0)
    assert take_within_budget(np.asarray([2, 3]), 0, rng).tolist() == []
    assert take_within_budget(np.asarray([], dtype=np.int64), 4, rng).tolist() == []
    assert take_within_budget(np.asarray([1, 2]), 10, rng).tolist() == [0, 1]  # everything fits
    assert take_within_budget(np.asarray([2, 1, 5]), 3, rng).tolist() == [0, 1]  # exact fit, no draw needed
    # Skipping the 4-token unit lets the 1-token units fill exactly: then it is never taken (q = 0).
    for _ in range(50):
        assert take_within_budget(np.asarray([1, 4, 1, 1]), 3, rng).tolist() == [0, 2, 3]


def test_overshoot_probability_balances_both_outcomes() -> None:
    for remaining, fill, length in [(1, 0, 2), (2, 1, 5), (3, 0, 10), (2, 2, 3)]:
        q = overshoot_probability(remaining, fill, length)
        assert 0 <= q < 1
        assert abs(q * length + (1 - q) * fill - remaining) < 1e-12


def test_span_helpers_match_loops() -> None:
    spans = np.asarray([[1, 4], [6, 7], [9, 12], [3, 5]])
    assert span_positions(spans).tolist() == [1, 2, 3, 6, 9, 10, 11, 3, 4]
    expected = np.zeros(13, dtype=bool)
    for s, e in spans:
        expected[s:e] = True
    assert coverage_mask(spans, 13).tolist() == expected.tolist()


def test_draw_actions_shares() -> None:
    actions = draw_actions(50_000, 0.8, 0.1, np.random.default_rng(1))
    shares = np.bincount(actions, minlength=3) / len(actions)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.01)
